//! Retention, borg style: keep the newest N backups, then the newest backup of each of the
//! last N days, ISO weeks and months that have backups (UTC). A backup kept by one rule does
//! not count towards the next. The backup named by `current` is always kept. A prune is
//! carried out as a finishing (record first, then delete backups, then collect packs), so an
//! interrupted prune completes forward at the next open.

use super::error::Result;
use super::fault::FilePoints;
use super::finishing::{self, Record};
use super::ids::BackupId;
use super::manifest::Manifest;
use super::Repo;

pub use crate::repo::retention::{Decision, Policy, PruneReport};

/// Applies `policy` to format 1 manifests (see `retention::select`).
pub fn select(backups: &[Manifest], policy: &Policy, current: Option<&BackupId>) -> Vec<Decision> {
    let list: Vec<(BackupId, u64)> = backups.iter().map(|m| (m.id.clone(), m.created)).collect();
    crate::repo::retention::select(&list, policy, current)
}

/// Runs a prune (see the module documentation).
pub(crate) fn prune(repo: &Repo, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
    policy.validate()?;
    let lock = repo.lock("snarf prune", None)?;
    let backups = repo.list_backups()?;
    let decisions = select(&backups, policy, repo.current()?.as_ref());
    let doomed: Vec<BackupId> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.clone())
        .collect();
    if dry_run {
        let (packs_removed, freed_bytes, damaged) = would_free(repo, &doomed)?;
        return Ok(PruneReport {
            decisions,
            dry_run,
            packs_removed,
            freed_bytes,
            damaged,
        });
    }
    let record = Record::for_prune(*policy, doomed);
    finishing::begin(
        repo,
        &record,
        FilePoints::pair("record.prune.written", "record.prune.renamed"),
    )?;
    let out = finishing::run(repo, &lock, record)?;
    Ok(PruneReport {
        decisions,
        dry_run,
        packs_removed: out.packs_removed,
        freed_bytes: out.freed_bytes,
        damaged: out.damaged,
    })
}

/// Packs and bytes that deleting `doomed` would free (all unreferenced packs included), by
/// gc's own rules, and the damaged backups gc would go around.
fn would_free(repo: &Repo, doomed: &[BackupId]) -> Result<(u64, u64, Vec<String>)> {
    let refs = finishing::referenced_packs(repo, doomed)?;
    if !refs.complete {
        return Ok((0, 0, refs.damaged));
    }
    let (sealed, _) = finishing::packs_on_disk(repo)?;
    let gone: Vec<_> = sealed
        .iter()
        .filter(|(id, _)| !refs.packs.contains(id))
        .collect();
    Ok((
        gone.len() as u64,
        gone.iter().map(|(_, l)| l).sum(),
        refs.damaged,
    ))
}
