//! Recovery of abandoned transfers: a backup killed before its commit leaves `tmp/<ID>/`;
//! its sealed packs are adopted into the index (an index run from their trailers) for later
//! deduplication, torn packs are deleted, and the folder is removed. Safe to redo.

use super::super::error::{IoContext, Result};
use super::super::fault::{self, FilePoints};
use super::super::fsx;
use super::super::ids::{BackupId, PackId};
use super::super::index::{self};
use super::super::pack;
use super::super::writer::PACK_LOG;
use super::super::Repo;
use super::gc::GC_MARKER;
use super::read_pack_refs;
use super::record::may_name_backup;
use crate::chain::ErrorChain;

/// The transfer folders in `tmp/`: real folders named by a valid backup id. Anything else
/// there is not snarf's, is left alone and does not count as work for recovery: its name
/// must not become an index file name or lead recovery's reads and deletions elsewhere.
pub(crate) fn transfer_dirs(repo: &Repo) -> Result<Vec<BackupId>> {
    let tmp = repo.tmp_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
        let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
        let name = entry.file_name();
        let id = BackupId::parse(&name.to_string_lossy());
        match id {
            Some(id) if entry.file_type().is_ok_and(|t| t.is_dir()) => out.push(id),
            _ => log::warn!(
                "{}: ignoring {}, which is not a backup transfer folder",
                repo.path().display(),
                entry.path().display()
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// Recovers every abandoned transfer in `tmp/` (the caller holds the lock, so none is live).
pub(super) fn recover_transfers(repo: &Repo) -> Result<()> {
    for id in transfer_dirs(repo)? {
        recover_transfer(repo, &id)?;
    }
    for dir in [
        repo.path().to_path_buf(),
        repo.index_dir(),
        repo.packs_dir(),
        repo.backups_dir(),
    ] {
        fsx::remove_tmp_leftovers(&dir)?;
    }
    let (_, torn) = super::gc::packs_on_disk(repo)?;
    for p in &torn {
        fsx::remove_if_exists(p)?;
    }
    if !torn.is_empty() {
        fsx::sync_dir(&repo.packs_dir())?;
    }
    Ok(())
}

/// Adopts the sealed packs abandoned transfer `id` logged (an index run from their
/// trailers), deletes its torn pack, and removes its folder. Safe to redo. A transfer the
/// finishing record names is committed, not abandoned, and is left for finishing: whatever
/// failed after the record reached the disk (even its folder's fsync), its tables and draft
/// are what finishing needs.
pub(crate) fn recover_transfer(repo: &Repo, id: &BackupId) -> Result<()> {
    // An unreadable record might name it: it is kept then too.
    if may_name_backup(repo, id) {
        return Ok(());
    }
    let name = id.as_str();
    let dir = repo.tmp_dir().join(name);
    let log = fsx::read_optional(&dir.join(PACK_LOG))?.unwrap_or_default();
    let mut refs = Vec::new();
    // A torn last line is simply not a pack id.
    for pack_id in String::from_utf8_lossy(&log)
        .lines()
        .filter_map(PackId::parse)
    {
        fsx::remove_if_exists(&repo.packs_dir().join(pack::part_name(&pack_id)))?;
        if repo.pack_path(&pack_id).exists() {
            match read_pack_refs(repo, &pack_id) {
                Ok(r) => refs.extend(r),
                // Left for gc: unreferenced packs are deleted there.
                Err(e) => log::warn!(
                    "not adopting a pack of abandoned transfer {name}: {}",
                    e.chain()
                ),
            }
        }
    }
    if !refs.is_empty() {
        let run = index::run_path(&repo.index_dir(), &format!("a-{name}"));
        if !run.exists() {
            refs.sort_by_key(|r| r.id);
            index::write_run(
                &run,
                refs.into_iter().map(Ok),
                FilePoints::pair("adopt.written", "adopt.renamed"),
            )?;
        }
        fsx::write_atomic(&repo.path().join(GC_MARKER), b"", FilePoints::NONE)?;
        log::info!("adopted the sealed packs of abandoned transfer {name}");
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        fault::point("adopt.tmp-removed");
        fsx::sync_dir(&repo.tmp_dir())?;
    }
    Ok(())
}
