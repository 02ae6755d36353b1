//! The backup repository: blake3-addressed, zstd-compressed chunks in pack files, an index,
//! per-backup manifests, and finishing, the commit that only ever goes forward.
//!
//! # On-disk format (version 1)
//!
//! ```text
//! repo.json              format version, compression level, pack target size (see `config`)
//! lock                   flock target: a held flock is the lock; its text names the holder
//! packs/<id>.pack        sealed packs: chunks + trailer listing them (see `pack`)
//! packs/<id>.part        a pack being written; torn if no writer holds the lock
//! index/*.idx            sorted runs of chunk id -> (pack, offset, lengths) (see `index`)
//! backups/<ID>/manifest.json   a committed backup's header (see `manifest`)
//! backups/<ID>/vNNNN.tbl       per-volume chunk tables, one 64-byte record per snarf
//! tmp/<ID>/              a transfer in progress: tables, draft manifest, log of sealed packs
//! current                id of the last committed backup
//! finishing.json         the finishing record, present only while a finishing is under way
//! last-finishing.json    what the last completed finishing did
//! gc-pending             marker: packs may be unreferenced, the next finishing collects them
//! pins/<name>            pack ids kept from gc for a reader outside the repository (one per line)
//! ```
//!
//! A chunk is one snarf's data, named by the blake3 hash of its uncompressed bytes, stored
//! once in the whole repository (zstd at the configured level, or raw when that does not make
//! it smaller). All-zero snarfs are only recorded, never stored. Every file is written under
//! a temporary name, fsynced, renamed, and its folder fsynced; files have mode 0600.
//!
//! # Writing a backup
//!
//! [`Repo::begin_backup`] takes the lock, completes any pending finishing, recovers abandoned
//! transfers (their sealed packs are *adopted*: indexed from their trailers; torn ones are
//! deleted) and returns a [`BackupWriter`]. Chunks are prepared ([`Preparer`], any thread) and
//! put in any order; packs are sealed as they fill, and each put snarf is reported durable
//! ([`Durable`]) once its pack is sealed. [`BackupWriter::commit`] seals the last pack, writes
//! a draft manifest and then the finishing record: from that instant the backup is committed.
//!
//! # Finishing
//!
//! Steps, each recognisable from disk and safe to redo: 1 manifest (move tables, write
//! manifest), 2 index (write the backup's index run, merge runs), 3 current, 4 retention
//! (choose doomed backups once, record the choice, delete them), 5 gc (delete packs no
//! committed backup references, after rewriting the index without them), 6 done (record
//! what happened, remove the record). Every open completes a pending finishing first; one
//! that cannot be completed leaves reading working and refuses writers, naming why
//! ([`Error::FinishingStuck`]).
//!
//! # Damage
//!
//! Every name read from disk is validated before it becomes a path: backup, pack and
//! transfer folder names must be ids snarf makes (and real folders or files, not links or
//! FIFOs), a manifest's volume names follow the store's naming rules and its table names are
//! `vNNNN.tbl`. Whatever breaks a rule is damage, reported by `check` with the backup it
//! concerns. Gc reads every backup folder's tables directly, so a backup whose manifest is
//! damaged keeps its packs; if a table cannot be read, gc deletes nothing. Deduplication
//! trusts an index entry only once its pack's trailer confirms it (see `known`). The index
//! is derived data: `repair` rebuilds it, and a damaged `repo.json`, from the packs.
//!
//! # Memory
//!
//! Backup and restore use memory bounded by the pack size, the reader cache and the table of
//! the current backup's *new* chunks (about 100 bytes per new chunk); index lookups read
//! records with pread, and index merges stream. Check and gc keep compact tables: gc about
//! 16 bytes per pack, check about 100 bytes per chunk (trailer entries and indexed ids);
//! finishing's index step holds the trailers of the backup's new packs (64 bytes per new
//! chunk) to sort them.
//!
//! # Readers, writers, crashes
//!
//! Writers (backup, prune, finishing, recovery) hold the lock; readers take none and only
//! ever see committed backups (a backup is listed once its manifest exists). In builds with
//! the `fault-injection` feature, setting `SNARF_FAULT_POINT` to a name in [`fault::POINTS`]
//! (or [`fault::REPAIR_POINTS`]) makes the process SIGKILL itself there, so tests crash it at
//! every step; whatever was committed is completed by the next open.

pub mod check;
pub mod chunk;
pub mod config;
mod finishing;
pub mod index;
mod known;
pub mod manifest;
pub mod pack;
pub mod prune;
pub mod reader;
pub mod repair;
pub mod table;
pub mod writer;

pub(crate) use super::{error, fault, fsx, ids, lock};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use check::{CheckProgress, CheckReport, Problem};
pub use chunk::ChunkRef;
pub use config::{Config, DEFAULT_COMPRESSION, DEFAULT_PACK_TARGET, FORMAT_VERSION};
pub use error::{Error, Fix, Result};
pub use finishing::{FinishingStatus, LastFinishing};
pub use ids::{BackupId, ChunkId, PackId};
pub use lock::{Holder, RepoLock};
pub use manifest::{BackupStats, Manifest, VolumeEntry};
pub use prune::{Decision, Policy, PruneReport};
pub use reader::{RestoreProgress, RestoreSummary, VolumeReader};
pub use repair::{RepairProgress, RepairReport};
pub use writer::{
    BackupWriter, Durable, DurableSink, NewBackup, PreparedChunk, Preparer, VolumeSlot,
};

use crate::chain::ErrorChain;
use error::IoContext;

/// Options of a new repository.
#[derive(Debug, Clone)]
pub struct RepoInitOptions {
    /// zstd level, 1 to 19.
    pub compression: i32,
    /// Pack size at which a pack is sealed (tests use small packs).
    pub pack_target: u64,
}

impl Default for RepoInitOptions {
    fn default() -> Self {
        RepoInitOptions {
            compression: DEFAULT_COMPRESSION,
            pack_target: DEFAULT_PACK_TARGET,
        }
    }
}

/// An open repository; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Repo {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: Config,
    /// Why the last attempt to complete a pending finishing failed, if it did.
    stuck: Mutex<Option<String>>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.inner.path.display())
    }
}

impl Repo {
    /// Creates a new repository in an empty or missing directory.
    pub fn init(path: &Path, opts: &RepoInitOptions) -> Result<Repo> {
        config::check_settings(opts.compression, opts.pack_target).map_err(Error::BadArgument)?;
        if path.exists() {
            let mut entries =
                std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))?;
            if entries.next().is_some() {
                return Err(Error::NotEmpty {
                    path: path.to_path_buf(),
                });
            }
        } else {
            // The folders made here need their names durable too, or a power cut after
            // init (or after the first backups) takes the whole repository with it.
            let missing: Vec<&Path> = path.ancestors().take_while(|a| !a.exists()).collect();
            std::fs::create_dir_all(path).ctx(|| format!("creating {}", path.display()))?;
            for dir in missing.iter().rev() {
                fsx::sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
            }
        }
        for sub in config::FOLDERS {
            fsx::ensure_dir(&path.join(sub))?;
        }
        let config = Config {
            format: FORMAT_VERSION,
            compression: opts.compression,
            pack_target: opts.pack_target,
            created: ids::now_secs(),
        };
        // The format file is written last: a directory without it is not a repository.
        config::write(path, &config, fault::FilePoints::NONE)?;
        Repo::open(path)
    }

    /// Opens a repository, completing a pending finishing and recovering abandoned transfers
    /// if no live process is already doing so. A finishing that cannot be completed does
    /// not make the open fail: readers go on with the committed backups, writers are refused
    /// with the reason ([`Error::FinishingStuck`]), and [`Repo::stuck`] tells why.
    pub fn open(path: &Path) -> Result<Repo> {
        let repo = Repo::open_quiet(path)?;
        repo.settle_for_reading();
        Ok(repo)
    }

    /// Opens without completing anything (for status displays).
    pub fn open_quiet(path: &Path) -> Result<Repo> {
        if super::upgrade::interrupted(path) {
            return Err(Error::UpgradeInterrupted {
                path: path.to_path_buf(),
            });
        }
        let config = config::read(path)?;
        Ok(Repo {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                config,
                stuck: Mutex::new(None),
            }),
        })
    }

    /// Completes a pending finishing and recovers abandoned transfers if the lock is free (a
    /// live lock holder is doing it already). `open` calls it; a long-lived process such as
    /// the mount daemon calls it again before listing backups, in case a job died since.
    /// Like `open`, it never fails because finishing cannot complete: that is logged and
    /// kept for [`Repo::stuck`], and reading goes on.
    pub fn complete_pending(&self) -> Result<()> {
        self.settle_for_reading();
        Ok(())
    }

    /// Why the last attempt to complete a pending finishing failed, if it did.
    pub fn stuck(&self) -> Option<String> {
        self.inner.stuck.lock().clone()
    }

    fn settle_for_reading(&self) {
        let result = self.settle();
        let mut stuck = self.inner.stuck.lock();
        match result {
            Ok(()) => *stuck = None,
            Err(e) => {
                let why = e.chain().to_string();
                // Said once per reason: the daemon retries at every listing of backups/.
                if stuck.as_deref() != Some(why.as_str()) {
                    log::warn!("{why}");
                }
                *stuck = Some(why);
            }
        }
    }

    fn settle(&self) -> Result<()> {
        if !self.needs_settling()? {
            return Ok(());
        }
        match RepoLock::try_acquire(self.path(), "snarf (completing finishing)") {
            Ok(lock) => self.settle_locked(&lock),
            Err(Error::Locked { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Completes what is pending while holding the lock; a failure names what is stuck.
    fn settle_locked(&self, lock: &RepoLock) -> Result<()> {
        match finishing::settle(self, lock) {
            Ok(_) => {
                *self.inner.stuck.lock() = None;
                Ok(())
            }
            Err(e) => {
                let what = match finishing::status(self) {
                    Ok(s @ FinishingStatus::Active { .. }) => {
                        format!("the finishing of {}", s.describe())
                    }
                    // (Upkeep is format 2's; format 1 never reports it.)
                    Ok(FinishingStatus::Idle(_) | FinishingStatus::Upkeep { .. }) => {
                        "the recovery of an abandoned backup transfer".to_string()
                    }
                    Err(_) => "the finishing named by an unreadable finishing record".to_string(),
                };
                Err(Error::FinishingStuck {
                    repo: self.path().to_path_buf(),
                    what,
                    source: Box::new(e),
                })
            }
        }
    }

    fn needs_settling(&self) -> Result<bool> {
        if self.record_path().exists() {
            return Ok(true);
        }
        Ok(!finishing::transfer_dirs(self)?.is_empty())
    }

    /// Takes the repository lock for `command`, waiting up to `wait` if given, then completes
    /// pending finishing and recovers abandoned transfers.
    pub fn lock(&self, command: &str, wait: Option<Duration>) -> Result<RepoLock> {
        let lock = match wait {
            Some(t) => RepoLock::acquire_wait(self.path(), command, t)?,
            None => RepoLock::try_acquire(self.path(), command)?,
        };
        self.settle_locked(&lock)?;
        Ok(lock)
    }

    /// Whether the repository is still where it was opened (a moved or deleted directory,
    /// or an unmounted disk, makes every later write fail with "no such file").
    pub fn is_present(&self) -> bool {
        config::config_path(self.path()).is_file()
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The repository's settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn packs_dir(&self) -> PathBuf {
        self.inner.path.join("packs")
    }

    pub(crate) fn index_dir(&self) -> PathBuf {
        self.inner.path.join("index")
    }

    pub(crate) fn backups_dir(&self) -> PathBuf {
        self.inner.path.join("backups")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.path.join("tmp")
    }

    pub(crate) fn record_path(&self) -> PathBuf {
        self.inner.path.join("finishing.json")
    }

    pub(crate) fn pins_dir(&self) -> PathBuf {
        self.inner.path.join("pins")
    }

    pub(crate) fn pack_path(&self, id: &PackId) -> PathBuf {
        self.packs_dir().join(pack::file_name(id))
    }

    pub(crate) fn manifest_path(&self, id: &BackupId) -> PathBuf {
        manifest::manifest_path(self.path(), id)
    }

    /// Every committed backup, oldest first. A backup appears only once its manifest is
    /// complete; damaged manifests are skipped here (and reported by `check`).
    pub fn list_backups(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.backup_ids()? {
            let path = self.manifest_path(&id);
            if !path.exists() {
                continue;
            }
            match manifest::read_manifest(self.path(), &id) {
                Ok(m) => out.push(m),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("skipping backup {id}: {}", e.chain()),
            }
        }
        Ok(out)
    }

    /// Ids of the folders under `backups/`, sorted (committed or not). Only real folders
    /// named by a valid id count: a symlink there must not lead reads, or a retention's
    /// deletions, out of the repository.
    pub(crate) fn backup_ids(&self) -> Result<Vec<BackupId>> {
        let dir = self.backups_dir();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let Some(id) = BackupId::parse(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                ids.push(id);
            } else {
                log::warn!(
                    "{}: ignoring {}, which is not a folder",
                    self.path().display(),
                    entry.path().display()
                );
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The manifest of a committed backup.
    pub fn backup(&self, id: &str) -> Result<Manifest> {
        let missing = || Error::NoSuchBackup {
            repo: self.path().to_path_buf(),
            id: id.to_string(),
        };
        let bid = BackupId::parse(id).ok_or_else(missing)?;
        let path = self.manifest_path(&bid);
        if !path.exists() {
            return Err(missing());
        }
        manifest::read_manifest(self.path(), &bid)
    }

    /// The newest committed backup for which `pred` holds (e.g. "has volume vm1 from store
    /// S"), so the job layer can find the base of an incremental backup.
    pub fn latest_backup_with(&self, pred: impl Fn(&Manifest) -> bool) -> Result<Option<Manifest>> {
        let mut all = self.list_backups()?;
        all.reverse();
        Ok(all.into_iter().find(|m| pred(m)))
    }

    /// The id in `current`: the last committed backup.
    pub fn current(&self) -> Result<Option<BackupId>> {
        let data = fsx::read_optional(&self.inner.path.join("current"))?;
        Ok(data.and_then(|d| BackupId::parse(String::from_utf8_lossy(&d).trim())))
    }

    /// Starts writing a backup: takes the lock (see [`NewBackup::lock_wait`]).
    pub fn begin_backup(&self, new: NewBackup) -> Result<BackupWriter> {
        let lock = self.lock(&new.command, new.lock_wait)?;
        BackupWriter::start(self.clone(), lock, new)
    }

    /// Reads, decompresses and hash-checks one chunk. Works on any sealed pack, including
    /// those of a backup still being written.
    pub fn read_chunk_at(&self, r: &ChunkRef) -> Result<Vec<u8>> {
        if r.is_zero() {
            return Ok(vec![0; r.raw_len as usize]);
        }
        let file = reader::open_pack(self, &r.pack)?;
        reader::fetch(self, &file, r)
    }

    /// A random-access reader of one volume of a committed backup.
    pub fn volume_reader(&self, backup: &str, volume: &str) -> Result<VolumeReader> {
        VolumeReader::open(self, backup, volume)
    }

    /// Restores a backup's volumes (or one) into `dest` as sparse files, verifying every chunk.
    pub fn restore(
        &self,
        backup: &str,
        volume: Option<&str>,
        dest: &Path,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreSummary> {
        reader::restore(self, backup, volume, dest, progress)
    }

    /// Checks structure, and with `read_data` every chunk's contents.
    pub fn check(
        &self,
        read_data: bool,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckReport> {
        check::check(self, read_data, progress)
    }

    /// Applies a retention policy (borg style) as a finishing, or only reports with `dry_run`.
    pub fn prune(&self, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
        prune::prune(self, policy, dry_run)
    }

    /// Keeps `packs` from garbage collection under the pin `name` (added to what the pin
    /// holds already), whether or not a committed backup references them. The mount daemon
    /// pins the packs of durable snarfs whose pre-images it dropped, so a snapshot still
    /// being read keeps its data even if the backup that stored it is abandoned.
    pub fn pin(&self, name: &str, packs: &[PackId]) -> Result<()> {
        crate::store::validate_name("pin", name).map_err(|e| Error::BadArgument(e.to_string()))?;
        let dir = self.pins_dir();
        fsx::ensure_dir(&dir)?;
        let path = dir.join(name);
        let mut text = fsx::read_optional(&path)?
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        let have: std::collections::HashSet<PackId> =
            text.lines().filter_map(PackId::parse).collect();
        for p in packs {
            if !have.contains(p) {
                text.push_str(&format!("{p}\n"));
            }
        }
        fsx::write_atomic(&path, text.as_bytes(), fault::FilePoints::NONE)
    }

    /// Removes the pin `name`; its packs are collected by the next gc if nothing uses them.
    pub fn unpin(&self, name: &str) -> Result<()> {
        crate::store::validate_name("pin", name).map_err(|e| Error::BadArgument(e.to_string()))?;
        if fsx::remove_if_exists(&self.pins_dir().join(name))? {
            fsx::sync_dir(&self.pins_dir())?;
            // The next finishing looks for packs the pin kept alive.
            fsx::write_atomic(
                &self.inner.path.join("gc-pending"),
                b"",
                fault::FilePoints::NONE,
            )?;
        }
        Ok(())
    }

    /// The state of finishing: idle, or which backup at which step.
    pub fn finishing_status(&self) -> Result<FinishingStatus> {
        finishing::status(self)
    }
}

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod tests;
