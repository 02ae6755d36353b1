//! Checking a repository. Structure: every pack trailer verifies, every index entry points
//! into an existing pack within bounds and agrees with its trailer, every manifest parses,
//! every table record of every backup points at a chunk its pack's trailer lists and the
//! index knows. With `read_data`, every chunk of every pack is read, decompressed and
//! hash-checked, and damage is reported at each backup, volume and byte offset that uses it.
//! Memory: the trailers of all packs (48 bytes per chunk) and the set of indexed ids
//! (about 40 bytes per chunk), so about 100 bytes per chunk in the repository.

use std::collections::{HashMap, HashSet};

use super::chunk::ChunkRef;
use super::error::Result;
use super::finishing;
use super::ids::{ChunkId, PackId};
use super::index::{self, Index};
use super::manifest::{read_manifest, Table};
use super::pack::{self, TrailerEntry};
use super::reader;
use super::Repo;
use crate::chain::ErrorChain;

pub use crate::repo::report::{CheckProgress, CheckReport, Problem};

/// A pack's trailer, sorted by offset for lookups.
struct PackInfo {
    entries: Vec<TrailerEntry>,
}

impl PackInfo {
    fn find(&self, offset: u64) -> Option<&TrailerEntry> {
        self.entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()
            .map(|i| &self.entries[i])
    }
}

fn agrees(e: &TrailerEntry, r: &ChunkRef) -> bool {
    e.id == r.id && e.stored_len == r.stored_len && e.raw_len == r.raw_len
}

/// Runs a check (see the module documentation).
pub(crate) fn check(
    repo: &Repo,
    read_data: bool,
    progress: &mut dyn FnMut(&CheckProgress),
) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    // A live writer's transfer or finishing shows transient states (a backup folder whose
    // manifest is not written yet, a pending record); those are not damage.
    let busy = super::lock::is_held(repo.path());
    match finishing::status(repo) {
        Ok(status @ super::FinishingStatus::Active { .. }) if !busy => {
            rep.problem(match repo.stuck() {
                Some(why) => format!("a finishing is pending and cannot be completed: {why}"),
                None => format!(
                    "a finishing is pending ({}) and could not be completed; open the repository with a writer (e.g. `snarf prune`) to see why",
                    status.describe()
                ),
            })
        }
        Ok(_) => {}
        Err(e) => rep.problem(e.chain().to_string()),
    }

    // Packs and their trailers.
    let (sealed, _) = finishing::packs_on_disk(repo)?;
    let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
    let total = sealed.len() as u64;
    for (i, (id, _)) in sealed.iter().enumerate() {
        progress(&CheckProgress {
            phase: "packs",
            done: i as u64,
            total,
        });
        let file = match reader::open_pack(repo, id) {
            Ok(f) => f,
            Err(e) => {
                rep.problem(e.chain().to_string());
                continue;
            }
        };
        match pack::read_trailer(&file, id) {
            Ok(mut entries) => {
                entries.sort_by_key(|e| e.offset);
                rep.chunks += entries.len() as u64;
                packs.insert(*id, PackInfo { entries });
            }
            Err((offset, why)) => rep.problem(format!(
                "pack {id} is damaged at offset {offset}: {why}; the backups using it are listed below"
            )),
        }
    }
    rep.packs = packs.len() as u64;
    progress(&CheckProgress {
        phase: "packs",
        done: total,
        total,
    });

    // Index.
    let mut indexed: HashSet<ChunkId> = HashSet::new();
    // With no usable index, one problem says so instead of one per chunk.
    let mut index_usable = true;
    let runs = index::run_names(&repo.index_dir()).map_or(0, |r| r.len());
    match Index::open(&repo.index_dir()) {
        Err(e) => {
            index_usable = false;
            rep.problem(format!("the index cannot be opened: {}", e.chain()))
        }
        Ok(idx) => {
            let total = idx.records();
            for (i, r) in idx.merged()?.enumerate() {
                if i % 4096 == 0 {
                    progress(&CheckProgress {
                        phase: "index",
                        done: i as u64,
                        total,
                    });
                }
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        index_usable = false;
                        rep.problem(format!("the index is damaged: {}", e.chain()));
                        break;
                    }
                };
                rep.index_records += 1;
                indexed.insert(r.id);
                match packs.get(&r.pack) {
                    None => rep.problem(format!(
                        "the index says chunk {} is in pack {}, which is missing or unreadable; `snarf repair index {}` rebuilds the index from the packs there are",
                        r.id.short(),
                        r.pack,
                        repo.path().display()
                    )),
                    Some(p) => {
                        if !p.find(r.offset).is_some_and(|e| agrees(e, &r)) {
                            rep.problem(format!(
                                "the index entry of chunk {} disagrees with the trailer of pack {} at offset {}; `snarf repair index {}` rebuilds the index from the packs",
                                r.id.short(),
                                r.pack,
                                r.offset,
                                repo.path().display()
                            ));
                        }
                    }
                }
            }
            progress(&CheckProgress {
                phase: "index",
                done: total,
                total,
            });
        }
    }
    log::debug!("checked {} index runs", runs);

    // Data.
    let mut damaged: HashMap<(PackId, u64), String> = HashMap::new();
    if read_data {
        let total = rep.chunks;
        let mut done = 0;
        for (id, info) in &packs {
            let file = match reader::open_pack(repo, id) {
                Ok(f) => f,
                Err(e) => {
                    rep.problem(e.chain().to_string());
                    continue;
                }
            };
            for e in &info.entries {
                if done % 256 == 0 {
                    progress(&CheckProgress {
                        phase: "data",
                        done,
                        total,
                    });
                }
                done += 1;
                rep.chunks_read += 1;
                if let Err(err) = reader::fetch(repo, &file, &e.chunk_ref(*id)) {
                    damaged.insert((*id, e.offset), err.chain().to_string());
                }
            }
        }
        progress(&CheckProgress {
            phase: "data",
            done: total,
            total,
        });
    }

    // Backups.
    let mut damage_used: HashSet<(PackId, u64)> = HashSet::new();
    let ids = repo.backup_ids()?;
    for (bi, id) in ids.iter().enumerate() {
        progress(&CheckProgress {
            phase: "backups",
            done: bi as u64,
            total: ids.len() as u64,
        });
        let mpath = repo.manifest_path(id);
        let whole = |what: String| Problem {
            backup: Some(id.to_string()),
            volume: None,
            offset: None,
            what,
        };
        if !mpath.exists() {
            if busy {
                continue;
            }
            rep.problems.push(whole(format!(
                "backups/{id} has no manifest.json, so it is neither listed nor restorable; its tables keep the packs they use from gc; put its manifest back from a copy, or remove the folder to free them"
            )));
            continue;
        }
        let m = match read_manifest(repo.path(), id) {
            Ok(m) => m,
            Err(e) => {
                rep.problems.push(whole(format!(
                    "{}; until then it is neither listed nor restorable, and gc keeps the packs its tables use",
                    e.chain()
                )));
                continue;
            }
        };
        rep.backups += 1;
        for v in &m.volumes {
            rep.volumes += 1;
            let at = |offset: Option<u64>, what: String| Problem {
                backup: Some(id.to_string()),
                volume: Some(v.name.clone()),
                offset,
                what,
            };
            let table = match Table::open(
                repo.path(),
                &repo.backups_dir().join(id.as_str()).join(&v.table),
            ) {
                Ok(t) => t,
                Err(e) => {
                    rep.problems.push(at(None, e.chain().to_string()));
                    continue;
                }
            };
            let ss = v.snarf_size as u64;
            let mut found = Vec::new();
            table.for_each(|i, r| {
                let off = Some(i * ss);
                let want = super::manifest::snarf_len(v.size, v.snarf_size, i);
                let Some(r) = r else {
                    found.push(at(off, "no chunk was recorded for this snarf".into()));
                    return Ok(());
                };
                if r.raw_len != want {
                    found.push(at(
                        off,
                        format!("its chunk has {} bytes, not {want}", r.raw_len),
                    ));
                }
                if r.is_zero() {
                    return Ok(());
                }
                match packs.get(&r.pack) {
                    None => {
                        found.push(at(off, format!("pack {} is missing or unreadable", r.pack)))
                    }
                    Some(p) => {
                        if !p.find(r.offset).is_some_and(|e| agrees(e, &r)) {
                            found.push(at(
                                off,
                                format!(
                                    "chunk {} is not where the table says (pack {}, offset {})",
                                    r.id.short(),
                                    r.pack,
                                    r.offset
                                ),
                            ));
                        } else if let Some(why) = damaged.get(&(r.pack, r.offset)) {
                            damage_used.insert((r.pack, r.offset));
                            found.push(at(off, why.clone()));
                        }
                    }
                }
                if index_usable && !indexed.contains(&r.id) {
                    found.push(at(
                        off,
                        format!(
                            "chunk {} is not in the index (`snarf repair index` adds every chunk of the packs there are)",
                            r.id.short()
                        ),
                    ));
                }
                Ok(())
            })?;
            rep.snarfs += table.count();
            rep.problems.extend(found);
        }
    }
    progress(&CheckProgress {
        phase: "backups",
        done: ids.len() as u64,
        total: ids.len() as u64,
    });
    for ((pack, offset), why) in &damaged {
        if !damage_used.contains(&(*pack, *offset)) {
            rep.problem(format!(
                "pack {pack}, offset {offset} (used by no backup): {why}"
            ));
        }
    }
    // What the next gc would delete, by its own rules (damaged backups' tables included).
    let refs = finishing::referenced_packs(repo, &[])?;
    if refs.complete {
        rep.unreferenced_packs = packs
            .keys()
            .filter(|p| !refs.packs.contains(p))
            .copied()
            .collect();
        rep.unreferenced_packs.sort();
    }
    Ok(rep)
}
