//! Checking a format 2 repository: every pack's trailer reads and verifies; every backup
//! object decodes; every tree page of every volume reads, verifies and decodes; every chunk
//! a tree names is listed, at that place, by its pack's trailer; every index record names a
//! blob its pack holds. With `read_data`, every referenced chunk is read and hash-checked.
//! Problems are collected and reported with the backup and volume they concern.

use std::collections::{HashMap, HashSet};

use super::chunk::ChunkRef;
use super::index::Index;
use super::pack;
use super::repository::Repository;
use crate::chain::ErrorChain;
use crate::repo::backend::{Key, Kind};
use crate::repo::error::Result;
use crate::repo::ids::PackId;
use crate::repo::report::{CheckProgress, CheckReport, Problem};
use crate::repo::v1::manifest::snarf_count;

fn problem(backup: Option<&str>, volume: Option<&str>, what: String) -> Problem {
    Problem {
        backup: backup.map(str::to_string),
        volume: volume.map(str::to_string),
        offset: None,
        what,
    }
}

impl Repository {
    /// Checks structure, and with `read_data` every chunk's contents.
    pub fn check(
        &self,
        read_data: bool,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckReport> {
        let backend = self.backend();
        let mut report = CheckReport::default();
        let mut held: HashMap<PackId, HashSet<ChunkRef>> = HashMap::new();
        let listed = backend.list(Kind::Pack)?;
        let total = listed.len() as u64;
        for (i, (key, size)) in listed.into_iter().enumerate() {
            progress(&CheckProgress {
                phase: "packs",
                done: i as u64,
                total,
            });
            let (Key::Pack(id) | Key::LegacyPack(id)) = key else {
                continue;
            };
            report.packs += 1;
            match pack::read_trailer(backend.as_ref(), self.seal(), &key, size) {
                Ok(t) => {
                    report.chunks += t.len() as u64;
                    held.insert(id, t.into_iter().collect());
                }
                Err((at, why)) => report.problems.push(problem(
                    None,
                    None,
                    format!("pack {id} is damaged at offset {at}: {why}"),
                )),
            }
        }
        match Index::open(backend, self.shared_seal()) {
            Err(e) => report
                .problems
                .push(problem(None, None, e.chain().to_string())),
            Ok(index) => {
                // The pack tables say which packs are indexed (adoption trusts them).
                if let Err(e) = index.packs() {
                    report
                        .problems
                        .push(problem(None, None, e.chain().to_string()));
                }
                for r in index.merged() {
                    match r {
                        Err(e) => {
                            report
                                .problems
                                .push(problem(None, None, e.chain().to_string()));
                            break;
                        }
                        Ok(r) => {
                            report.index_records += 1;
                            if !held.get(&r.pack).is_some_and(|t| t.contains(&r)) {
                                report.problems.push(problem(
                                    None,
                                    None,
                                    format!(
                                        "the index names blob {} in pack {}, which does not hold it there",
                                        r.id.short(),
                                        r.pack
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        // A pin that fails authentication would make gc refuse to run: say so here.
        for (key, _) in backend.list(Kind::Pin)? {
            if let Err(e) = self.read_pin(&key) {
                report
                    .problems
                    .push(problem(None, None, e.chain().to_string()));
            }
        }
        let mut referenced: HashSet<PackId> = HashSet::new();
        let ids = self.backup_ids()?;
        let nb = ids.len() as u64;
        for (i, id) in ids.into_iter().enumerate() {
            progress(&CheckProgress {
                phase: "backups",
                done: i as u64,
                total: nb,
            });
            let b = match self.read_backup(&id) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    report
                        .problems
                        .push(problem(Some(id.as_str()), None, e.chain().to_string()));
                    continue;
                }
            };
            report.backups += 1;
            for v in &b.volumes {
                report.volumes += 1;
                let snarfs = snarf_count(v.size, v.snarf_size);
                report.snarfs += snarfs;
                let mut bad: Vec<String> = Vec::new();
                let mut read = 0u64;
                let walked =
                    super::gc::walk(self, &id, &v.name, snarfs, v.root_ref(), None, &mut |r| {
                        referenced.insert(r.pack);
                        if !held.get(&r.pack).is_some_and(|t| t.contains(r)) {
                            bad.push(format!(
                                "blob {} is not in pack {} where its tree says it is",
                                r.id.short(),
                                r.pack
                            ));
                        } else if read_data && r.kind.is_data() {
                            read += 1;
                            if let Err(e) = self.read_blob(r) {
                                bad.push(e.chain().to_string());
                            }
                        }
                    });
                report.chunks_read += read;
                if let Err(e) = walked {
                    bad.push(e.chain().to_string());
                }
                for what in bad {
                    report
                        .problems
                        .push(problem(Some(id.as_str()), Some(&v.name), what));
                }
            }
        }
        let mut unreferenced: Vec<PackId> = held
            .keys()
            .filter(|p| !referenced.contains(p))
            .copied()
            .collect();
        unreferenced.sort();
        report.unreferenced_packs = unreferenced;
        Ok(report)
    }
}
