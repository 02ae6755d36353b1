//! Snapshots over the store: epochs, copy-on-write pre-image capture, the pre-image cache
//! (durable pre-images on disk with a memory cache for persistent snapshots; memory, then
//! spill for volatile ones; then writer throttling), frozen snapshot views, and their
//! recovery after a restart or a crash.
//!
//! How it fits together:
//!
//! * The *epoch* counts snapshots. Writes, resizes and volume changes run under a shared
//!   hold of the epoch gate; taking a snapshot holds it exclusively for an instant, so every
//!   write is entirely before or entirely after a snapshot.
//! * Each snarf carries a *stamp*, the epoch of its last write. The first write to a snarf
//!   in a new epoch finds its stamp older than the current epoch; if a live snapshot taken
//!   since that stamp still needs the snarf, the whole snarf's old contents are captured as a
//!   *pre-image* covering epochs `[stamp, current - 1]` before the write lands. Later writes
//!   in the same epoch find the stamp current and go straight through.
//! * A snapshot read of a snarf returns the pre-image covering its epoch if there is one,
//!   otherwise the live snarf, whose stamp is then no newer than the snapshot.
//! * A snapshot is *persistent* (the default) or *volatile*. A pre-image a persistent
//!   snapshot needs is written to the durable pre-image store ([`cow`]) and synced, by a
//!   group commit shared with every writer waiting, before the live write it protects is
//!   issued; its table entry ([`table`]) is durable before `take` returns. So after an
//!   unmount, a kill -9 or a power cut, [`recovery`] finds every persistent snapshot reading
//!   exactly what it froze. Volatile snapshots keep today's memory-first pre-images, spilled
//!   to disk past the memory budget, and end with the mount.
//! * When the disk budget (durable and spilled pre-images) or, for volatile ones, both
//!   budgets are full, writers wait (never fail). A writer that has waited past the limit
//!   breaks the snapshot holding the most pre-images, as QEMU's copy-before-write filter does
//!   with on-cbw-error=break-snapshot; a persistent snapshot's broken state is durable before
//!   its pre-images are freed.
//! * Every kept capture is announced to the registered capture watchers
//!   ([`Engine::watch_captures`]), so a backup job sends that snarf next and frees it.
//! * Shrinking a volume that a snapshot still needs keeps the data past the new end on disk
//!   until no snapshot needs it, so a shrink costs no pre-images.
//!
//! Where each job lives: [`write`] the write path and copy-on-write capture, [`throttle`]
//! waiting for room and breaking snapshots, [`lifecycle`] taking, releasing and retiring
//! snapshots, [`read`] snapshot reads, [`backup`] what backup jobs ask (capture
//! announcements, freeing stored snarfs, changed snarfs), [`recovery`] what an open finds.
//!
//! Lock order, outermost first: snapshot names, epoch gate, a volume's state, a snarf's
//! stripe, the live-snapshot table, the pre-image map. Nothing waits for budget room while
//! holding any of them.

mod backup;
pub mod bitset;
pub mod converge;
pub mod cow;
mod lifecycle;
pub mod preimage;
mod read;
mod recovery;
pub mod stored;
pub mod stripes;
pub mod table;
mod throttle;
pub mod view;
mod write;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
pub(crate) mod oracle;

#[cfg(test)]
mod concurrency_tests;

#[cfg(test)]
mod lifecycle_tests;

#[cfg(test)]
mod limits_tests;

#[cfg(test)]
mod sparse_tests;

#[cfg(test)]
mod persist_tests;

#[cfg(test)]
mod restore_tests;

#[cfg(test)]
pub(crate) mod converge_tests;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::store::volume::ErrorCursor;
pub use crate::store::Durability;
use crate::store::{self, validate_name, Budgets, Store, Volume};
use backup::Watchers;
pub use backup::{Capture, CaptureWatcher};
pub use bitset::SnarfSet;
use preimage::PreimageCache;
pub use preimage::{CacheStats, Location};
pub use recovery::RecoveryReport;
pub use stored::StoredSnarfs;
use stripes::Stripes;
use throttle::ThrottleCounters;
pub use view::{SnapState, SnapVolume, Snapshot};

/// Whether a snapshot name is one snarf gives its own short-lived snapshots (a converge
/// backup's instants and freeze): names no user can give, which the mount neither lists
/// nor lets anyone release.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(".snarf-")
}

/// Errors of the snapshot layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the store below.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No snapshot has that name.
    #[error("no snapshot named \"{0}\"")]
    NoSuchSnapshot(String),
    /// A snapshot of that name exists already.
    #[error("a snapshot named \"{0}\" already exists; release it first or choose another name")]
    SnapshotExists(String),
    /// The snapshot does not contain that volume.
    #[error("snapshot \"{snapshot}\" has no volume named \"{volume}\"")]
    NoSuchVolume {
        /// The snapshot.
        snapshot: String,
        /// The volume asked for.
        volume: String,
    },
    /// A volume a converge copy was copying now names another volume.
    #[error("volume \"{0}\" was replaced during a converge backup (another volume was renamed over it, or it was deleted and made again); nothing was committed; run the backup again")]
    VolumeReplaced(String),
    /// The snapshot was broken to protect live writers.
    #[error("snapshot \"{name}\" is broken and can no longer be read: {reason}; release it and take a new one")]
    Broken {
        /// The snapshot.
        name: String,
        /// Why it was broken.
        reason: String,
    },
    /// The snapshot was released while in use.
    #[error("snapshot \"{name}\" has been released")]
    Released {
        /// The snapshot.
        name: String,
    },
    /// The snarf's pre-image was freed because a backup stored it; the backup has it.
    #[error("snarf {snarf} of volume \"{volume}\" in snapshot \"{snapshot}\" was handed to a backup and is read from the repository")]
    StoredInBackup {
        /// The snapshot.
        snapshot: String,
        /// The volume.
        volume: String,
        /// The snarf index.
        snarf: u64,
    },
    /// A write reaching past the largest size a volume may have.
    #[error("a write of {len} bytes at offset {offset} would make the volume larger than the {max} bytes this store serves")]
    TooLarge {
        /// Start of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// The largest volume size served.
        max: u64,
    },
    /// A snapshot cannot hold a volume the engine does not serve.
    #[error("no snapshot can be taken while volume \"{volume}\" is not served ({why}); truncate it to a size that is served, or delete it")]
    Unserved {
        /// The volume.
        volume: String,
        /// Why it is not served.
        why: store::Error,
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
    /// An internal rule was found broken; this is a bug in snarf.
    #[error("internal error (please report): {0}")]
    Internal(String),
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

/// Result of the snapshot layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tuning of the engine; the budgets come from the store's settings unless overridden.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Pre-image budgets and the writer-protection limit.
    pub budgets: Budgets,
    /// Fraction of the disk budget above which writers that capture pre-images are paced
    /// (slowed a little per capture, more as the budget fills), so they slow down smoothly
    /// instead of hitting a wall. 1.0 turns pacing off.
    pub pace_from: f64,
    /// Longest pause per captured snarf when the disk budget is full.
    pub max_pace: Duration,
    /// What a snapshot taken without saying is (`mkdir`).
    pub durability: Durability,
}

impl EngineOptions {
    /// Options from a store's settings.
    pub fn from_store(store: &Store) -> EngineOptions {
        EngineOptions {
            budgets: store.settings().preimages.clone(),
            pace_from: 0.9,
            max_pace: Duration::from_millis(20),
            durability: store.settings().snapshots,
        }
    }
}

/// What the engine reports about itself, for status.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Pre-image cache figures.
    pub cache: CacheStats,
    /// Writers waiting for pre-image room right now.
    pub throttled_now: u64,
    /// Times a writer had to wait for room, in total.
    pub throttle_events: u64,
    /// Total time writers spent waiting, in nanoseconds.
    pub throttled_ns: u64,
    /// Snapshots broken to protect writers, in total.
    pub broken: u64,
}

/// One line of the snapshot listing.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Epoch it froze.
    pub epoch: u64,
    /// When it was taken (ns since the Unix epoch).
    pub created_ns: i64,
    /// Live or broken (with the reason).
    pub state: SnapState,
    /// Number of volumes it holds.
    pub volumes: usize,
    /// Persistent or volatile.
    pub durability: Durability,
}

/// Which snarfs of a snapshot's volume changed since a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Exactly these snarfs may differ; the others are unchanged.
    Snarfs(SnarfSet),
    /// Tracking cannot tell; read everything.
    Lost {
        /// Why.
        reason: String,
    },
}

/// The snapshot engine: the store's volumes with copy-on-write snapshots over them.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    opts: EngineOptions,
    /// The current epoch, held shared by every mutation and exclusively by `take`.
    gate: RwLock<u64>,
    /// Snapshots that pre-images are kept for, by epoch.
    live: RwLock<BTreeMap<u64, Arc<Snapshot>>>,
    /// Every listed snapshot (live or broken), by name.
    named: RwLock<BTreeMap<String, Arc<Snapshot>>>,
    cache: PreimageCache,
    stripes: Stripes,
    throttle: ThrottleCounters,
    /// Held while deciding to break a snapshot, so writers that time out together break
    /// one snapshot, not one each.
    breaking: parking_lot::Mutex<()>,
    /// Told about every kept capture (backup jobs reorder their queues by them).
    watchers: Watchers,
    /// Held while the snapshot table is written, so writes of it never interleave.
    table_lock: parking_lot::Mutex<()>,
    /// Broken snapshots whose state could not be made durable yet: their pre-images are
    /// kept until it is (else a crash would bring them back live without them).
    unpersisted: parking_lot::Mutex<Vec<Arc<Snapshot>>>,
    /// What the open found.
    recovered: RecoveryReport,
}

impl Engine {
    /// Starts the engine over an open store, restoring its persistent snapshots and their
    /// durable pre-images ([`recovery`]).
    pub fn new(store: Store, opts: EngineOptions) -> Result<Engine> {
        let snarf = store.snarf_size();
        let (file, found, opened) = cow::CowFile::open(&store.cow_dir(), snarf, opts.budgets.disk)?;
        let cache = PreimageCache::new(snarf, opts.budgets.memory, file);
        // Epoch numbers of this session start past every earlier session's.
        let first = store.first_epoch() + 1;
        let mut engine = Engine {
            store,
            opts,
            gate: RwLock::new(first),
            live: RwLock::new(BTreeMap::new()),
            named: RwLock::new(BTreeMap::new()),
            cache,
            stripes: Stripes::default(),
            throttle: ThrottleCounters::default(),
            breaking: parking_lot::Mutex::new(()),
            watchers: Watchers::default(),
            table_lock: parking_lot::Mutex::new(()),
            unpersisted: parking_lot::Mutex::new(Vec::new()),
            recovered: RecoveryReport::default(),
        };
        engine.recovered = engine.recover(found, opened)?;
        Ok(engine)
    }

    /// What the open of the engine found and restored.
    pub fn recovered(&self) -> &RecoveryReport {
        &self.recovered
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The options in force.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// The current epoch (the one writes now land in).
    pub fn epoch(&self) -> u64 {
        *self.gate.read()
    }

    // ----- volumes -----

    /// Creates an empty volume of `size` bytes.
    pub fn create_volume(&self, name: &str, size: u64) -> Result<Arc<Volume>> {
        let gate = self.gate.read();
        Ok(self.store.create_volume(name, size, *gate)?)
    }

    /// Creates volume `name` as the live restore of a backup's volume: served at once, its
    /// snarfs fetched on demand through the source the caller plugs in
    /// ([`store::restored::Restore::set_source`]).
    pub fn create_restoring(
        &self,
        name: &str,
        origin: store::restored::Origin,
    ) -> Result<Arc<Volume>> {
        let gate = self.gate.read();
        Ok(self.store.create_restoring(name, origin, *gate)?)
    }

    /// The live volume called `name`.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        Ok(self.store.volume(name)?)
    }

    /// Renames a volume (replacing one already called `to`); snapshots keep their names.
    pub fn rename_volume(&self, from: &str, to: &str) -> Result<()> {
        let _gate = self.gate.read();
        self.store.rename_volume(from, to)?;
        Ok(())
    }

    /// Deletes a volume; snapshots that hold it keep reading it.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let _gate = self.gate.read();
        self.store.delete_volume(name)?;
        Ok(())
    }

    /// Reads live data; returns the bytes read (short at the end of the volume).
    pub fn read(&self, vol: &Volume, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let st = vol.read_state();
        let size = st.size();
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        let got = vol.pread(&mut buf[..len], offset)?;
        // Past the physical end (cannot happen while size <= phys_len) reads as zeros.
        buf[got..len].fill(0);
        vol.io().record_read(len);
        Ok(len)
    }

    /// Flushes a volume's data to stable storage, with the store's records about it (a
    /// logical size that could not be written earlier).
    pub fn fsync(&self, vol: &Volume) -> Result<()> {
        vol.sync_data()?;
        if let Some(r) = vol.restore() {
            r.sync()?;
        }
        Ok(self.store.flush_meta()?)
    }

    /// fsync(2) of one open file of a volume: syncs, then reports any write-back error
    /// recorded since that file's last fsync, whichever file's sync met it first.
    pub fn fsync_file(&self, vol: &Volume, cursor: &ErrorCursor) -> Result<()> {
        let synced = self.fsync(vol);
        let unseen = vol.check_errors(cursor);
        synced?;
        Ok(unseen?)
    }

    /// Figures for status.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            cache: self.cache.stats(),
            throttled_now: self.throttle.waiting.load(Ordering::Relaxed),
            throttle_events: self.throttle.events.load(Ordering::Relaxed),
            throttled_ns: self.throttle.waited_ns.load(Ordering::Relaxed),
            broken: self.throttle.broken.load(Ordering::Relaxed),
        }
    }

    /// Releases every volatile snapshot and closes the store cleanly (see [`Store::close`]);
    /// persistent snapshots stay, with their pre-images sealed on disk.
    pub fn close(&self) -> Result<()> {
        let volatile: Vec<String> = self
            .named
            .read()
            .values()
            .filter(|s| !s.is_persistent())
            .map(|s| s.name().to_string())
            .collect();
        for name in volatile {
            self.release(&name)?;
        }
        self.write_table()?;
        self.cache.file().seal()?;
        Ok(self.store.close()?)
    }
}
