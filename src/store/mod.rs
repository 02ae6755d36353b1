//! The store: a directory of named volumes split into fixed-size snarfs, with the settings,
//! pre-image space and run folder around them, and changed-snarf tracking that survives a
//! clean close (exact stamps) and an unclean one (the write-intent bitmaps, [`intent`]).
//!
//! Layout of a store directory:
//!
//! ```text
//! snarf.toml          settings (format version, snarf size, budgets, default snapshot kind)
//! volumes/NAME        one sparse backing file per live volume
//! retired/ID          deleted volumes still held by a snapshot or an open file (kept
//!                     across restarts while a persistent snapshot may hold them)
//! cow/                the snapshot engine's: pre-images on disk, persistent snapshots
//! state/store.json    volume ids, tracking checkpoints, session counter, deleted volumes
//! state/stamps/ID     per-snarf last-write epochs, saved on clean close
//! state/intent/ID     per-volume write-intent bitmap (regions written since the last backup)
//! state/sessions      the sessions this copy of the store lived through (see `lineage`)
//! run/                lock file, open marker, sockets, process registry
//! ```
//!
//! Epochs: every open of the store is a new *session*, and the epochs of session S are
//! `S << 32` and up, so an epoch from an earlier session (say, recorded in a backup) is
//! always older than any epoch of this one.

pub mod bitpage;
pub mod files;
pub mod intent;
pub mod iostats;
pub mod lineage;
pub mod name;
pub mod restored;
pub mod settings;
pub mod stamps;
pub mod volume;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::sys::lock;

pub use iostats::{IoCounts, IoStats};
pub use name::validate_name;
pub use settings::{Budgets, Durability, Settings};
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
    /// A volume size past what the engine serves.
    #[error("a volume of {size} bytes is larger than the {max} bytes this store serves (its stamps would not fit in memory); use a smaller size, or a store with larger snarfs")]
    TooLarge {
        /// The size asked for or found.
        size: u64,
        /// The largest size served.
        max: u64,
    },
    /// Memory for bookkeeping sized by a volume could not be had.
    #[error("not enough memory for {what} ({bytes} bytes); free memory or use a smaller volume")]
    OutOfMemory {
        /// What the memory was for.
        what: String,
        /// How much was asked for.
        bytes: u64,
    },
    /// The store's own state file holds values no store can have.
    #[error("the store state file {path} is damaged: {why}; restore it from a copy, or move it aside (the volumes are adopted again and their next backups read them in full)")]
    BadState {
        /// Path of the state file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A snarf of a volume under live restore is not local yet and its backup could not
    /// be read.
    #[error("snarf {snarf} of volume {volume:016x} is not restored yet and could not be read from backup {backup} in {repository}; reads of it fail until the repository answers again (writes still work, and the restore goes on by itself)")]
    Fetch {
        /// The volume.
        volume: VolumeId,
        /// The snarf.
        snarf: u64,
        /// The backup restored from.
        backup: String,
        /// Its repository, as the user wrote it.
        repository: String,
        /// Why the repository did not give it.
        #[source]
        source: restored::FetchError,
    },
    /// A restored bitmap that cannot be trusted.
    #[error("the restored bitmap {path} {why}; snarf cannot tell which snarfs of its volume were restored: delete the volume and restore it again, or move the file aside to serve the volume as it is")]
    RestoreDamaged {
        /// The bitmap file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A change a volume under live restore cannot take yet.
    #[error("volume {volume:016x} is being restored live from backup {backup}; it cannot shrink until the restore has finished (see control/jobs)")]
    Restoring {
        /// The volume.
        volume: VolumeId,
        /// The backup restored from.
        backup: String,
    },
    /// An I/O error, with what was being done.
    #[error("{context}")]
    Io {
        /// What snarf was doing.
        context: String,
        /// The OS error.
        #[source]
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
    /// What a snapshot taken without saying is.
    pub snapshots: Durability,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            snarf_size: settings::DEFAULT_SNARF_SIZE,
            budgets: Budgets::default(),
            repository: None,
            snapshots: Durability::default(),
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
    /// Deleted volumes whose files are kept in `retired/`.
    #[serde(default)]
    retired: Vec<RetiredRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeRecord {
    name: String,
    id: VolumeId,
    tracked_since: u64,
    /// Set after stamps were lost (an unclean stop, damaged stamps): epochs before this
    /// may have had writes the stamps do not show (see [`Volume::uncertain_before`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertain_before: Option<u64>,
}

/// A deleted volume whose file is kept in `retired/` while a snapshot may hold it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetiredRecord {
    id: VolumeId,
    tracked_since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertain_before: Option<u64>,
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
    /// The sessions this copy of the store lived through, this one last.
    lineage: lineage::Lineage,
    /// Whether the previous session ended without a clean close.
    recovered_unclean: bool,
    /// Volumes whose tracking restarted at this open, with why (file changed while the
    /// store was closed, damaged stamps).
    lost: BTreeMap<VolumeId, String>,
    /// Volumes whose file was changed by something else while the store was closed.
    changed_behind: std::collections::BTreeSet<VolumeId>,
    /// Deleted volumes found at open, until the engine takes them.
    retired: Mutex<BTreeMap<VolumeId, Arc<Volume>>>,
    /// Volumes deleted while open (or taken by the engine), with their records, for a
    /// clean close to save the stamps of those still held.
    held_retired: Mutex<Vec<(RetiredRecord, std::sync::Weak<Volume>)>>,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    meta: Mutex<StoreMeta>,
    /// Set while `meta` holds a change that could not be written yet (see
    /// [`Store::flush_meta`]).
    meta_dirty: std::sync::atomic::AtomicBool,
    closed: std::sync::atomic::AtomicBool,
}

const META_FILE: &str = "state/store.json";
/// Sessions are numbered below this, so `session << 32` and every epoch of the session
/// fit a u64 and grow with the session.
const MAX_SESSION: u64 = (1 << 32) - 2;
/// Largest `state/store.json` read.
const MAX_META_BYTES: u64 = 64 << 20;
const OPEN_MARKER: &str = "run/open";
/// Folder of the volumes' write-intent bitmaps.
const INTENT_DIR: &str = "state/intent";
/// Folder of the restored bitmaps of volumes under live restore.
const RESTORE_DIR: &str = "state/restore";
/// Folder of the durable pre-image store and the persistent snapshots' table.
pub const COW_DIR: &str = "cow";
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
        let missing: Vec<PathBuf> = root
            .ancestors()
            .take_while(|a| !a.exists())
            .map(Path::to_path_buf)
            .collect();
        for sub in [
            "",
            "volumes",
            "retired",
            COW_DIR,
            "state",
            "state/stamps",
            INTENT_DIR,
            "run",
        ] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        // Every folder made here is durable by name before the settings file, written last,
        // makes the directory a store: a power cut leaves a whole store or none.
        let state = root.join("state");
        let parents = missing
            .iter()
            .rev()
            .filter_map(|d| d.parent())
            .chain([root, state.as_path()]);
        for dir in parents {
            files::sync_dir(dir)
                .map_err(|e| Error::io(format!("syncing folder {}", dir.display()), e))?;
        }
        set_mode(&root.join("run"), 0o700)?;
        set_mode(&root.join(COW_DIR), 0o700)?;
        let meta = StoreMeta {
            store_id: new_store_id(),
            ..StoreMeta::default()
        };
        save_meta(root, &meta)?;
        let mut s = Settings::new(opts.snarf_size)?;
        s.preimages = opts.budgets.clone();
        s.repository = opts.repository.clone();
        s.snapshots = opts.snapshots;
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
        // The marker goes down before anything of the last session is consumed (its stamps
        // are removed as each volume opens): an open cut short is an unclean stop too, so
        // the next one recovers from the write-intent bitmaps instead of missing stamps.
        if !recovered_unclean {
            files::write_atomic(&marker, format!("{}\n", std::process::id()).as_bytes())?;
        }
        if meta.session >= MAX_SESSION {
            return Err(Error::BadState {
                path: root.join(META_FILE),
                why: format!(
                    "its session counter {} is past the largest a store can reach ({MAX_SESSION})",
                    meta.session
                ),
            });
        }
        meta.session += 1;
        let session = meta.session;
        let first_epoch = session << 32;
        repair_meta(&mut meta, first_epoch);

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
                    uncertain_before: None,
                });
            }
        }

        let intent_dir = root.join(INTENT_DIR);
        crate::sys::durable::ensure_dir(&intent_dir, 0o700)?;
        let restore_dir = root.join(RESTORE_DIR);
        crate::sys::durable::ensure_dir(&restore_dir, 0o700)?;
        let ctx = OpenCtx {
            root,
            settings: &settings,
            unclean: recovered_unclean,
            first_epoch,
            session,
        };
        let mut volumes = BTreeMap::new();
        let mut lost = BTreeMap::new();
        let mut changed_behind = std::collections::BTreeSet::new();
        for rec in &mut records {
            let path = vol_dir.join(&rec.name);
            let vol = ctx.open_volume(
                rec.id,
                &rec.name,
                &path,
                &mut rec.tracked_since,
                &mut rec.uncertain_before,
                meta.logical_sizes.get(&rec.id).copied(),
                &mut lost,
                &mut changed_behind,
            )?;
            volumes.insert(rec.name.clone(), Arc::new(vol));
        }
        // Deleted volumes a persistent snapshot may still hold: loaded, not listed; the
        // engine keeps those it needs, and the others are removed when let go.
        let mut retired = BTreeMap::new();
        let retired_dir = root.join("retired");
        std::fs::create_dir_all(&retired_dir)
            .map_err(|e| Error::io(format!("creating {}", retired_dir.display()), e))?;
        let mut kept_retired = Vec::new();
        for entry in std::fs::read_dir(&retired_dir)
            .map_err(|e| Error::io(format!("reading {}", retired_dir.display()), e))?
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = u64::from_str_radix(&name, 16)
                .ok()
                .filter(|_| name.len() == 16)
                .and_then(|id| meta.retired.iter().find(|r| r.id == id).cloned());
            let Some(mut rec) = known else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let vol = ctx.open_volume(
                rec.id,
                &format!("(deleted) {name}"),
                &path,
                &mut rec.tracked_since,
                &mut rec.uncertain_before,
                meta.logical_sizes.get(&rec.id).copied(),
                &mut lost,
                &mut changed_behind,
            )?;
            vol.retire(path);
            // Kept until an engine says whether a snapshot holds it ([`Store::take_retired`]).
            vol.hold();
            retired.insert(rec.id, Arc::new(vol));
            kept_retired.push(rec);
        }
        meta.retired = kept_retired;
        meta.volumes = records;
        // A logical size is kept while the file is longer (a persistent snapshot may need
        // the bytes past it); the engine gives the space back once nothing needs it.
        let longer: std::collections::BTreeSet<VolumeId> = volumes
            .values()
            .chain(retired.values())
            .filter(|v| v.read_state().phys_len() > v.size())
            .map(|v| v.id())
            .collect();
        meta.logical_sizes.retain(|id, _| longer.contains(id));
        if recovered_unclean {
            let kept = volumes
                .values()
                .filter(|v| v.intent().is_some_and(|i| i.recovered().1 != 0))
                .count();
            log::warn!(
                "store {} was not closed cleanly last time; changed-snarf tracking of {kept} of {} volumes was recovered from their write-intent bitmaps (their next backups read the regions marked dirty), the others' next backups read them in full",
                root.display(),
                volumes.len()
            );
        }
        // Bitmaps of volumes that are no more.
        let known: std::collections::BTreeSet<String> = volumes
            .values()
            .chain(retired.values())
            .map(|v| format!("{:016x}", v.id()))
            .collect();
        crate::sys::durable::remove_leftovers(&intent_dir, |name| !known.contains(name))?;
        crate::sys::durable::remove_leftovers(&restore_dir, |name| !known.contains(name))?;
        // Spill files of stores before the durable pre-image store.
        let spill = root.join("spill");
        if spill.exists() {
            clear_dir(&spill)?;
        }
        let cow = root.join(COW_DIR);
        if !cow.exists() {
            std::fs::create_dir_all(&cow)
                .map_err(|e| Error::io(format!("creating {}", cow.display()), e))?;
            set_mode(&cow, 0o700)?;
            files::sync_dir(root).map_err(|e| Error::io("syncing the store folder", e))?;
        }
        // The session's id, the marker and the new session number are durable before any
        // write is served.
        let lineage = lineage::Lineage::start(root, session)?;
        save_meta(root, &meta)?;

        Ok(Store {
            root: root.to_path_buf(),
            settings,
            _lock: lock,
            session,
            lineage,
            recovered_unclean,
            lost,
            changed_behind,
            retired: Mutex::new(retired),
            held_retired: Mutex::new(Vec::new()),
            volumes: RwLock::new(volumes),
            meta: Mutex::new(meta),
            meta_dirty: std::sync::atomic::AtomicBool::new(false),
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

    /// The random id of this session, recorded by backups so the next one can tell whether
    /// this store lived through the session its base was taken in.
    pub fn session_id(&self) -> &str {
        self.lineage.current_id()
    }

    /// Whether this copy of the store lived through the session of `epoch` with session id
    /// `id`, so its stamps can say what changed since; if not, why not.
    pub fn lived_through(&self, epoch: u64, id: &str) -> Result<(), String> {
        self.lineage.lived_through(epoch >> 32, id)
    }

    /// The first epoch of this session; every epoch used from now on is at least this.
    pub fn first_epoch(&self) -> u64 {
        self.session << 32
    }

    /// Whether the previous session ended without a clean close (tracking lost).
    pub fn recovered_unclean(&self) -> bool {
        self.recovered_unclean
    }

    /// Directory of the pre-image store and the persistent snapshots' table.
    pub fn cow_dir(&self) -> PathBuf {
        self.root.join(COW_DIR)
    }

    /// Deleted volumes found at open that a snapshot may still hold; the store keeps no
    /// reference to them after this, so those nobody keeps are removed.
    pub fn take_retired(&self) -> BTreeMap<VolumeId, Arc<Volume>> {
        let taken = std::mem::take(&mut *self.retired.lock());
        for vol in taken.values() {
            // The caller holds what it needs from here on.
            vol.let_go();
        }
        taken
    }

    /// Whether volume `id`'s file was changed by something other than snarf while the
    /// store was closed (a persistent snapshot of it no longer reads what it froze).
    pub fn changed_behind(&self, id: VolumeId) -> bool {
        self.changed_behind.contains(&id)
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
        let max = volume::max_volume_size(self.snarf_size().trailing_zeros());
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
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
        // The file's name must be durable before the catalogue names it, or a power cut
        // loses the volume with every write an fsync acknowledged.
        let made = files::sync_dir(&self.root.join("volumes"))
            .map_err(|e| Error::io(format!("creating volume \"{name}\""), e))
            .and_then(|_| Volume::new(id, self.snarf_size().trailing_zeros(), file, epoch, 0, None))
            .and_then(|vol| {
                vol.attach_intent(intent::Intent::create(
                    intent_path(&self.root, id),
                    id,
                    vol.snarf_shift(),
                    self.session,
                    epoch,
                    0,
                    &[],
                    Vec::new(),
                    0,
                )?);
                if size > 0 {
                    let mut st = vol.write_state();
                    vol.set_len(&mut st, size, epoch)?;
                    st.set_size(size);
                }
                Ok(vol)
            });
        let vol = match made {
            Ok(vol) => Arc::new(vol),
            Err(e) => {
                // Nothing half-made is left for the next open to adopt.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        map.insert(name.to_string(), vol.clone());
        let mut meta = self.meta.lock();
        meta.volumes.push(VolumeRecord {
            name: name.to_string(),
            id,
            tracked_since: epoch,
            uncertain_before: None,
        });
        if let Err(e) = self.persist(&meta) {
            meta.volumes.retain(|r| r.id != id);
            map.remove(name);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(vol)
    }

    /// Creates volume `name` as the live restore of `origin`: empty, its restored bitmap
    /// (every snarf missing) durable, then grown to the backup's size, so a cut leaves an
    /// empty volume or one whose reads fetch from the backup, never zeros for data.
    pub fn create_restoring(
        &self,
        name: &str,
        origin: restored::Origin,
        epoch: u64,
    ) -> Result<Arc<Volume>> {
        let max = volume::max_volume_size(self.snarf_size().trailing_zeros());
        if origin.size > max {
            return Err(Error::TooLarge {
                size: origin.size,
                max,
            });
        }
        let size = origin.size;
        let vol = self.create_volume(name, 0, epoch)?;
        let made = restored::Restore::create(
            restore_path(&self.root, vol.id()),
            vol.id(),
            vol.snarf_shift(),
            origin,
        )
        .and_then(|r| {
            vol.attach_restore(r);
            let mut st = vol.write_state();
            vol.set_len(&mut st, size, epoch)?;
            st.set_size(size);
            Ok(())
        });
        if let Err(e) = made {
            let _ = self.delete_volume(name);
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
            .and_then(|_| files::sync_dir(&dir))
            .map_err(|e| Error::io(format!("renaming volume \"{from}\" to \"{to}\""), e))?;
        map.remove(from);
        map.insert(to.to_string(), vol.clone());
        vol.touch_status();
        let mut meta = self.meta.lock();
        if let Some(old) = &replaced {
            self.note_retired(&mut meta, old);
        }
        if let Some(rec) = meta.volumes.iter_mut().find(|r| r.id == vol.id()) {
            rec.name = to.to_string();
        }
        self.persist(&meta)?;
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
        self.note_retired(&mut meta, &vol);
        self.persist(&meta)?;
        Ok(vol)
    }

    /// Moves a deleted volume's record to the retired ones, so its file outlives a restart
    /// while a snapshot may hold it (its logical size record stays with it).
    fn note_retired(&self, meta: &mut StoreMeta, vol: &Arc<Volume>) {
        let rec = meta.volumes.iter().find(|r| r.id == vol.id()).cloned();
        meta.volumes.retain(|r| r.id != vol.id());
        let retired = RetiredRecord {
            id: vol.id(),
            tracked_since: rec
                .as_ref()
                .map_or(vol.tracked_since(), |r| r.tracked_since),
            uncertain_before: rec.and_then(|r| r.uncertain_before),
        };
        meta.retired.retain(|r| r.id != vol.id());
        meta.retired.push(retired.clone());
        self.held_retired
            .lock()
            .push((retired, Arc::downgrade(vol)));
    }

    /// Keeps the records of deleted volumes `vols` (taken with [`Store::take_retired`])
    /// while they are held, so a clean close saves their stamps.
    pub fn hold_retired(&self, vols: &[Arc<Volume>]) {
        let meta = self.meta.lock();
        let mut held = self.held_retired.lock();
        for vol in vols {
            if let Some(rec) = meta.retired.iter().find(|r| r.id == vol.id()) {
                held.push((rec.clone(), Arc::downgrade(vol)));
            }
        }
    }

    fn retire_file(&self, name: &str, vol: &Volume) -> Result<()> {
        let to = self.root.join("retired").join(format!("{:016x}", vol.id()));
        std::fs::rename(self.root.join("volumes").join(name), &to)
            .and_then(|_| files::sync_dir(&self.root.join("retired")))
            .and_then(|_| files::sync_dir(&self.root.join("volumes")))
            .map_err(|e| Error::io(format!("deleting volume \"{name}\""), e))?;
        vol.retire(to);
        Ok(())
    }

    /// Writes the catalogue; remembers whether the latest change is still only in memory.
    fn persist(&self, meta: &StoreMeta) -> Result<()> {
        let r = save_meta(&self.root, meta);
        self.meta_dirty
            .store(r.is_err(), std::sync::atomic::Ordering::Release);
        r
    }

    /// Writes a catalogue change that could not be written when it was made (a full disk),
    /// if there is one; fsync calls this so it reports what is not durable yet.
    pub fn flush_meta(&self) -> Result<()> {
        if !self.meta_dirty.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let meta = self.meta.lock();
        self.persist(&meta)
    }

    /// Records (or clears, with `None`) a volume's logical size while its backing file is
    /// longer, durably, before the caller goes on. If that fails the change is kept in
    /// memory and written by the next [`Store::flush_meta`] or catalogue change. The caller
    /// holds the volume's state lock.
    pub fn set_logical_size(&self, vol: &Volume, size: Option<u64>) -> Result<()> {
        let id = vol.id();
        let old = self.meta.lock().logical_sizes.get(&id).copied();
        // The record hides bytes past the logical end; it may only change once the file's
        // new length (or the zeros now there) is durable, or a power cut brings those bytes
        // back.
        let synced = if old.is_some() && old != size {
            vol.sync_data()
        } else {
            Ok(())
        };
        let mut meta = self.meta.lock();
        let changed = match size {
            Some(size) => meta.logical_sizes.insert(id, size) != Some(size),
            None => meta.logical_sizes.remove(&id).is_some(),
        };
        if synced.is_err() {
            // Pending: the next fsync of the volume syncs its data first, then writes it.
            if changed {
                self.meta_dirty
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            return synced;
        }
        if changed || self.meta_dirty.load(std::sync::atomic::Ordering::Acquire) {
            self.persist(&meta)?;
        }
        Ok(())
    }

    /// Records a named checkpoint at `epoch` for changed-snarf tracking.
    pub fn set_checkpoint(&self, name: &str, epoch: u64) -> Result<()> {
        let mut meta = self.meta.lock();
        meta.checkpoints.insert(name.to_string(), epoch);
        self.persist(&meta)
    }

    /// The epoch of a named checkpoint.
    pub fn checkpoint(&self, name: &str) -> Option<u64> {
        self.meta.lock().checkpoints.get(name).copied()
    }

    /// Removes a named checkpoint.
    pub fn remove_checkpoint(&self, name: &str) -> Result<()> {
        let mut meta = self.meta.lock();
        if meta.checkpoints.remove(name).is_some() {
            self.persist(&meta)?;
        }
        Ok(())
    }

    /// Whether `vol`'s stamps (and, after an unclean stop, its recovered write-intent
    /// bitmap) can say which snarfs changed since `epoch`.
    pub fn tracking(&self, vol: &Volume, epoch: u64) -> Tracking {
        if epoch >= vol.tracked_since() {
            return Tracking::Valid;
        }
        let reason = if let Some(reason) = self
            .lost
            .get(&vol.id())
            .filter(|_| vol.tracked_since() == self.first_epoch())
        {
            reason.clone()
        } else if self.recovered_unclean && vol.tracked_since() == self.first_epoch() {
            "the store was not closed cleanly, so changed-snarf tracking was lost".to_string()
        } else if self.recovered_unclean
            && vol
                .intent()
                .is_some_and(|i| i.recovered().1 == self.first_epoch())
        {
            "the store was not closed cleanly, and its write-intent bitmap covers only the changes since the volume's latest backup (not since this older one)".to_string()
        } else {
            "changed-snarf tracking for this volume starts after that checkpoint".to_string()
        };
        Tracking::Lost { reason }
    }

    /// A backup of `vol` as of `epoch` was committed: its write-intent bitmap's checkpoint
    /// moves there (durably), then the regions nothing was written in since are cleared,
    /// lazily. A failure only leaves more regions dirty.
    pub fn backup_committed(&self, vol: &Volume, epoch: u64) {
        let Some(i) = vol.intent() else { return };
        match i.advance(epoch) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::warn!(
                    "the write-intent bitmap's checkpoint could not be moved: {}",
                    crate::chain::ErrorChain::chain(&e)
                );
                return;
            }
        }
        // No write into a region is under way while it is looked at.
        let st = vol.write_state();
        let (recovered, at) = i.recovered();
        let span = intent::REGION_SNARFS;
        let cleared = i.clear_unless(|r| {
            st.first_newer(r * span, epoch)
                .is_some_and(|k| k < (r + 1) * span)
                || (epoch < at && recovered.binary_search(&r).is_ok())
        });
        drop(st);
        if cleared > 0 {
            i.write_lazily();
        }
    }

    /// Regions found dirty in the write-intent bitmaps at this open (after an unclean stop).
    pub fn recovered_dirty_regions(&self) -> u64 {
        let vols = self.volumes.read();
        let retired = self.retired.lock();
        vols.values()
            .chain(retired.values())
            .filter_map(|v| v.intent())
            .map(|i| i.recovered().0.len() as u64)
            .sum()
    }

    /// Flushes all volumes to stable storage.
    pub fn sync_all(&self) -> Result<()> {
        for vol in self.volumes.read().values() {
            vol.sync_data()?;
            if let Some(r) = vol.restore() {
                r.sync()?;
            }
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
        // Deleted volumes still held (by a persistent snapshot) keep their file, record and
        // stamps; the others are gone. Those found at open that no engine looked at (the
        // store opened on its own) are kept as they were: only an engine knows whether a
        // snapshot holds them.
        let mut held: Vec<(RetiredRecord, Arc<Volume>)> = self
            .held_retired
            .lock()
            .iter()
            .filter_map(|(rec, weak)| Some((rec.clone(), weak.upgrade()?)))
            .collect();
        {
            let meta = self.meta.lock();
            for (id, vol) in self.retired.lock().iter() {
                if let Some(rec) = meta.retired.iter().find(|r| r.id == *id) {
                    held.push((rec.clone(), vol.clone()));
                }
            }
        }
        let map = self.volumes.read();
        for vol in map.values().chain(held.iter().map(|(_, v)| v)) {
            if vol.unserved().is_some() {
                // No stamps to save: its tracking starts again at the next open.
                continue;
            }
            vol.sync_data()?;
            files::write_atomic_with(&stamps_path(&self.root, vol.id()), |w| vol.write_stamps(w))?;
            if let Some(i) = vol.intent() {
                // The bits cleared since the last commit reach the disk (the stamps are
                // what the next clean open trusts; this only keeps the bitmap tight).
                if let Err(e) = i.flush() {
                    log::warn!("{}", crate::chain::ErrorChain::chain(&e));
                }
            }
        }
        {
            let mut meta = self.meta.lock();
            meta.retired = held.iter().map(|(rec, _)| rec.clone()).collect();
            self.persist(&meta)?;
        }
        let marker = self.root.join(OPEN_MARKER);
        std::fs::remove_file(&marker)
            .map_err(|e| Error::io(format!("removing {}", marker.display()), e))?;
        files::sync_dir(&self.root.join("run"))
            .map_err(|e| Error::io("syncing the store's run folder", e))?;
        Ok(())
    }
}

/// What opening each volume file needs to know about the open of the store.
struct OpenCtx<'a> {
    root: &'a Path,
    settings: &'a Settings,
    /// The last session did not close cleanly.
    unclean: bool,
    first_epoch: u64,
    /// This session's number.
    session: u64,
}

impl OpenCtx<'_> {
    /// Opens one volume file with its saved stamps when they can be trusted; otherwise its
    /// tracking restarts (`tracked_since` moves to now, with the reason in `lost`) and its
    /// stamps become lower bounds (`uncertain_before`). A recorded logical size shorter
    /// than the file is applied without trimming it: a persistent snapshot may need the
    /// bytes past it.
    #[allow(clippy::too_many_arguments)]
    fn open_volume(
        &self,
        id: VolumeId,
        name: &str,
        path: &Path,
        tracked_since: &mut u64,
        uncertain_before: &mut Option<u64>,
        logical: Option<u64>,
        lost: &mut BTreeMap<VolumeId, String>,
        changed_behind: &mut std::collections::BTreeSet<VolumeId>,
    ) -> Result<Volume> {
        let stamps_path = stamps_path(self.root, id);
        let shift = self.settings.snarf_size.trailing_zeros();
        let file = open_backing(path, false)?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading attributes of {}", path.display()), e))?
            .len();
        let max = volume::max_volume_size(shift);
        let intent_path = intent_path(self.root, id);
        let expect = intent::Expect {
            id,
            snarf_shift: shift,
            file_len,
            last_session: self.session,
        };
        // After an unclean stop the stamps are gone; the write-intent bitmap says which
        // regions may have changed since its checkpoint, if it can be trusted.
        let mut recovered = None;
        let stamps = if file_len > max {
            Err(None)
        } else if self.unclean {
            match intent::load(&intent_path, &expect) {
                Ok(found) => {
                    recovered = Some(found);
                    Err(None)
                }
                Err(why) => {
                    log::warn!(
                        "the store was not closed cleanly and {why}; changed-snarf tracking of volume \"{name}\" starts now, its next backup reads it in full"
                    );
                    Err(Some(format!("the store was not closed cleanly and {why}, so changed-snarf tracking was lost")))
                }
            }
        } else {
            let count = file_len.div_ceil(self.settings.snarf_size);
            match load_stamps(&stamps_path, count, self.first_epoch) {
                Ok(None) => Err(None),
                // Written by something other than snarf while the store was closed: the
                // saved stamps do not know which snarfs, so nothing older can be answered.
                Ok(Some(_)) if changed_after(path, &stamps_path) => {
                    log::warn!(
                        "volume file {} changed while the store was not open; changed-snarf tracking for it starts now, its next backup reads it in full",
                        path.display()
                    );
                    changed_behind.insert(id);
                    Err(Some("the volume file was changed outside snarf while the store was closed, so changed-snarf tracking was lost".to_string()))
                }
                Ok(Some(stamps)) => Ok(stamps),
                Err(why) => {
                    log::warn!(
                        "the saved stamps of volume \"{name}\" ({}) cannot be used: {why}; changed-snarf tracking for it starts now, its next backup reads it in full",
                        stamps_path.display()
                    );
                    Err(Some(format!("its saved changed-snarf stamps could not be used ({why}), so changed-snarf tracking was lost")))
                }
            }
        };
        let (stamps, since) = match (stamps, &recovered) {
            (Ok(stamps), _) => {
                // A clean stop: the bitmap's checkpoint stands (its bits are derived from
                // the stamps again below, exactly); without one, tracking starts where the
                // stamps' does.
                let since = intent::load(&intent_path, &expect)
                    .map_or(*tracked_since, |l| l.since.max(*tracked_since));
                (Some(stamps), since)
            }
            (Err(_), Some(found)) => {
                // Stamps lost, tracking kept: every write since the bitmap's checkpoint is
                // in its dirty regions (their snarfs count as changed), and the stamps from
                // here on are lower bounds for what came before.
                *tracked_since = (*tracked_since).max(found.since);
                *uncertain_before = Some(uncertain_before.unwrap_or(0).max(self.first_epoch));
                (None, found.since)
            }
            (Err(reason), None) => {
                // Without trustworthy stamps nothing older than now can be answered, and
                // the stamps from here on are only lower bounds for what came before.
                *tracked_since = (*tracked_since).max(self.first_epoch);
                *uncertain_before = Some(uncertain_before.unwrap_or(0).max(self.first_epoch));
                if let Some(reason) = reason {
                    lost.insert(id, reason);
                }
                (None, *tracked_since)
            }
        };
        // The regions the bitmap starts with: those the stamps show written since its
        // checkpoint, or those recovered.
        let mut dirty = Vec::new();
        if let Some(stamps) = &stamps {
            let mut from = 0;
            while let Some(k) = stamps.first_newer(from, since) {
                let r = intent::region_of(k);
                dirty.push(r);
                from = (r + 1) << intent::REGION_SHIFT;
            }
        }
        let (recovered, recovered_at) = match recovered {
            Some(found) => (found.dirty, self.first_epoch),
            None => (Vec::new(), 0),
        };
        dirty.extend_from_slice(&recovered);
        dirty.sort_unstable();
        dirty.dedup();
        let _ = std::fs::remove_file(&stamps_path);
        let vol = Volume::new(
            id,
            shift,
            file,
            *tracked_since,
            uncertain_before.unwrap_or(0),
            stamps,
        )?;
        vol.attach_intent(intent::Intent::create(
            intent_path,
            id,
            shift,
            self.session,
            since,
            file_len,
            &dirty,
            recovered,
            recovered_at,
        )?);
        let restore_path = restore_path(self.root, id);
        if restore_path.exists() {
            // A live restore cut short by a stop: it goes on where its bitmap says.
            match restored::Restore::load(restore_path.clone(), id, shift) {
                Ok(r) => vol.attach_restore(r),
                // Only this volume is refused: the others are served as usual.
                Err(e) => {
                    let (path, why) = match e {
                        Error::RestoreDamaged { path, why } => (path, why),
                        other => (
                            restore_path,
                            format!(
                                "could not be loaded ({})",
                                crate::chain::ErrorChain::chain(&other)
                            ),
                        ),
                    };
                    vol.block(path, why);
                    if let Some(e) = vol.blocked() {
                        log::error!(
                            "volume \"{name}\" is not served: {}",
                            crate::chain::ErrorChain::chain(&e)
                        );
                    }
                }
            }
        }
        if let Some(size) = logical {
            // Only ever shorter: a recorded size past the file would grow it.
            let mut st = vol.write_state();
            if size < st.size() {
                st.set_size(size);
            }
        }
        if let Some(why) = vol.unserved() {
            log::error!(
                "volume \"{name}\" is not served: {why}. Reads work; writes and snapshots fail until it is truncated to a size that is served (truncate -s SIZE MOUNTPOINT/live/{name}) or deleted"
            );
        }
        Ok(vol)
    }
}

fn intent_path(root: &Path, id: VolumeId) -> PathBuf {
    root.join(INTENT_DIR).join(format!("{id:016x}"))
}

fn restore_path(root: &Path, id: VolumeId) -> PathBuf {
    root.join(RESTORE_DIR).join(format!("{id:016x}"))
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

/// Reads a volume's saved stamps: exactly `count` of them, each older than `first_epoch`
/// (they were saved by an earlier session). Anything else is refused with the reason; the
/// file is read as a stream and memory grows only with what it validly describes. `None`:
/// there is no stamps file (a volume adopted, or never closed cleanly).
fn load_stamps(
    path: &Path,
    count: u64,
    first_epoch: u64,
) -> Result<Option<stamps::Stamps>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("it cannot be opened: {e}")),
    };
    stamps::Stamps::load(file, count, first_epoch).map(Some)
}

fn load_meta(root: &Path) -> Result<StoreMeta> {
    let path = root.join(META_FILE);
    if let Ok(m) = std::fs::metadata(&path) {
        // A catalogue is about a hundred bytes per volume; one this large is not one, and
        // is never read into memory whole.
        if m.len() > MAX_META_BYTES {
            return Err(Error::BadState {
                path,
                why: format!("it is {} bytes long, more than any store writes", m.len()),
            });
        }
    }
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The catalogue is rebuilt from volumes/; with a new identity, so no backup of
            // the old one is taken for a base.
            log::warn!(
                "{} is missing; starting a new catalogue: the volumes in volumes/ are adopted and their next backups read them in full",
                path.display()
            );
            return Ok(StoreMeta {
                store_id: new_store_id(),
                ..StoreMeta::default()
            });
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let meta: StoreMeta = serde_json::from_slice(&text).map_err(|e| Error::BadState {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if !is_store_id(&meta.store_id) {
        return Err(Error::BadState {
            path,
            why: format!(
                "its store id {:?} is not 32 lowercase hex digits",
                meta.store_id.chars().take(64).collect::<String>()
            ),
        });
    }
    Ok(meta)
}

/// A new random store id: 32 hex digits.
fn new_store_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// Whether `id` looks like a store id this build makes.
fn is_store_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes a loaded catalogue possible for a session starting at `first_epoch`: every epoch
/// it records was used by an earlier session, so one at or past `first_epoch` is impossible
/// and is never trusted (tracking restarts for that volume, such a checkpoint is dropped);
/// a volume id or name listed twice keeps its first entry.
fn repair_meta(meta: &mut StoreMeta, first_epoch: u64) {
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    meta.volumes.retain_mut(|r| {
        if !names.insert(r.name.clone()) {
            log::warn!(
                "{META_FILE} lists volume \"{}\" twice; keeping the first entry",
                r.name.escape_debug()
            );
            return false;
        }
        if !ids.insert(r.id) {
            let id = random_u64();
            log::warn!(
                "{META_FILE} gives volume \"{}\" the id {:016x} of another volume; it gets the new id {id:016x} and its next backup reads it in full",
                r.name.escape_debug(),
                r.id
            );
            r.id = id;
            r.tracked_since = first_epoch;
            ids.insert(id);
        }
        if r.tracked_since >= first_epoch {
            log::warn!(
                "{META_FILE} says volume \"{}\" is tracked from epoch {:#x}, which no earlier session reached; changed-snarf tracking for it starts now",
                r.name.escape_debug(),
                r.tracked_since
            );
            r.tracked_since = first_epoch;
        }
        true
    });
    meta.checkpoints.retain(|name, &mut epoch| {
        let ok = epoch < first_epoch;
        if !ok {
            log::warn!(
                "{META_FILE}: dropping checkpoint \"{}\" at epoch {epoch:#x}, which no earlier session reached",
                name.escape_debug()
            );
        }
        ok
    });
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
    // Not taken for any reason (held, or no lock support): the store is not ours to open.
    if !matches!(lock::try_lock(&file, lock::Kind::Exclusive), Ok(true)) {
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
    let n = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty());
    if !matches!(n, Ok(8)) {
        // getrandom cannot fail for 8 bytes once the pool is ready; fall back to the
        // clock and pid rather than panicking.
        let t = volume::now_ns() as u64;
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests;
