//! Finishing: the commit that only goes forward (Burp's "atomic data jiggle"). A durable
//! record (`finishing.json`, see `record`) names the backup or prune and its step; each step
//! checks what is already on disk and is safe to redo, so after a crash at any instant the
//! next holder of the lock reads the record and completes it. This file is the step machine;
//! `gc` collects unreferenced packs and `recovery` adopts abandoned transfers.

mod gc;
mod record;
mod recovery;

pub(crate) use gc::{packs_on_disk, referenced_packs};
pub(crate) use record::{begin, may_name_backup, status, Record};
pub use record::{FinishingStatus, Kind, LastFinishing, Step};
pub(crate) use recovery::{recover_transfer, transfer_dirs};

use gc::{step_gc, GC_MARKER};
use record::{kind_name, read_record, write_record, LAST_FILE};
use recovery::recover_transfers;

use std::collections::HashSet;

use super::error::{Error, Fix, IoContext, Result};
use super::fault::{self, FilePoints};
use super::fsx;
use super::ids::{now_secs, BackupId, PackId};
use super::index::{self, Index, MAX_RUNS};
use super::lock::RepoLock;
use super::pack;
use super::prune::{self};
use super::writer::DRAFT;
use super::Repo;

/// Completes a pending finishing and recovers abandoned transfers. The caller holds the lock.
pub(crate) fn settle(repo: &Repo, lock: &RepoLock) -> Result<Option<LastFinishing>> {
    let mut outcome = None;
    if let Some(mut rec) = read_record(repo)? {
        log::warn!(
            "{}: completing the interrupted finishing of {} {} from step {} ({})",
            repo.path().display(),
            kind_name(rec.kind),
            rec.backup.as_ref().map(|b| b.as_str()).unwrap_or("-"),
            rec.step.number(),
            rec.step.name()
        );
        rec.resumed = true;
        write_record(
            repo,
            &rec,
            FilePoints::pair("record.resumed.written", "record.resumed.renamed"),
        )?;
        outcome = Some(run(repo, lock, rec)?);
    }
    recover_transfers(repo)?;
    Ok(outcome)
}

/// Runs finishing from the record's step to the end.
pub(crate) fn run(repo: &Repo, _lock: &RepoLock, mut rec: Record) -> Result<LastFinishing> {
    let mut out = LastFinishing {
        kind: kind_name(rec.kind).into(),
        backup: rec.backup.as_ref().map(|b| b.to_string()),
        started: rec.started,
        resumed: rec.resumed,
        ..LastFinishing::default()
    };
    loop {
        match rec.step {
            Step::Manifest => {
                fault::point("finish.manifest");
                step_manifest(repo, &rec)?;
                advance(repo, &mut rec, Step::Index)?;
            }
            Step::Index => {
                fault::point("finish.index");
                step_index(repo, &rec)?;
                advance(repo, &mut rec, Step::Current)?;
            }
            Step::Current => {
                fault::point("finish.current");
                step_current(repo, &rec)?;
                advance(repo, &mut rec, Step::Retention)?;
            }
            Step::Retention => {
                fault::point("finish.retention");
                out.removed = step_retention(repo, &mut rec)?;
                advance(repo, &mut rec, Step::Gc)?;
            }
            Step::Gc => {
                fault::point("finish.gc");
                let forced = rec.kind == Kind::Prune;
                let gc = step_gc(repo, forced)?;
                out.packs_removed = gc.packs_removed;
                out.freed_bytes = gc.freed_bytes;
                out.damaged = gc.damaged;
                advance(repo, &mut rec, Step::Done)?;
            }
            Step::Done => {
                fault::point("finish.done");
                out.finished = now_secs();
                if let Some(doomed) = &rec.doomed {
                    out.removed = doomed.iter().map(|d| d.to_string()).collect();
                }
                let json = serde_json::to_vec_pretty(&out)
                    .map_err(|e| Error::BadArgument(e.to_string()))?;
                fsx::write_atomic(
                    &repo.path().join(LAST_FILE),
                    &json,
                    FilePoints::pair("last.written", "last.renamed"),
                )?;
                fsx::remove_if_exists(&repo.record_path())?;
                fault::point("record.removed");
                fsx::sync_dir(repo.path())?;
                return Ok(out);
            }
        }
    }
}

fn advance(repo: &Repo, rec: &mut Record, step: Step) -> Result<()> {
    rec.step = step;
    write_record(repo, rec, step.record_points())
}

fn backup_of(repo: &Repo, rec: &Record) -> Result<BackupId> {
    rec.backup.clone().ok_or_else(|| Error::Damaged {
        repo: repo.path().to_path_buf(),
        path: repo.record_path(),
        why: "a backup finishing record names no backup".into(),
        fix: Fix::Copy,
    })
}

/// Step 1: tables into `backups/ID`, then the manifest (which makes the backup visible),
/// then the transfer folder is removed.
fn step_manifest(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    let dest = repo.backups_dir().join(id.as_str());
    let tmp = repo.tmp_dir().join(id.as_str());
    let manifest = repo.manifest_path(&id);
    if !manifest.exists() {
        let draft_path = tmp.join(DRAFT);
        let draft = fsx::read_optional(&draft_path)?.ok_or_else(|| Error::Damaged {
            repo: repo.path().to_path_buf(),
            path: draft_path.clone(),
            why: format!("backup {id} is committed but its draft manifest is gone"),
            fix: Fix::Copy,
        })?;
        fsx::ensure_dir(&dest)?;
        fsx::remove_tmp_leftovers(&dest)?;
        let mut moved = false;
        for entry in std::fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tbl") {
                let to = dest.join(&name);
                std::fs::rename(entry.path(), &to)
                    .ctx(|| format!("moving {} to {}", entry.path().display(), to.display()))?;
                if !moved {
                    fault::point("finish.manifest.table-moved");
                    moved = true;
                }
            }
        }
        fsx::sync_dir(&dest)?;
        fsx::sync_dir(&tmp)?;
        fsx::write_atomic(
            &manifest,
            &draft,
            FilePoints::pair("manifest.written", "manifest.renamed"),
        )?;
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
        fault::point("finish.manifest.tmp-removed");
        fsx::sync_dir(&repo.tmp_dir())?;
    }
    Ok(())
}

/// Step 2: the backup's index run from its packs' trailers; merge runs past [`MAX_RUNS`].
fn step_index(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    let path = index::run_path(&repo.index_dir(), &format!("b-{id}"));
    if !path.exists() {
        let mut refs = Vec::new();
        for hex in &rec.new_packs {
            let pid = PackId::parse(hex).ok_or_else(|| Error::Damaged {
                repo: repo.path().to_path_buf(),
                path: repo.record_path(),
                why: format!("\"{hex}\" is not a pack id"),
                fix: Fix::Copy,
            })?;
            refs.extend(read_pack_refs(repo, &pid)?);
        }
        refs.sort_by_key(|r| r.id);
        index::write_run(
            &path,
            refs.into_iter().map(Ok),
            FilePoints::pair("index.written", "index.renamed"),
        )?;
    }
    let idx = Index::open(&repo.index_dir())?;
    if idx.run_count() > MAX_RUNS {
        // Entries of packs that are gone are dropped: kept, they would hide a chunk's
        // entry in a pack that exists behind one that cannot be read.
        let on_disk: HashSet<PackId> = packs_on_disk(repo)?.0.into_iter().map(|(p, _)| p).collect();
        idx.rewrite(
            |r| on_disk.contains(&r.pack),
            FilePoints::pair("compact.written", "compact.renamed"),
            "compact.removed",
        )?;
    }
    Ok(())
}

/// Every chunk of a sealed pack, from its verified trailer.
pub(super) fn read_pack_refs(repo: &Repo, id: &PackId) -> Result<Vec<super::ChunkRef>> {
    let path = repo.pack_path(id);
    let file = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::PackMissing {
                repo: repo.path().to_path_buf(),
                pack: id.to_string(),
                path: path.clone(),
            }
        } else {
            Error::io(format!("opening {}", path.display()), e)
        }
    })?;
    let entries = pack::read_trailer(&file, id).map_err(|(offset, why)| Error::PackDamaged {
        repo: repo.path().to_path_buf(),
        pack: id.to_string(),
        offset,
        why,
    })?;
    Ok(entries.iter().map(|e| e.chunk_ref(*id)).collect())
}

/// Step 3: `current` names the backup.
fn step_current(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    if repo.current()?.as_ref() != Some(&id) {
        fsx::write_atomic(
            &repo.path().join("current"),
            format!("{id}\n").as_bytes(),
            FilePoints::pair("current.written", "current.renamed"),
        )?;
    }
    Ok(())
}

/// Step 4: decide once which backups the policy drops, record that, delete them.
fn step_retention(repo: &Repo, rec: &mut Record) -> Result<Vec<String>> {
    let Some(policy) = rec.policy else {
        return Ok(Vec::new());
    };
    if rec.doomed.is_none() {
        let backups = repo.list_backups()?;
        let decisions = prune::select(&backups, &policy, repo.current()?.as_ref());
        rec.doomed = Some(
            decisions
                .into_iter()
                .filter(|d| !d.keep)
                .map(|d| d.id)
                .collect(),
        );
        write_record(
            repo,
            rec,
            FilePoints::pair(
                "record.retention-selected.written",
                "record.retention-selected.renamed",
            ),
        )?;
    }
    let doomed = rec.doomed.clone().unwrap_or_default();
    if !doomed.is_empty() {
        // Marked first, so packs the deleted backups leave behind are collected even if
        // this process dies between the deletion and the gc step.
        fsx::write_atomic(&repo.path().join(GC_MARKER), b"", FilePoints::NONE)?;
    }
    for (i, id) in doomed.iter().enumerate() {
        delete_backup(repo, id, i == 0)?;
    }
    Ok(doomed.iter().map(|d| d.to_string()).collect())
}

/// Deletes a backup: its manifest first (so it disappears at once), then the folder.
fn delete_backup(repo: &Repo, id: &BackupId, first: bool) -> Result<()> {
    let dir = repo.backups_dir().join(id.as_str());
    if fsx::remove_if_exists(&repo.manifest_path(id))? {
        if first {
            fault::point("retention.manifest-removed");
        }
        fsx::sync_dir(&dir)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        if first {
            fault::point("retention.removed");
        }
        fsx::sync_dir(&repo.backups_dir())?;
    }
    Ok(())
}
