//! The store: a directory of named volumes split into fixed-size snarfs, with the settings,
//! spill space and run folder around them, and changed-snarf tracking that survives a clean
//! close and is marked lost after an unclean one.
//!
//! Layout of a store directory:
//!
//! ```text
//! snarf.toml          settings (format version, snarf size, budgets)
//! volumes/NAME        one sparse backing file per live volume
//! retired/ID          deleted volumes still held by a snapshot or an open file
//! spill/              pre-images spilled past the memory budget
//! state/store.json    volume ids, tracking checkpoints, session counter
//! state/stamps/ID     per-snarf last-write epochs, saved on clean close
//! run/                lock file, open marker, sockets, process registry
//! ```
//!
//! Epochs: every open of the store is a new *session*, and the epochs of session S are
//! `S << 32` and up, so an epoch from an earlier session (say, recorded in a backup) is
//! always older than any epoch of this one.

pub mod files;
pub mod name;
pub mod settings;
pub mod volume;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use name::validate_name;
pub use settings::{Budgets, Settings};
pub use volume::{Volume, VolumeAttr, VolumeId, VolumeState};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory has no settings file.
    #[error(
        "{path} is not a snarf store (it has no snarf.toml); create one with `snarf init {path}`"
    )]
    NotAStore {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// The store was written by a different format version.
    #[error("{path} is a snarf store of format version {found}, but this snarf reads only version {supported}; use a snarf release that supports version {found}")]
    UnknownFormat {
        /// The store directory.
        path: PathBuf,
        /// Version found in the settings.
        found: i64,
        /// Version this build supports.
        supported: u32,
    },
    /// The settings file is unreadable.
    #[error("the settings file {path} is damaged: {why}; fix or restore it")]
    BadSettings {
        /// Path of the settings file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A snarf size outside the allowed range.
    #[error("snarf size {size} is not allowed: it must be a power of two from 4K to 1M (for example 64K)")]
    BadSnarfSize {
        /// The size asked for.
        size: u64,
    },
    /// A volume or snapshot name breaks a naming rule.
    #[error("bad {kind} name \"{name}\": {rule}")]
    BadName {
        /// "volume" or "snapshot".
        kind: &'static str,
        /// The name, escaped for display.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// No volume has that name.
    #[error("no volume named \"{0}\"")]
    NoSuchVolume(String),
    /// A volume of that name exists already.
    #[error("a volume named \"{0}\" already exists")]
    VolumeExists(String),
    /// Another process has the store open.
    #[error("the store {path} is already in use by {holder}; unmount it there first (snarf umount MOUNTPOINT), or stop that process")]
    Busy {
        /// The store directory.
        path: PathBuf,
        /// Who holds it, as written in its lock file.
        holder: String,
    },
    /// The directory already holds something.
    #[error(
        "{path} already exists and is not empty; choose a new or empty directory for the store"
    )]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What snarf was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of the store layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options for a new store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Snarf size in bytes.
    pub snarf_size: u64,
    /// Pre-image budgets.
    pub budgets: Budgets,
    /// Default repository path.
    pub repository: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            snarf_size: settings::DEFAULT_SNARF_SIZE,
            budgets: Budgets::default(),
            repository: None,
        }
    }
}

/// Persistent bookkeeping in `state/store.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoreMeta {
    store_id: String,
    session: u64,
    volumes: Vec<VolumeRecord>,
    /// Logical sizes of volumes whose backing file is longer (data past the end kept for
    /// a snapshot); applied on open so a crash never exposes those bytes.
    #[serde(default)]
    logical_sizes: BTreeMap<VolumeId, u64>,
    /// Named checkpoints: epochs that incremental work measures changes from.
    #[serde(default)]
    checkpoints: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeRecord {
    name: String,
    id: VolumeId,
    tracked_since: u64,
}

/// The answer to "which snarfs changed since this checkpoint", per volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// Stamps are trustworthy from the checkpoint on.
    Valid,
    /// Stamps cannot answer: the store stopped uncleanly, or the volume is younger than the
    /// checkpoint. A backup then reads everything.
    Lost {
        /// Why, in words.
        reason: String,
    },
}

/// An open store. Only one process opens a store at a time (a lock in `run/`).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    settings: Settings,
    _lock: File,
    session: u64,
    /// Whether the previous session ended without a clean close.
    recovered_unclean: bool,
    /// Volumes whose backing file changed while the store was closed (tracking restarted).
    touched: std::collections::BTreeSet<VolumeId>,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    meta: Mutex<StoreMeta>,
    closed: std::sync::atomic::AtomicBool,
}

const META_FILE: &str = "state/store.json";
const OPEN_MARKER: &str = "run/open";
const LOCK_FILE: &str = "run/store.lock";

impl Store {
    /// Creates a new store in `root`, which must not exist or be empty.
    pub fn init(root: &Path, opts: &InitOptions) -> Result<()> {
        settings::check_snarf_size(opts.snarf_size)?;
        if root.exists() {
            let mut entries = std::fs::read_dir(root)
                .map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
            if entries.next().is_some() {
                return Err(Error::NotEmpty {
                    path: root.to_path_buf(),
                });
            }
        }
        for sub in [
            "",
            "volumes",
            "retired",
            "spill",
            "state",
            "state/stamps",
            "run",
        ] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        set_mode(&root.join("run"), 0o700)?;
        set_mode(&root.join("spill"), 0o700)?;
        let meta = StoreMeta {
            store_id: format!("{:016x}{:016x}", random_u64(), random_u64()),
            ..StoreMeta::default()
        };
        save_meta(root, &meta)?;
        let mut s = Settings::new(opts.snarf_size)?;
        s.preimages = opts.budgets.clone();
        s.repository = opts.repository.clone();
        s.save(root)
    }

    /// Opens a store for exclusive use; `holder` says who holds it (shown to anyone else
    /// who tries). Starts a new session and notes whether the last one ended cleanly.
    pub fn open(root: &Path, holder: &str) -> Result<Store> {
        let settings = Settings::load(root)?;
        let lock = lock_store(root, holder)?;
        let mut meta = load_meta(root)?;
        let marker = root.join(OPEN_MARKER);
        let recovered_unclean = marker.exists();
        meta.session += 1;
        let session = meta.session;
        let first_epoch = session << 32;
        let shift = settings.snarf_size.trailing_zeros();

        // Reconcile the catalogue with the files actually present: a crash between a
        // file operation and its catalogue update must not lose a volume.
        let vol_dir = root.join("volumes");
        let mut present: BTreeMap<String, ()> = BTreeMap::new();
        for entry in std::fs::read_dir(&vol_dir)
            .map_err(|e| Error::io(format!("reading {}", vol_dir.display()), e))?
        {
            let entry =
                entry.map_err(|e| Error::io(format!("reading {}", vol_dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false)
                && validate_name("volume", &name).is_ok()
            {
                present.insert(name, ());
            }
        }
        let mut records: Vec<VolumeRecord> = meta
            .volumes
            .drain(..)
            .filter(|r| {
                let keep = present.contains_key(&r.name);
                if !keep {
                    log::warn!(
                        "volume \"{}\" is in the catalogue but its file is gone; dropping it",
                        r.name
                    );
                }
                keep
            })
            .collect();
        for name in present.keys() {
            if !records.iter().any(|r| &r.name == name) {
                log::info!(
                    "adopting volume file \"{name}\" found in {}",
                    vol_dir.display()
                );
                records.push(VolumeRecord {
                    name: name.clone(),
                    id: random_u64(),
                    tracked_since: first_epoch,
                });
            }
        }

        let mut volumes = BTreeMap::new();
        let mut touched = std::collections::BTreeSet::new();
        for rec in &mut records {
            let stamps_path = stamps_path(root, rec.id);
            let path = vol_dir.join(&rec.name);
            let mut stamps = if recovered_unclean {
                None
            } else {
                load_stamps(&stamps_path)
            };
            if stamps.is_some() && changed_after(&path, &stamps_path) {
                // Written by something other than snarf while the store was closed: the
                // saved stamps do not know which snarfs, so nothing older can be answered.
                log::warn!(
                    "volume file {} changed while the store was not open; changed-snarf tracking for it starts now, its next backup reads it in full",
                    path.display()
                );
                stamps = None;
                touched.insert(rec.id);
            }
            if stamps.is_none() {
                // Without saved stamps nothing older than now can be answered.
                rec.tracked_since = rec.tracked_since.max(first_epoch);
            }
            let _ = std::fs::remove_file(&stamps_path);
            let file = open_backing(&path, false)?;
            if let Some(&size) = meta.logical_sizes.get(&rec.id) {
                file.set_len(size).map_err(|e| {
                    Error::io(format!("trimming volume file {}", path.display()), e)
                })?;
            }
            let vol = Volume::new(rec.id, shift, file, rec.tracked_since, stamps)?;
            volumes.insert(rec.name.clone(), Arc::new(vol));
        }
        meta.volumes = records;
        meta.logical_sizes.clear();
        if recovered_unclean {
            log::warn!(
                "store {} was not closed cleanly last time; changed-snarf tracking is lost, the next backup of each volume reads it in full",
                root.display()
            );
        }
        for sub in ["retired", "spill"] {
            clear_dir(&root.join(sub))?;
        }
        // The marker and the new session number are durable before any write is served.
        save_meta(root, &meta)?;
        files::write_atomic(&marker, format!("{}\n", std::process::id()).as_bytes())?;

        Ok(Store {
            root: root.to_path_buf(),
            settings,
            _lock: lock,
            session,
            recovered_unclean,
            touched,
            volumes: RwLock::new(volumes),
            meta: Mutex::new(meta),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The settings as loaded.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store's unique id (stable for its lifetime).
    pub fn store_id(&self) -> String {
        self.meta.lock().store_id.clone()
    }

    /// Size of one snarf in bytes.
    pub fn snarf_size(&self) -> u64 {
        self.settings.snarf_size
    }

    /// The first epoch of this session; every epoch used from now on is at least this.
    pub fn first_epoch(&self) -> u64 {
        self.session << 32
    }

    /// Whether the previous session ended without a clean close (tracking lost).
    pub fn recovered_unclean(&self) -> bool {
        self.recovered_unclean
    }

    /// Directory for pre-image spill files.
    pub fn spill_dir(&self) -> PathBuf {
        self.root.join("spill")
    }

    /// Directory for sockets, the process registry and markers.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The live volumes by name.
    pub fn volumes(&self) -> BTreeMap<String, Arc<Volume>> {
        self.volumes.read().clone()
    }

    /// Names of the live volumes, sorted.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.read().keys().cloned().collect()
    }

    /// The live volume called `name`.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.volumes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchVolume(name.to_string()))
    }

    /// Creates an empty volume of `size` bytes; its snarfs are new as of `epoch`.
    pub fn create_volume(&self, name: &str, size: u64, epoch: u64) -> Result<Arc<Volume>> {
        validate_name("volume", name)?;
        let mut map = self.volumes.write();
        if map.contains_key(name) {
            return Err(Error::VolumeExists(name.to_string()));
        }
        let path = self.root.join("volumes").join(name);
        let file = open_backing(&path, true).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Error::VolumeExists(name.to_string())
            }
            e => e,
        })?;
        let id = random_u64();
        let vol = Volume::new(id, self.snarf_size().trailing_zeros(), file, epoch, None)?;
        if size > 0 {
            let mut st = vol.write_state();
            vol.set_len(&mut st, size, epoch)?;
            st.set_size(size);
        }
        let vol = Arc::new(vol);
        map.insert(name.to_string(), vol.clone());
        let mut meta = self.meta.lock();
        meta.volumes.push(VolumeRecord {
            name: name.to_string(),
            id,
            tracked_since: epoch,
        });
        if let Err(e) = save_meta(&self.root, &meta) {
            meta.volumes.retain(|r| r.id != id);
            map.remove(name);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(vol)
    }

    /// Renames a volume; an existing volume at `to` is deleted first, as rename(2) does.
    /// Returns the volume that was replaced, if any.
    pub fn rename_volume(&self, from: &str, to: &str) -> Result<Option<Arc<Volume>>> {
        validate_name("volume", to)?;
        let mut map = self.volumes.write();
        let vol = map
            .get(from)
            .cloned()
            .ok_or_else(|| Error::NoSuchVolume(from.to_string()))?;
        if from == to {
            return Ok(None);
        }
        let replaced = match map.get(to).cloned() {
            Some(old) => {
                self.retire_file(to, &old)?;
                map.remove(to);
                Some(old)
            }
            None => None,
        };
        let dir = self.root.join("volumes");
        std::fs::rename(dir.join(from), dir.join(to))
            .map_err(|e| Error::io(format!("renaming volume \"{from}\" to \"{to}\""), e))?;
        map.remove(from);
        map.insert(to.to_string(), vol.clone());
        vol.touch_status();
        let mut meta = self.meta.lock();
        if let Some(old) = &replaced {
            meta.volumes.retain(|r| r.id != old.id());
            meta.logical_sizes.remove(&old.id());
        }
        if let Some(rec) = meta.volumes.iter_mut().find(|r| r.id == vol.id()) {
            rec.name = to.to_string();
        }
        save_meta(&self.root, &meta)?;
        Ok(replaced)
    }

    /// Deletes a volume from the live namespace. Its data stays readable by snapshots and
    /// open handles that hold it and is removed when the last one lets go.
    pub fn delete_volume(&self, name: &str) -> Result<Arc<Volume>> {
        let mut map = self.volumes.write();
        let vol = map
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchVolume(name.to_string()))?;
        self.retire_file(name, &vol)?;
        map.remove(name);
        let mut meta = self.meta.lock();
        meta.volumes.retain(|r| r.id != vol.id());
        meta.logical_sizes.remove(&vol.id());
        save_meta(&self.root, &meta)?;
        Ok(vol)
    }

    fn retire_file(&self, name: &str, vol: &Volume) -> Result<()> {
        let to = self.root.join("retired").join(format!("{:016x}", vol.id()));
        std::fs::rename(self.root.join("volumes").join(name), &to)
            .map_err(|e| Error::io(format!("deleting volume \"{name}\""), e))?;
        vol.retire(to);
        Ok(())
    }

    /// Records (or clears, with `None`) a volume's logical size while its backing file is
    /// longer, durably, before the caller goes on.
    pub fn set_logical_size(&self, id: VolumeId, size: Option<u64>) -> Result<()> {
        let mut meta = self.meta.lock();
        let changed = match size {
            Some(size) => meta.logical_sizes.insert(id, size) != Some(size),
            None => meta.logical_sizes.remove(&id).is_some(),
        };
        if changed {
            save_meta(&self.root, &meta)?;
        }
        Ok(())
    }

    /// Records a named checkpoint at `epoch` for changed-snarf tracking.
    pub fn set_checkpoint(&self, name: &str, epoch: u64) -> Result<()> {
        let mut meta = self.meta.lock();
        meta.checkpoints.insert(name.to_string(), epoch);
        save_meta(&self.root, &meta)
    }

    /// The epoch of a named checkpoint.
    pub fn checkpoint(&self, name: &str) -> Option<u64> {
        self.meta.lock().checkpoints.get(name).copied()
    }

    /// Removes a named checkpoint.
    pub fn remove_checkpoint(&self, name: &str) -> Result<()> {
        let mut meta = self.meta.lock();
        if meta.checkpoints.remove(name).is_some() {
            save_meta(&self.root, &meta)?;
        }
        Ok(())
    }

    /// Whether `vol`'s stamps can say which snarfs changed since `epoch`.
    pub fn tracking(&self, vol: &Volume, epoch: u64) -> Tracking {
        if epoch >= vol.tracked_since() {
            return Tracking::Valid;
        }
        let reason = if self.recovered_unclean && vol.tracked_since() == self.first_epoch() {
            "the store was not closed cleanly, so changed-snarf tracking was lost".to_string()
        } else if self.touched.contains(&vol.id()) && vol.tracked_since() == self.first_epoch() {
            "the volume file was changed outside snarf while the store was closed, so changed-snarf tracking was lost".to_string()
        } else {
            "changed-snarf tracking for this volume starts after that checkpoint".to_string()
        };
        Tracking::Lost { reason }
    }

    /// Flushes all volumes to stable storage.
    pub fn sync_all(&self) -> Result<()> {
        for vol in self.volumes.read().values() {
            vol.sync_data()?;
        }
        Ok(())
    }

    /// Closes the store cleanly: data synced, stamps saved, then the open marker removed,
    /// so the next open trusts the tracking. Nothing may be written after this; a second
    /// call does nothing. The lock is held until the store is dropped.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        self.sync_all()?;
        let map = self.volumes.read();
        for vol in map.values() {
            let stamps = vol.stamps_snapshot();
            let mut bytes = Vec::with_capacity(stamps.len() * 8);
            for s in stamps {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            files::write_atomic(&stamps_path(&self.root, vol.id()), &bytes)?;
        }
        save_meta(&self.root, &self.meta.lock())?;
        let marker = self.root.join(OPEN_MARKER);
        std::fs::remove_file(&marker)
            .map_err(|e| Error::io(format!("removing {}", marker.display()), e))?;
        files::sync_dir(&self.root.join("run"))
            .map_err(|e| Error::io("syncing the store's run folder", e))?;
        Ok(())
    }
}

fn stamps_path(root: &Path, id: VolumeId) -> PathBuf {
    root.join("state/stamps").join(format!("{id:016x}"))
}

/// Whether `file` was modified after `stamps` was written (by something other than snarf,
/// since snarf saves stamps after its last write).
fn changed_after(file: &Path, stamps: &Path) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(file), mtime(stamps)) {
        (Some(f), Some(s)) => f > s,
        _ => true,
    }
}

fn load_stamps(path: &Path) -> Option<Vec<u64>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() % 8 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
    )
}

fn load_meta(root: &Path) -> Result<StoreMeta> {
    let path = root.join(META_FILE);
    let text =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| Error::BadSettings {
        path,
        why: e.to_string(),
    })
}

fn save_meta(root: &Path, meta: &StoreMeta) -> Result<()> {
    let text = serde_json::to_vec_pretty(meta).map_err(|e| Error::BadSettings {
        path: root.join(META_FILE),
        why: e.to_string(),
    })?;
    files::write_atomic(&root.join(META_FILE), &text)
}

fn open_backing(path: &Path, create: bool) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).mode(0o600);
    if create {
        opts.create_new(true);
    }
    opts.open(path)
        .map_err(|e| Error::io(format!("opening volume file {}", path.display()), e))
}

fn lock_store(root: &Path, holder: &str) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let mut who = String::new();
        let _ = file.read_to_string(&mut who);
        let who = who.trim();
        return Err(Error::Busy {
            path: root.to_path_buf(),
            holder: if who.is_empty() {
                "another process".to_string()
            } else {
                who.to_string()
            },
        });
    }
    let text = format!("pid {} ({holder})\n", std::process::id());
    file.set_len(0)
        .and_then(|_| std::os::unix::fs::FileExt::write_all_at(&file, text.as_bytes(), 0))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(file)
}

fn clear_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
        }
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting permissions of {}", path.display()), e))
}

/// A random 64-bit number from the kernel, for ids that must not collide.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom cannot fail for 8 bytes once the pool is ready; fall back to the
        // clock and pid rather than panicking.
        let t = volume::now_ns() as u64;
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests;
