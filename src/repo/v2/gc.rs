//! Format 2 upkeep, every step safe to redo after a crash: adopting the packs of killed
//! writers into the index (so an interrupted backup's work is reused, not redone), merging
//! index runs, retention (prune) and gc.
//!
//! Gc deletes the packs that no committed backup's tree and no pin references, once they
//! are older than the grace period (a killed backup's packs wait for the next backup to
//! reuse them). It first writes one index run without the doomed packs and deletes the
//! older runs, and only then deletes the packs, so the index never names a deleted pack;
//! `state/gc-pending`, written before retention deletes a backup and deleted when gc is
//! done, makes the next writer finish a gc that was cut short.

use std::collections::HashSet;

use super::chunk::ChunkRef;
use super::index::{self, Index};
use super::pack;
use super::repository::Repository;
use super::tree::{self, Entry};
use crate::repo::backend::{Key, Kind, LockGuard, StateName};
use crate::repo::error::{Error, Fix, Result};
use crate::repo::ids::{self, BackupId, PackId};
use crate::repo::report::FinishingStatus;
use crate::repo::retention::{self, Decision, Policy};
use crate::repo::v1::manifest::snarf_count;

/// Largest pin object read.
pub(crate) const MAX_PIN_BYTES: u64 = 16 << 20;

/// What a gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Packs deleted.
    pub packs_removed: u64,
    /// Their bytes.
    pub freed_bytes: u64,
    /// Unreferenced packs kept because they are younger than the grace period.
    pub packs_in_grace: u64,
}

/// Indexes the packs that no index run covers (those of killed writers) from their
/// trailers; a pack whose trailer cannot be read is left for check to report.
pub fn adopt(repo: &Repository) -> Result<u64> {
    let backend = repo.backend();
    let covered = Index::open(backend, repo.shared_seal())?.packs()?;
    let mut recs = Vec::new();
    let mut adopted = Vec::new();
    for (key, size) in backend.list(Kind::Pack)? {
        let (Key::Pack(id) | Key::LegacyPack(id)) = key else {
            continue;
        };
        if covered.contains(&id) {
            continue;
        }
        match pack::read_trailer(backend.as_ref(), repo.seal(), &key, size) {
            Ok(t) => {
                recs.extend(t);
                adopted.push(id);
            }
            Err((at, why)) => log::warn!(
                "{}: not adopting pack {id}: at offset {at}, {why}",
                repo.location()
            ),
        }
    }
    if adopted.is_empty() {
        return Ok(0);
    }
    recs.sort_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
    index::write_run(
        backend.as_ref(),
        repo.seal(),
        recs.into_iter().map(Ok),
        &adopted,
    )?;
    log::info!(
        "{}: adopted {} pack(s) of an interrupted backup into the index",
        repo.location(),
        adopted.len()
    );
    Ok(adopted.len() as u64)
}

/// What a cut left for the next writer (see [`FinishingStatus::Upkeep`]); reads only
/// the listing, the index runs and the marker, and changes nothing.
pub fn upkeep(repo: &Repository) -> Result<FinishingStatus> {
    let backend = repo.backend();
    let gc_pending = backend.size(&Key::State(StateName::GcPending))?.is_some();
    let covered = Index::open(backend, repo.shared_seal())?.packs()?;
    let unadopted_packs = backend
        .list(Kind::Pack)?
        .into_iter()
        .filter(|(k, _)| match k {
            Key::Pack(id) | Key::LegacyPack(id) => !covered.contains(id),
            _ => false,
        })
        .count() as u64;
    Ok(FinishingStatus::Upkeep {
        gc_pending,
        unadopted_packs,
    })
}

/// Replaces every index run by one without the records of `drop` packs.
pub fn merge_index(repo: &Repository, drop: &[PackId]) -> Result<()> {
    let backend = repo.backend();
    let index = Index::open(backend, repo.shared_seal())?;
    let drop: HashSet<PackId> = drop.iter().copied().collect();
    let packs: Vec<PackId> = index
        .packs()?
        .into_iter()
        .filter(|p| !drop.contains(p))
        .collect();
    let old: Vec<Key> = index.runs().iter().map(|r| r.key().clone()).collect();
    let records = index
        .merged()
        .filter(|r| r.as_ref().map_or(true, |r| !drop.contains(&r.pack)));
    index::write_run(backend.as_ref(), repo.seal(), records, &packs)?;
    for k in old {
        backend.delete(&k)?;
    }
    Ok(())
}

/// Every pack the committed backups' trees reference (pages and chunks) and the pins
/// hold. A backup object or page that cannot be read makes it fail: gc then deletes
/// nothing rather than a pack a damaged backup still needs.
pub fn referenced(repo: &Repository) -> Result<HashSet<PackId>> {
    let mut packs = HashSet::new();
    let mut leaves = HashSet::new();
    for id in repo.backup_ids()? {
        let Some(b) = repo.read_backup(&id)? else {
            continue;
        };
        for v in &b.volumes {
            walk(
                repo,
                &id,
                &v.name,
                snarf_count(v.size, v.snarf_size),
                v.root_ref(),
                Some(&mut leaves),
                &mut |r| {
                    packs.insert(r.pack);
                },
            )?;
        }
    }
    for (key, _) in repo.backend().list(Kind::Pin)? {
        packs.extend(repo.read_pin(&key)?);
    }
    Ok(packs)
}

/// Calls `f` with every page and every chunk of a tree. With `visited`, a leaf page met
/// before (shared with a tree walked earlier, as the unchanged leaves of incrementals are)
/// is not read again: its chunks were given already, so a walk over many backups costs in
/// proportion to what changed between them.
pub fn walk(
    repo: &Repository,
    backup: &BackupId,
    volume: &str,
    snarfs: u64,
    root: Option<ChunkRef>,
    mut visited: Option<&mut HashSet<ChunkRef>>,
    f: &mut dyn FnMut(&ChunkRef),
) -> Result<()> {
    let damaged = |e: tree::TreeError| match e {
        tree::TreeError::Store(e) => e,
        other => Error::Damaged {
            repo: repo.location().into(),
            path: format!("backups/{backup}").into(),
            why: format!("volume \"{volume}\": {other}"),
            fix: Fix::Check,
        },
    };
    let t = tree::Reader::new(snarfs, root);
    for p in t.pages(repo).map_err(damaged)? {
        f(&p);
    }
    let mut k = 0;
    while let Some(leaf) = t.next_nonzero_leaf(repo, k).map_err(damaged)? {
        k = leaf + 1;
        if let Some(seen) = visited.as_deref_mut() {
            if let Some(r) = t.leaf_ref(repo, leaf).map_err(damaged)? {
                if !seen.insert(r) {
                    continue;
                }
            }
        }
        for e in t.leaf(repo, leaf).map_err(damaged)? {
            if let Entry::Chunk(r) = e {
                f(&r);
            }
        }
    }
    Ok(())
}

/// Deletes unreferenced packs past the grace period (see the module documentation).
/// The caller holds the lock.
pub fn collect(repo: &Repository, _lock: &dyn LockGuard) -> Result<GcReport> {
    let backend = repo.backend();
    backend.write(&Key::State(StateName::GcPending), b"")?;
    let keep = referenced(repo)?;
    let now = ids::now_secs();
    let grace = repo.config().gc_grace_secs;
    let mut report = GcReport::default();
    let mut doomed = Vec::new();
    for (key, size) in backend.list(Kind::Pack)? {
        let (Key::Pack(id) | Key::LegacyPack(id)) = key else {
            continue;
        };
        if keep.contains(&id) {
            continue;
        }
        let young = match pack::created(backend.as_ref(), &key) {
            Ok(Some(t)) => now.saturating_sub(t) < grace,
            Ok(None) => false,
            // A pack too short for its header is a torn leftover: nothing can use it.
            Err(_) => false,
        };
        if young {
            report.packs_in_grace += 1;
            continue;
        }
        doomed.push((key, id, size));
    }
    if !doomed.is_empty() {
        let ids: Vec<PackId> = doomed.iter().map(|d| d.1).collect();
        merge_index(repo, &ids)?;
        for (key, _, size) in doomed {
            if backend.delete(&key)? {
                report.packs_removed += 1;
                report.freed_bytes += size;
            }
        }
    }
    backend.delete(&Key::State(StateName::GcPending))?;
    Ok(report)
}

/// What a prune did.
#[derive(Debug, Clone)]
pub struct PruneReport {
    /// Every backup with the rule that keeps it or why it goes, newest first.
    pub decisions: Vec<Decision>,
    /// What the gc after it did (`None` on a dry run).
    pub gc: Option<GcReport>,
}

/// Applies `policy`: deletes the backups it does not keep, then collects garbage. With
/// `dry_run`, only says what it would delete.
pub fn prune(repo: &Repository, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
    policy.validate()?;
    let lock = if dry_run {
        None
    } else {
        Some(repo.lock("snarf prune", None)?)
    };
    let backups: Vec<(BackupId, u64)> = repo
        .list_backups()?
        .into_iter()
        .map(|b| (b.id, b.created))
        .collect();
    let newest = backups.iter().map(|b| b.0.clone()).max();
    let decisions = retention::select(&backups, policy, newest.as_ref());
    let Some(lock) = lock else {
        return Ok(PruneReport {
            decisions,
            gc: None,
        });
    };
    // Marked first: a crash after any deletion leaves a gc for the next writer.
    repo.backend()
        .write(&Key::State(StateName::GcPending), b"")?;
    for d in decisions.iter().filter(|d| !d.keep) {
        repo.backend().delete(&Key::Backup(d.id.clone()))?;
    }
    let gc = collect(repo, &*lock)?;
    Ok(PruneReport {
        decisions,
        gc: Some(gc),
    })
}
