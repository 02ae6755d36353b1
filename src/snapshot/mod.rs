//! Snapshots over the store: epochs, copy-on-write pre-image capture, the pre-image cache
//! (memory, then spill, then writer throttling) and frozen snapshot views.
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
//! * Pre-images fill memory, then the spill file; when both are full, writers wait (never
//!   fail). A writer that has waited past the limit breaks the snapshot holding the most
//!   pre-images, as QEMU's copy-before-write filter does with on-cbw-error=break-snapshot.
//! * Every kept capture is announced to the registered capture watchers
//!   ([`Engine::watch_captures`]), so a backup job sends that snarf next and frees it.
//! * Shrinking a volume that a snapshot still needs keeps the data past the new end on disk
//!   until no snapshot needs it, so a shrink costs no pre-images.
//!
//! Lock order, outermost first: snapshot names, epoch gate, a volume's state, a snarf's
//! stripe, the live-snapshot table, the pre-image map. Nothing waits for budget room while
//! holding any of them.

pub mod bitset;
pub mod preimage;
pub mod spill;
pub mod stripes;
pub mod view;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod concurrency_tests;

#[cfg(test)]
mod lifecycle_tests;

#[cfg(test)]
mod limits_tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::store::volume::ErrorCursor;
use crate::store::{self, validate_name, Budgets, Store, Tracking, Volume, VolumeId, VolumeState};
pub use bitset::SnarfSet;
pub use preimage::{CacheStats, Location};
use preimage::{Preimage, PreimageCache, Reservation, Stored};
use spill::SpillFile;
use stripes::Stripes;
pub use view::{SnapState, SnapVolume, Snapshot};

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
    #[error("{context}: {source}")]
    Io {
        /// What snarf was doing.
        context: String,
        /// The OS error.
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
}

impl EngineOptions {
    /// Options from a store's settings.
    pub fn from_store(store: &Store) -> EngineOptions {
        EngineOptions {
            budgets: store.settings().preimages.clone(),
            pace_from: 0.9,
            max_pace: Duration::from_millis(20),
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

/// What an operation must do before it can go on; anything but `Done` is settled with
/// every lock let go ([`Engine::settle`]), then the operation starts again.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Done,
    /// A pre-image could not be captured for lack of room (budgets full, the spill disk
    /// full or failing, no memory): wait.
    NeedRoom,
    /// The old contents of snarf `snarf` of `vol` could not be read to keep them: break
    /// the live snapshots with epochs in `first..=last` that need them.
    Unkeepable {
        vol: VolumeId,
        snarf: u64,
        first: u64,
        last: u64,
        reason: String,
    },
    /// Data kept on disk past a volume's end from `from` on could not be kept while it
    /// grew: break the snapshots that froze it longer than `from`.
    TailLost {
        vol: VolumeId,
        from: u64,
        reason: String,
    },
}

#[derive(Debug, Default)]
struct ThrottleCounters {
    waiting: AtomicU64,
    events: AtomicU64,
    waited_ns: AtomicU64,
    broken: AtomicU64,
}

/// A pre-image was just captured and kept: the old contents of snarf `snarf` of volume
/// `volume`, which every live snapshot with an epoch in `first..=last` sees. Backup jobs
/// watch for these so a snarf they have not sent yet is sent next, and its pre-image is freed
/// soon after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    /// The volume.
    pub volume: VolumeId,
    /// The snarf index.
    pub snarf: u64,
    /// Epoch of the write that produced the captured contents.
    pub first: u64,
    /// Last epoch whose snapshots see them.
    pub last: u64,
    /// Where the contents are held.
    pub location: Location,
}

impl Capture {
    /// Whether the snapshot of `epoch` sees this pre-image.
    pub fn covers(&self, epoch: u64) -> bool {
        (self.first..=self.last).contains(&epoch)
    }
}

/// Called for every kept capture; see [`Engine::watch_captures`].
pub type CaptureWatcher = Arc<dyn Fn(&Capture) + Send + Sync>;

/// The registered capture watchers, by id.
#[derive(Default)]
struct Watchers {
    list: RwLock<Vec<(u64, CaptureWatcher)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchers({})", self.list.read().len())
    }
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
}

/// Whether a buffer is all zeros (checked 16 bytes at a time).
fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

impl Engine {
    /// Starts the engine over an open store.
    pub fn new(store: Store, opts: EngineOptions) -> Result<Engine> {
        let snarf = store.snarf_size();
        let spill = SpillFile::create(&store.spill_dir(), snarf, opts.budgets.disk)?;
        let cache = PreimageCache::new(snarf, opts.budgets.memory, spill);
        // Epoch numbers of this session start past every earlier session's.
        let first = store.first_epoch() + 1;
        Ok(Engine {
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
        })
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
        Ok(len)
    }

    /// Writes live data at any offset and length, growing the volume if the write ends
    /// past it. Captures pre-images first where a snapshot needs them; waits (never fails)
    /// when the pre-image budgets are full. Nothing a snapshot needs makes it fail: the
    /// only errors are the write's own (its size, the volume's I/O).
    pub fn write(&self, vol: &Volume, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let max = vol.max_size();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= max)
            .ok_or(Error::TooLarge {
                offset,
                len: data.len() as u64,
                max,
            })?;
        let mut waited = Duration::ZERO;
        let spilled_before = self.cache.stats().disk_used;
        loop {
            let gate = self.gate.read();
            let epoch = *gate;
            {
                let st = vol.read_state();
                if let Some(why) = vol.unserved_in(&st) {
                    return Err(why.into());
                }
                let from = offset.min(st.size());
                let step = self.preserve(vol, &st, from, end, epoch);
                if step != Step::Done {
                    drop(st);
                    drop(gate);
                    self.settle(step, &mut waited);
                    continue;
                }
                if end <= st.size() {
                    vol.pwrite(data, offset)?;
                    drop(st);
                    drop(gate);
                    vol.touch_data();
                    self.pace(spilled_before);
                    return Ok(());
                }
            }
            // The write extends the volume: grow and write under the exclusive hold.
            let mut st = vol.write_state();
            let from = offset.min(st.size());
            let mut step = self.preserve(vol, &st, from, end, epoch);
            if step == Step::Done && end > st.size() {
                step = self.grow_locked(vol, &mut st, end, epoch)?;
            }
            if step != Step::Done {
                drop(st);
                drop(gate);
                self.settle(step, &mut waited);
                continue;
            }
            vol.pwrite(data, offset)?;
            drop(st);
            drop(gate);
            vol.touch_data();
            self.pace(spilled_before);
            return Ok(());
        }
    }

    /// Sets a volume's size (truncate). Growing fills with zeros; shrinking keeps whatever
    /// a snapshot still needs on disk until it is released.
    pub fn resize(&self, vol: &Volume, new_size: u64) -> Result<()> {
        if new_size > vol.max_size() {
            return Err(store::Error::TooLarge {
                size: new_size,
                max: vol.max_size(),
            }
            .into());
        }
        let mut waited = Duration::ZERO;
        loop {
            let gate = self.gate.read();
            let epoch = *gate;
            let mut st = vol.write_state();
            let old = st.size();
            if new_size > old {
                let mut step = self.preserve(vol, &st, old, new_size, epoch);
                if step == Step::Done {
                    step = self.grow_locked(vol, &mut st, new_size, epoch)?;
                }
                if step != Step::Done {
                    drop(st);
                    drop(gate);
                    self.settle(step, &mut waited);
                    continue;
                }
            } else if new_size < old {
                st.set_size(new_size);
                let keep = new_size.max(self.needed_len(vol.id()));
                if keep < st.phys_len() {
                    // Only gives space back; if it fails the data past the end stays and
                    // is recorded as such, exactly as when a snapshot needs it.
                    if let Err(e) = vol.set_len(&mut st, keep, epoch) {
                        log::warn!(
                            "could not give back the space past the new end of volume {:016x}: {e}",
                            vol.id()
                        );
                    }
                }
                self.note_logical_size(vol, &st);
            }
            drop(st);
            drop(gate);
            vol.touch_data();
            return Ok(());
        }
    }

    /// Grows to `new_size`. The caller has preserved every existing snarf from the old end
    /// on for this epoch.
    fn grow_locked(
        &self,
        vol: &Volume,
        st: &mut VolumeState,
        new_size: u64,
        epoch: u64,
    ) -> Result<Step> {
        let old = st.size();
        // Bytes past the logical end that a shrink left on disk must read as zeros now.
        // Those up to `zero_end` have been preserved for every snapshot that needs them;
        // those past it may still be needed on disk.
        let zero_end = new_size.min(st.phys_len());
        if old < zero_end {
            if let Err(e) = vol.zero_range(old, zero_end - old) {
                if self.needed_len(vol.id()) > zero_end {
                    return Ok(Step::TailLost {
                        vol: vol.id(),
                        from: zero_end,
                        reason: format!(
                            "the data kept past the end of a shrunk volume could not be kept while it grew again: {e}"
                        ),
                    });
                }
                // Nothing on disk past the old end is needed: drop it rather than zero it.
                vol.set_len(st, old, epoch)?;
            }
        }
        if new_size > st.phys_len() {
            vol.set_len(st, new_size, epoch)?;
        }
        st.set_size(new_size);
        self.note_logical_size(vol, st);
        Ok(Step::Done)
    }

    /// Keeps the store's record of a logical size shorter than the backing file in step,
    /// so a crash while data is kept past the end does not expose it. If the record cannot
    /// be written now (a full disk), the change stays pending and the next fsync of the
    /// volume writes it or reports the error: a resize is not made to fail by it.
    fn note_logical_size(&self, vol: &Volume, st: &VolumeState) {
        let size = (st.phys_len() > st.size()).then_some(st.size());
        if let Err(e) = self.store.set_logical_size(vol, size) {
            log::warn!(
                "the logical size of volume {:016x} could not be recorded now (the next fsync tries again): {e}",
                vol.id()
            );
        }
    }

    /// Bytes of a volume that live snapshots still need on disk.
    fn needed_len(&self, vol: VolumeId) -> u64 {
        self.live
            .read()
            .values()
            .filter_map(|s| s.volume_by_id(vol).map(|sv| sv.attr.size))
            .max()
            .unwrap_or(0)
    }

    /// Flushes a volume's data to stable storage, with the store's records about it (a
    /// logical size that could not be written earlier).
    pub fn fsync(&self, vol: &Volume) -> Result<()> {
        vol.sync_data()?;
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

    /// Does what a step that is not [`Step::Done`] asks, with no lock held: wait for room,
    /// or break the snapshots whose data could not be kept. The operation then starts again.
    fn settle(&self, step: Step, waited: &mut Duration) {
        match step {
            Step::Done => {}
            Step::NeedRoom => self.wait_for_room(waited),
            Step::Unkeepable {
                vol,
                snarf,
                first,
                last,
                reason,
            } => {
                self.break_where(&reason, |s| {
                    (first..=last).contains(&s.epoch()) && s.needs(vol, snarf)
                });
            }
            Step::TailLost { vol, from, reason } => {
                self.break_where(&reason, |s| {
                    s.volume_by_id(vol).is_some_and(|sv| sv.attr.size > from)
                });
            }
        }
    }

    /// Captures pre-images for every existing snarf overlapping `[from, end)` whose first
    /// write in `epoch` this is and that a live snapshot needs, and stamps them `epoch`.
    fn preserve(&self, vol: &Volume, st: &VolumeState, from: u64, end: u64, epoch: u64) -> Step {
        if from >= end {
            return Step::Done;
        }
        let shift = vol.snarf_shift();
        let first = from >> shift;
        let last = ((end - 1) >> shift).min(st.snarf_count().saturating_sub(1));
        if st.snarf_count() == 0 || first > last {
            return Step::Done;
        }
        for i in first..=last {
            if st.stamp(i) >= epoch {
                continue;
            }
            let step = self.capture(vol, st, i, epoch);
            if step != Step::Done {
                return step;
            }
        }
        Step::Done
    }

    /// The slow path of `preserve` for one snarf. Never an error: a full or failing spill
    /// disk and memory that cannot be had are no room (wait, then break a snapshot); old
    /// contents that cannot be read break the snapshots that need them.
    fn capture(&self, vol: &Volume, st: &VolumeState, index: u64, epoch: u64) -> Step {
        let id = vol.id();
        let _stripe = self.stripes.write(id, index);
        let w = st.stamp(index);
        if w >= epoch {
            return Step::Done;
        }
        if !self.live_need(id, index, w, epoch - 1) {
            st.set_stamp(index, epoch);
            return Step::Done;
        }
        let Some(room) = self.cache.reserve() else {
            return Step::NeedRoom;
        };
        let data = match room {
            // A hole (never written) costs no copy and no budget; checked only on the
            // spill path, where contents are never seen, since memory captures are
            // checked for zeros as they are read.
            Reservation::Spill(_) if vol.snarf_is_hole(index) => {
                self.cache.unreserve(room);
                Stored::Zero
            }
            Reservation::Spill(slot) => {
                match self
                    .cache
                    .spill_from(slot, vol.file(), index << vol.snarf_shift())
                {
                    Ok(data) => data,
                    // The spill disk is full or failing: it now counts as full.
                    Err(_) => return Step::NeedRoom,
                }
            }
            Reservation::Mem => {
                let Some(mut contents) = self.cache.buffer() else {
                    // Memory counts as full for a while; the next try spills or waits.
                    self.cache.unreserve(room);
                    return Step::NeedRoom;
                };
                if let Err(e) = vol.read_snarf(index, &mut contents) {
                    self.cache.recycle(contents);
                    self.cache.unreserve(room);
                    return Step::Unkeepable {
                        vol: id,
                        snarf: index,
                        first: w,
                        last: epoch - 1,
                        reason: format!(
                            "the old contents of snarf {index} of a volume could not be read to keep them: {e}"
                        ),
                    };
                }
                if is_zero(&contents) {
                    self.cache.recycle(contents);
                    self.cache.unreserve(room);
                    Stored::Zero
                } else {
                    Stored::Mem(contents)
                }
            }
        };
        let p = Preimage {
            first: w,
            last: epoch - 1,
            data,
        };
        {
            // Decide and insert under the live table, so a release either sees this
            // pre-image or is seen by this decision.
            let live = self.live.read();
            let needed = live.range(w..epoch).any(|(_, s)| s.needs(id, index));
            if needed {
                let location = match p.data {
                    Stored::Zero => Location::Zero,
                    Stored::Mem(_) => Location::Memory,
                    Stored::Spill(_) => Location::Spill,
                };
                self.cache.insert(id, index, p);
                drop(live);
                self.notify_capture(&Capture {
                    volume: id,
                    snarf: index,
                    first: w,
                    last: epoch - 1,
                    location,
                });
            } else {
                self.cache.discard(p.data);
            }
        }
        st.set_stamp(index, epoch);
        Step::Done
    }

    /// Registers `watcher` to be told about every pre-image captured and kept from now on;
    /// returns the id [`Engine::unwatch_captures`] takes. The watcher runs on the writing
    /// thread while it holds the snarf's locks (not the live-snapshot table), so it must be
    /// quick and must not call into the engine: record the capture and return.
    pub fn watch_captures(&self, watcher: CaptureWatcher) -> u64 {
        let id = self.watchers.next.fetch_add(1, Ordering::Relaxed);
        self.watchers.list.write().push((id, watcher));
        id
    }

    /// Stops telling the watcher `id` (see [`Engine::watch_captures`]); unknown ids are ignored.
    pub fn unwatch_captures(&self, id: u64) {
        self.watchers.list.write().retain(|(w, _)| *w != id);
    }

    fn notify_capture(&self, capture: &Capture) {
        let list = self.watchers.list.read();
        for (_, w) in list.iter() {
            w(capture);
        }
    }

    /// Whether a live snapshot with epoch in `[from, to]` needs snarf `index` of `vol`.
    fn live_need(&self, vol: VolumeId, index: u64, from: u64, to: u64) -> bool {
        if from > to {
            return false;
        }
        self.live
            .read()
            .range(from..=to)
            .any(|(_, s)| s.needs(vol, index))
    }

    /// Waits for pre-image room; breaks the snapshot holding the most pre-images once this
    /// writer has waited past the limit, so the live write always goes on.
    fn wait_for_room(&self, waited: &mut Duration) {
        let start = Instant::now();
        self.throttle.waiting.fetch_add(1, Ordering::Relaxed);
        self.throttle.events.fetch_add(1, Ordering::Relaxed);
        let limit = self.opts.budgets.break_after();
        loop {
            if self.cache.has_room() {
                break;
            }
            let so_far = *waited + start.elapsed();
            if so_far >= limit {
                let _one_at_a_time = self.breaking.lock();
                if self.cache.has_room() {
                    // Another writer's break made room.
                    break;
                }
                let stats = self.cache.stats();
                let usage = format!(
                    "memory {} of {}, disk {} of {} in use",
                    crate::units::Bytes(stats.mem_used),
                    crate::units::Bytes(stats.mem_budget),
                    crate::units::Bytes(stats.disk_used),
                    crate::units::Bytes(stats.disk_budget),
                );
                let reason = match self.cache.spill_failure() {
                    Some(why) => format!(
                        "a writer waited {:.1} s for pre-image room because pre-images could not be spilled to {} ({why}; {usage}); free space there, or back up or release snapshots sooner",
                        so_far.as_secs_f64(),
                        self.store.spill_dir().display(),
                    ),
                    None => format!(
                        "a writer waited {:.1} s for pre-image room ({usage}); back up or release snapshots sooner, or raise --preimage-mem/--preimage-disk",
                        so_far.as_secs_f64(),
                    ),
                };
                self.break_largest(&reason);
                break;
            }
            self.cache
                .wait_for_room((limit - so_far).min(Duration::from_millis(50)));
        }
        let spent = start.elapsed();
        *waited += spent;
        self.throttle
            .waited_ns
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        self.throttle.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Paces a writer that pushed pre-images into a nearly full disk budget.
    fn pace(&self, spilled_before: u64) {
        if self.opts.pace_from >= 1.0 || !self.cache.memory_full() {
            return;
        }
        let fill = self.cache.disk_fill();
        let spilled_now = self.cache.stats().disk_used;
        if fill <= self.opts.pace_from || spilled_now <= spilled_before {
            return;
        }
        let over = ((fill - self.opts.pace_from) / (1.0 - self.opts.pace_from)).clamp(0.0, 1.0);
        std::thread::sleep(self.opts.max_pace.mul_f64(over * over));
    }

    /// Breaks the live snapshot that needs the most pre-images. Returns its name.
    fn break_largest(&self, reason: &str) -> Option<String> {
        let live: Vec<Arc<Snapshot>> = self.live.read().values().cloned().collect();
        if live.is_empty() {
            return None;
        }
        let mut counts = vec![0u64; live.len()];
        for (vol, index) in self.cache.keys() {
            for (first, last) in self.cache.ranges(vol, index) {
                for (n, s) in live.iter().enumerate() {
                    if (first..=last).contains(&s.epoch()) && s.needs(vol, index) {
                        counts[n] += 1;
                    }
                }
            }
        }
        // The most pre-images; among equals the oldest, which has had longest to be used.
        let (victim, _) = live
            .iter()
            .zip(&counts)
            .max_by(|(a, ca), (b, cb)| ca.cmp(cb).then(b.epoch().cmp(&a.epoch())))?;
        let victim = victim.clone();
        log::warn!("breaking snapshot \"{}\": {reason}", victim.name());
        victim.set_state(SnapState::Broken(reason.to_string()));
        self.throttle.broken.fetch_add(1, Ordering::Relaxed);
        self.retire_snapshot(&victim);
        Some(victim.name().to_string())
    }

    /// Breaks every live snapshot for which `victim` says yes, with `reason`.
    fn break_where(&self, reason: &str, victim: impl Fn(&Snapshot) -> bool) {
        let victims: Vec<Arc<Snapshot>> = self
            .live
            .read()
            .values()
            .filter(|s| victim(s))
            .cloned()
            .collect();
        for snap in victims {
            log::warn!("breaking snapshot \"{}\": {reason}", snap.name());
            snap.set_state(SnapState::Broken(reason.to_string()));
            self.throttle.broken.fetch_add(1, Ordering::Relaxed);
            self.retire_snapshot(&snap);
        }
    }

    /// Stops keeping pre-images for a snapshot that was released or broken.
    fn retire_snapshot(&self, snap: &Snapshot) {
        self.live.write().remove(&snap.epoch());
        self.free_unneeded(self.cache.keys());
        self.reclaim(snap);
    }

    /// Frees pre-images of the given snarfs that no live snapshot needs any more.
    fn free_unneeded(&self, keys: Vec<(VolumeId, u64)>) {
        for (vol, index) in keys {
            let _stripe = self.stripes.write(vol, index);
            let unneeded: Vec<(u64, u64)> = {
                let ranges = self.cache.ranges(vol, index);
                let live = self.live.read();
                ranges
                    .into_iter()
                    .filter(|&(first, last)| {
                        !live.range(first..=last).any(|(_, s)| s.needs(vol, index))
                    })
                    .collect()
            };
            if !unneeded.is_empty() {
                self.cache
                    .remove_where(vol, index, |p| unneeded.contains(&(p.first, p.last)));
            }
        }
    }

    /// Gives back disk space past a volume's end that only this snapshot still needed.
    fn reclaim(&self, snap: &Snapshot) {
        for sv in snap.volumes().values() {
            let vol = &sv.volume;
            let mut st = vol.write_state();
            let keep = st.size().max(self.needed_len(vol.id()));
            if keep < st.phys_len() {
                match vol.set_len(&mut st, keep, 0) {
                    Ok(()) if !vol.is_deleted() => self.note_logical_size(vol, &st),
                    Ok(()) => {}
                    Err(e) => {
                        log::warn!("could not give back space past the end of a volume: {e}")
                    }
                }
            }
        }
    }

    // ----- snapshots -----

    /// Takes a snapshot of every live volume at once.
    pub fn take(&self, name: &str) -> Result<Arc<Snapshot>> {
        validate_name("snapshot", name)?;
        let mut named = self.named.write();
        if named.contains_key(name) {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let mut gate = self.gate.write();
        let epoch = *gate;
        let all = self.store.volumes();
        for (vname, volume) in &all {
            if let Some(why) = volume.unserved() {
                return Err(Error::Unserved {
                    volume: vname.clone(),
                    why,
                });
            }
        }
        let volumes = all
            .into_iter()
            .map(|(vname, volume)| {
                let attr = volume.attr();
                (vname, SnapVolume::new(volume, attr))
            })
            .collect();
        let snap = Arc::new(Snapshot::new(
            name.to_string(),
            epoch,
            store::volume::now_ns(),
            volumes,
        ));
        self.live.write().insert(epoch, snap.clone());
        *gate += 1;
        drop(gate);
        named.insert(name.to_string(), snap.clone());
        log::info!("took snapshot \"{name}\" at epoch {epoch:#x}");
        Ok(snap)
    }

    /// Releases a snapshot (live or broken) and frees what only it needed.
    pub fn release(&self, name: &str) -> Result<()> {
        let snap = self
            .named
            .write()
            .remove(name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))?;
        snap.set_state(SnapState::Released);
        self.retire_snapshot(&snap);
        log::info!("released snapshot \"{name}\"");
        Ok(())
    }

    /// The listed snapshots, oldest first.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        let mut out: Vec<SnapshotInfo> = self
            .named
            .read()
            .values()
            .map(|s| SnapshotInfo {
                name: s.name().to_string(),
                epoch: s.epoch(),
                created_ns: s.created_ns(),
                state: s.state(),
                volumes: s.volumes().len(),
            })
            .collect();
        out.sort_by_key(|s| s.epoch);
        out
    }

    /// The snapshot called `name`.
    pub fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>> {
        self.named
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))
    }

    fn check_readable(snap: &Snapshot) -> Result<()> {
        match snap.state() {
            SnapState::Live => Ok(()),
            SnapState::Broken(reason) => Err(Error::Broken {
                name: snap.name().to_string(),
                reason,
            }),
            SnapState::Released => Err(Error::Released {
                name: snap.name().to_string(),
            }),
        }
    }

    /// Reads a volume as the snapshot froze it; returns the bytes read (short at its end).
    pub fn read_snapshot(
        &self,
        snap: &Snapshot,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        Self::check_readable(snap)?;
        let sv = snap.volume(volume).ok_or_else(|| Error::NoSuchVolume {
            snapshot: snap.name().to_string(),
            volume: volume.to_string(),
        })?;
        let size = sv.attr.size;
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        let vol = &sv.volume;
        let shift = vol.snarf_shift();
        let mask = vol.snarf_size() - 1;
        let st = vol.read_state();
        let epoch = snap.epoch();
        // Consecutive snarfs the snapshot sees live are read with one pread, holding their
        // stripes until it is done; the others are read one by one.
        let mut run: Option<usize> = None;
        let mut held = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let index = pos >> shift;
            let within = pos & mask;
            let n = ((mask + 1 - within) as usize).min(len - done);
            let guard = self.stripes.read_recursive(vol.id(), index);
            let live =
                st.stamp(index) <= epoch && self.cache.location(vol.id(), index, epoch).is_none();
            if live {
                run.get_or_insert(done);
                held.push(guard);
                done += n;
                continue;
            }
            drop(guard);
            if let Some(start) = run.take() {
                Self::read_live(vol, offset, &mut buf[start..done], start)?;
                held.clear();
            }
            let out = &mut buf[done..done + n];
            self.read_snarf_as_of(snap, volume, sv, &st, index, within, out)?;
            done += n;
        }
        if let Some(start) = run.take() {
            Self::read_live(vol, offset, &mut buf[start..done], start)?;
        }
        drop(held);
        drop(st);
        // A break during the read may have freed pre-images it used.
        Self::check_readable(snap)?;
        Ok(len)
    }

    /// Reads `out` from the live file at `offset + at`, zeros past its end.
    fn read_live(vol: &Volume, offset: u64, out: &mut [u8], at: usize) -> Result<()> {
        let got = vol.pread(out, offset + at as u64)?;
        out[got..].fill(0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn read_snarf_as_of(
        &self,
        snap: &Snapshot,
        volume: &str,
        sv: &SnapVolume,
        st: &VolumeState,
        index: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let vol = &sv.volume;
        let _stripe = self.stripes.read(vol.id(), index);
        if let Some(r) = self.cache.read(vol.id(), index, snap.epoch(), within, out) {
            return r;
        }
        if st.stamp(index) <= snap.epoch() {
            let pos = (index << vol.snarf_shift()) + within;
            let got = vol.pread(out, pos)?;
            out[got..].fill(0);
            return Ok(());
        }
        if sv.is_stored(index) {
            return Err(Error::StoredInBackup {
                snapshot: snap.name().to_string(),
                volume: volume.to_string(),
                snarf: index,
            });
        }
        Self::check_readable(snap)?;
        Err(Error::Internal(format!(
            "snapshot \"{}\" has no pre-image for snarf {index} of volume \"{volume}\"",
            snap.name()
        )))
    }

    /// Whether snarf `index` of a snapshot's volume is all zeros without reading it, when
    /// that is cheap to know (a zero pre-image, or a hole in the live file); `false` means
    /// "not known to be zero".
    pub fn snapshot_snarf_is_hole(&self, snap: &Snapshot, sv: &SnapVolume, index: u64) -> bool {
        let vol = &sv.volume;
        let st = vol.read_state();
        let _stripe = self.stripes.read(vol.id(), index);
        if let Some(zero) = self.cache.is_zero(vol.id(), index, snap.epoch()) {
            return zero;
        }
        st.stamp(index) <= snap.epoch() && vol.snarf_is_hole(index)
    }

    /// Records that a backup has stored snarf `index` of a snapshot's volume: the snapshot
    /// no longer needs its pre-image, which is freed unless another snapshot needs it.
    pub fn release_snarf(&self, snap: &Snapshot, vol: VolumeId, index: u64) {
        let Some(sv) = snap.volume_by_id(vol) else {
            return;
        };
        let _stripe = self.stripes.write(vol, index);
        if !sv.mark_stored(index) {
            return;
        }
        drop(_stripe);
        self.free_unneeded(vec![(vol, index)]);
    }

    /// Where the pre-image a snapshot sees for a snarf is held, if there is one.
    pub fn preimage_location(
        &self,
        snap: &Snapshot,
        vol: VolumeId,
        index: u64,
    ) -> Option<Location> {
        self.cache.location(vol, index, snap.epoch())
    }

    /// Snarfs of `snap`'s volume that hold a pre-image for it, with where each is held.
    pub fn held_snarfs(&self, snap: &Snapshot, vol: VolumeId) -> Vec<(u64, Location)> {
        let mut out: Vec<(u64, Location)> = self
            .cache
            .keys()
            .into_iter()
            .filter(|&(v, _)| v == vol)
            .filter_map(|(_, i)| self.cache.location(vol, i, snap.epoch()).map(|l| (i, l)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Which snarfs of `snap`'s volume changed since the checkpoint epoch `since`.
    pub fn changed_snarfs(&self, snap: &Snapshot, volume: &str, since: u64) -> Result<Changed> {
        let sv = snap.volume(volume).ok_or_else(|| Error::NoSuchVolume {
            snapshot: snap.name().to_string(),
            volume: volume.to_string(),
        })?;
        let vol = &sv.volume;
        if let Tracking::Lost { reason } = self.store.tracking(vol, since) {
            return Ok(Changed::Lost { reason });
        }
        let count = sv.snarf_count();
        let mut set = SnarfSet::new(count);
        let st = vol.read_state();
        for i in 0..count {
            // Stamps only grow, so one no newer than the checkpoint settles it.
            if st.stamp(i) <= since {
                continue;
            }
            let _stripe = self.stripes.read(vol.id(), i);
            let as_of_snapshot = match self.cache.first_epoch_for(vol.id(), i, snap.epoch()) {
                Some(first) => first,
                None if st.stamp(i) <= snap.epoch() => st.stamp(i),
                // Handed to a backup already, or unknown: count it as changed.
                None => u64::MAX,
            };
            if as_of_snapshot > since {
                set.insert(i);
            }
        }
        Ok(Changed::Snarfs(set))
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

    /// Number of pre-images a snapshot needs (shared ones counted for each snapshot).
    pub fn preimages_needed_by(&self, snap: &Snapshot) -> u64 {
        self.cache
            .keys()
            .into_iter()
            .filter(|&(vol, index)| {
                snap.needs(vol, index)
                    && self
                        .cache
                        .ranges(vol, index)
                        .iter()
                        .any(|&(f, l)| (f..=l).contains(&snap.epoch()))
            })
            .count() as u64
    }

    /// Releases every snapshot and closes the store cleanly (see [`Store::close`]).
    pub fn close(&self) -> Result<()> {
        let names: Vec<String> = self.named.read().keys().cloned().collect();
        for name in names {
            self.release(&name)?;
        }
        Ok(self.store.close()?)
    }
}
