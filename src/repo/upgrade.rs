//! `snarf repo upgrade REPO`: a format 1 repository becomes format 2 in place. The format 1
//! packs stay where they are and are read as format 2 *legacy packs* (their chunks are
//! [`BlobKind::Legacy`] blobs, indexed from their trailers), so no chunk is read, moved or
//! rewritten and the upgrade costs a few tree pages per backup, whatever the repository's
//! size; each format 1 table becomes a format 2 tree under the same backup id.
//!
//! Steps, under the repository lock, each safe to redo (the folder `upgrade/` is the marker
//! of an upgrade under way: while it exists, every open but the upgrade's refuses with
//! [`Error::UpgradeInterrupted`], so nothing writes to a repository between formats):
//!
//! 1. format 1 finishing completed, then `upgrade/` made;
//! 2. `backups/` (format 1 backup folders) moved to `upgrade/backups/`, an empty `backups/`
//!    made (format 2's backup objects have the same names as format 1's folders);
//! 3. the format 2 `config` created (create-only) with the format 1 settings;
//! 4. each format 1 backup written as a format 2 backup object of the same id, time and
//!    counts (skipped if it exists: its create is its commit);
//! 5. format 1's own files removed: `repo.json`, `current`, finishing files, the index runs
//!    (`index/*.idx`; format 2 indexes the packs from their trailers), `tmp/`;
//! 6. `upgrade/` removed: the repository is format 2.
//!
//! Pins (`pins/<name>`: pack ids, one per line) mean the same in both formats and stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::{Backend, Key, LockGuard};
use super::error::{Error, IoContext, Result};
use super::ids::BackupId;
use super::lock::RepoLock;
use super::v2::chunk::{BlobKind, ChunkRef};
use super::{fsx, v1, v2};

/// The marker folder of an upgrade under way.
pub const MARKER: &str = "upgrade";

/// Snarfs read from a format 1 table at a time.
const RUN: u64 = 4096;

/// What an upgrade did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeReport {
    /// Backups converted by this run (a resumed upgrade counts only its own).
    pub backups: u64,
    /// Backups converted by an earlier, interrupted run.
    pub already: u64,
    /// True if the repository was format 2 already and nothing was done.
    pub was_format_2: bool,
}

/// True while an upgrade of the repository in `path` is under way or was cut short.
pub fn interrupted(path: &Path) -> bool {
    path.join(MARKER).is_dir()
}

/// Upgrades the format 1 repository in `path` (see the module documentation); `backend`
/// is the format 2 view of the same folder (a fault-injection decorator in tests). `point`
/// is called after every step that changed the folder, with the step's name.
pub fn upgrade(
    path: &Path,
    backend: Arc<dyn Backend>,
    point: &dyn Fn(&str),
) -> Result<UpgradeReport> {
    let marker = path.join(MARKER);
    let config_exists = path.join(Key::Config.name()).is_file();
    if config_exists && !marker.is_dir() {
        v2::Repository::open(backend)?;
        return Ok(UpgradeReport {
            was_format_2: true,
            ..UpgradeReport::default()
        });
    }
    let holder = "snarf repo upgrade";
    let lock = if marker.is_dir() {
        RepoLock::try_acquire(path, holder)?
    } else {
        // Step 1: whatever format 1 left pending is completed under the lock first.
        let repo = v1::Repo::open(path)?;
        let lock = repo.lock(holder, None)?;
        fsx::ensure_dir(&marker)?;
        point("upgrade.marked");
        lock
    };
    // Step 2.
    let old = marker.join("backups");
    let backups = path.join("backups");
    if !old.is_dir() {
        std::fs::rename(&backups, &old)
            .ctx(|| format!("moving {} to {}", backups.display(), old.display()))?;
        fsx::sync_dir(&marker)?;
        fsx::sync_dir(path)?;
        point("upgrade.moved");
    }
    fsx::ensure_dir(&backups)?;
    // Step 3: format 1's settings, read from its file (still there until step 5).
    let repo = match v2::config::read(backend.as_ref())? {
        Some(_) => v2::Repository::open(backend.clone())?,
        None => {
            let c = v1::config::read(path)?;
            let opts = v2::InitOptions {
                compression: c.compression,
                pack_target: c.pack_target,
                ..v2::InitOptions::default()
            };
            super::backend::LocalDir::new(path).create_layout()?;
            v2::Repository::init(backend.clone(), &opts)?
        }
    };
    // Step 4, oldest first.
    let guard: Arc<RepoLock> = Arc::new(lock);
    let mut report = UpgradeReport::default();
    for id in v1_backup_ids(&old)? {
        if repo.read_backup(&id)?.is_some() {
            report.already += 1;
            continue;
        }
        convert(
            &repo,
            &marker,
            &id,
            Box::new(Shared {
                _held: guard.clone(),
            }),
        )?;
        report.backups += 1;
    }
    // Step 5.
    for name in [
        "repo.json",
        "current",
        "finishing.json",
        "last-finishing.json",
        "gc-pending",
    ] {
        fsx::remove_if_exists(&path.join(name))?;
    }
    fsx::sync_dir(path)?;
    let index = path.join("index");
    for e in std::fs::read_dir(&index).ctx(|| format!("listing {}", index.display()))? {
        let e = e.ctx(|| format!("listing {}", index.display()))?;
        if e.file_name().to_string_lossy().ends_with(".idx") {
            fsx::remove_if_exists(&e.path())?;
        }
    }
    fsx::sync_dir(&index)?;
    remove_tree(&path.join("tmp"))?;
    point("upgrade.cleaned");
    // Step 6: the switch.
    remove_tree(&marker)?;
    fsx::sync_dir(path)?;
    point("upgrade.done");
    Ok(report)
}

/// The `point` of a real upgrade: a fault point named by the step (with the
/// `fault-injection` feature; nothing without it).
pub fn step_point(name: &str) {
    #[cfg(feature = "fault-injection")]
    super::fault::dynamic_point(name);
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// The lock shared by the backups an upgrade writes.
#[derive(Debug)]
struct Shared {
    _held: Arc<RepoLock>,
}

impl LockGuard for Shared {}

/// Committed format 1 backups in `old` (real folders named by an id, with a manifest).
fn v1_backup_ids(old: &Path) -> Result<Vec<BackupId>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(old).ctx(|| format!("listing {}", old.display()))? {
        let e = e.ctx(|| format!("listing {}", old.display()))?;
        let Some(id) = BackupId::parse(&e.file_name().to_string_lossy()) else {
            continue;
        };
        if e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join("manifest.json").is_file() {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Writes format 1 backup `id` (its folder under `marker/backups`) as a format 2 backup.
fn convert(
    repo: &v2::Repository,
    marker: &Path,
    id: &BackupId,
    lock: Box<dyn LockGuard>,
) -> Result<()> {
    let m = v1::manifest::read_manifest(marker, id)?;
    let mut new = v2::NewBackup::new(&m.snapshot, m.source.clone());
    new.host = Some(m.host.clone());
    new.command = format!("snarf repo upgrade (backup {id})");
    new.kept = Some(v2::Kept {
        id: id.clone(),
        created: m.created,
        stats: m.stats.clone(),
    });
    let w = repo.begin_backup_locked(new, lock)?;
    let folder: PathBuf = marker.join("backups").join(id.as_str());
    for v in &m.volumes {
        let slot = w.add_volume(&v.name, v.size, v.snarf_size, None)?;
        let table = v1::table::Table::open(marker, &folder.join(&v.table))?;
        if table.count() != v.snarfs() || table.snarf_size() != v.snarf_size {
            return Err(Error::Damaged {
                repo: marker.to_path_buf(),
                path: folder.join(&v.table),
                why: format!(
                    "it has {} snarfs of {} bytes, but volume \"{}\" has {} of {}",
                    table.count(),
                    table.snarf_size(),
                    v.name,
                    v.snarfs(),
                    v.snarf_size
                ),
                fix: super::error::Fix::Check,
            });
        }
        let mut first = 0;
        while first < table.count() {
            let n = RUN.min(table.count() - first);
            for (k, r) in table.get_run(first, n)?.into_iter().enumerate() {
                let snarf = first + k as u64;
                let r = r.ok_or_else(|| Error::Incomplete {
                    backup: id.to_string(),
                    volume: v.name.clone(),
                    snarf,
                    offset: snarf * u64::from(v.snarf_size),
                })?;
                if !r.is_zero() {
                    w.put_ref(slot, snarf, legacy(&r))?;
                }
            }
            first += n;
        }
    }
    w.commit()?;
    Ok(())
}

/// A format 1 chunk reference as a format 2 legacy blob.
fn legacy(r: &v1::ChunkRef) -> ChunkRef {
    ChunkRef {
        id: r.id,
        kind: BlobKind::Legacy,
        pack: r.pack,
        offset: r.offset,
        stored_len: r.stored_len,
        within: 0,
        raw_len: r.raw_len,
    }
}

/// Removes a folder of snarf's own (no links followed), if it exists.
fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", dir.display()), e)),
        Ok(_) => {
            std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                fsx::sync_dir(parent)?;
            }
            Ok(())
        }
    }
}
