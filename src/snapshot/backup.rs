//! What backup jobs ask of the engine: announcements of each kept capture (so a job sends
//! that snarf next), where held pre-images are, freeing a snarf's pre-image once a backup
//! stored it, and which snarfs changed since a checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{table, Changed, Engine, Error, Location, Result, Snapshot, SnarfSet};
use crate::store::{Tracking, VolumeId};

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
pub(super) struct Watchers {
    list: RwLock<Vec<(u64, CaptureWatcher)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchers({})", self.list.read().len())
    }
}

impl Engine {
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

    pub(super) fn notify_capture(&self, capture: &Capture) {
        let list = self.watchers.list.read();
        for (_, w) in list.iter() {
            w(capture);
        }
    }

    /// Records that a backup has stored snarf `index` of a snapshot's volume: the snapshot
    /// no longer needs its pre-image, which is freed unless another snapshot needs it.
    pub fn release_snarf(&self, snap: &Snapshot, vol: VolumeId, index: u64) -> Result<()> {
        self.release_snarfs(snap, vol, &[index])
    }

    /// [`Engine::release_snarf`] for many snarfs of one volume. For a persistent snapshot
    /// the snarfs are first recorded durably in its stored log (one sync for all), so after
    /// a restart it still reads them from the backup, never from a slot reused since; if
    /// that fails nothing is freed.
    pub fn release_snarfs(&self, snap: &Snapshot, vol: VolumeId, indices: &[u64]) -> Result<()> {
        let Some(sv) = snap.volume_by_id(vol) else {
            return Ok(());
        };
        let mut fresh: Vec<u64> = indices
            .iter()
            .copied()
            .filter(|&i| i < sv.snarf_count() && !sv.is_stored(i))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        if snap.is_persistent() {
            let mut runs: Vec<(VolumeId, u64, u64)> = Vec::new();
            for &i in &fresh {
                match runs.last_mut() {
                    Some((_, first, n)) if *first + *n == i => *n += 1,
                    _ => runs.push((vol, i, 1)),
                }
            }
            table::append_stored(&self.store.cow_dir(), snap.epoch(), &runs)?;
        }
        let mut freed = Vec::with_capacity(fresh.len());
        for i in fresh {
            let _stripe = self.stripes.write(vol, i);
            if sv.mark_stored(i) {
                freed.push((vol, i));
            }
        }
        self.free_unneeded(freed);
        Ok(())
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
        // Stamps only grow, so a snarf whose stamp is no newer than the checkpoint is
        // settled without looking further; unwritten groups are skipped whole.
        st.for_each_newer(since, |i, _| {
            if i >= count {
                return;
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
        });
        // After an unclean stop the stamps of what came before it are gone: the regions its
        // write-intent bitmap had marked stand for them.
        if let Some(intent) = vol.intent() {
            let (regions, at) = intent.recovered();
            if since < at {
                let span = crate::store::intent::REGION_SNARFS;
                for &r in regions.iter().filter(|&&r| r * span < count) {
                    set.insert_range(r * span, ((r + 1) * span).min(count));
                }
            }
        }
        Ok(Changed::Snarfs(set))
    }

    /// A backup of `snap` was committed: each of its volumes' write-intent bitmaps moves its
    /// checkpoint to the snapshot, so the regions not written since are cleared.
    pub fn backup_committed(&self, snap: &Snapshot) {
        for sv in snap.volumes().values() {
            self.store.backup_committed(&sv.volume, snap.epoch());
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
}
