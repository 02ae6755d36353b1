//! The feed: which snarf of a snapshot a backup job gets next. It runs beside the engine
//! (in the mount daemon, or in the job itself in direct mode) and hands out every planned
//! (volume, snarf) pair exactly once, in this order:
//!
//! 1. *urgent*: snarfs whose pre-image a live write captured after the feed started, in
//!    capture order (the engine announces each capture through [`Engine::watch_captures`]);
//! 2. snarfs whose pre-image was already held when the feed started: those in memory (and
//!    all-zero ones, which cost nothing to send) first, then those spilled to disk;
//! 3. *cached*: snarfs whose bytes are all in the page cache of the volume's backing file
//!    (the live workload read or wrote them), found by probing one window (by default
//!    [`WINDOW_BYTES`]) at a time ahead of the sequential pass, each volume's in ascending
//!    order; a pass that reached the end starts again from the sequential pass's place once
//!    the cold tier has read a share of what the pass probed, since the cached set changes;
//! 4. the rest, *cold*, volume by volume, in ascending snarf order, so reads of the live
//!    files stay sequential.
//!
//! The cached tier lets a backup on a busy system piggyback on the workload's own I/O: what
//! the workload brought into memory goes out before the backup's cold reads evict it, and
//! the disk reads only what nobody brought in. Where the kernel cannot tell
//! ([`Residency`] fails), the tier turns itself off and the order is 1, 2, 4.
//!
//! Sending held snarfs first means their pre-images are freed as soon as the backup has
//! stored them ([`Feed::ack`] calls [`Engine::release_snarf`]), so a backup of a volume under
//! write load holds little pre-image memory. Only snarfs in the job's plan (every snarf, or
//! the changed set of an incremental backup) are handed out.

mod resident;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

pub use resident::{PageCache, Residency, WINDOW_BYTES};

use crate::repo::chunk::is_all_zero;
use crate::snapshot::{self, Capture, Engine, Location, Snapshot, SnarfSet};
use crate::store::VolumeId;

/// One volume a feed hands out snarfs of.
#[derive(Debug, Clone)]
pub struct FeedVolume {
    /// Name in the snapshot.
    pub name: String,
    /// Only these snarfs; `None`: every snarf of the frozen size.
    pub only: Option<SnarfSet>,
}

/// Why a job may acknowledge a snarf: the feed handed it out, or the plan reuses it from
/// the volume's base (an unchanged snarf of an incremental backup, never handed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Handed to the job, so its data went through the daemon.
    Handed,
    /// Planned as reused from the base backup.
    Reused,
}

/// Which tier of the feed's order a snarf was handed out from (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// A live write captured its pre-image while the job ran.
    Urgent,
    /// Its pre-image was held when the job started.
    Held,
    /// Its bytes were in the page cache of the volume file when the feed looked.
    Cached,
    /// Read in disk order (also what a daemon that does not say sends).
    #[default]
    Cold,
}

/// A snarf handed to the job: the position of its volume in the feed's list, its index,
/// and the tier it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handed {
    /// Position of the volume in the list the feed was made with.
    pub vol: usize,
    /// Snarf index in the volume.
    pub snarf: u64,
    /// The tier of the feed's order it came from.
    pub tier: Tier,
}

#[derive(Debug)]
struct VolQueue {
    id: VolumeId,
    count: u64,
    only: Option<SnarfSet>,
    handed: SnarfSet,
    /// Next index the sequential pass looks at.
    cursor: u64,
    /// Snarfs in one probe window.
    window: u64,
}

impl VolQueue {
    fn wanted(&self, snarf: u64) -> bool {
        snarf < self.count
            && !self.handed.contains(snarf)
            && self.only.as_ref().is_none_or(|s| s.contains(snarf))
    }

    /// The first planned snarf at or after `from`, handed out or not.
    fn planned_from(&self, from: u64) -> Option<u64> {
        match &self.only {
            Some(only) => only.next_from(from).filter(|&s| s < self.count),
            None => (from < self.count).then_some(from),
        }
    }
}

/// A pass needs the cold tier to have handed out this many windows' worth of snarfs per
/// this many windows it probed before the next pass starts: probing costs a system call
/// or so per window, a cold read of a window tens of milliseconds.
const PROBES_PER_COLD_WINDOW: u64 = 16;

/// Where the cached tier's probing is.
#[derive(Debug)]
struct Probe {
    /// The tier is on: a residency source is set and has not failed.
    on: bool,
    /// Volume position and snarf the pass probes next.
    vol: usize,
    at: u64,
    /// Windows probed in this pass.
    windows: u64,
    /// The pass has ended: cold hand-outs still to come before the next pass starts.
    resting: Option<u64>,
}

/// One window of a volume to ask the residency source about: its planned snarfs not yet
/// handed out, ascending.
#[derive(Debug)]
struct Window {
    vol: usize,
    snarfs: Vec<u64>,
}

/// What the queue wants next.
enum Step {
    /// Hand this out.
    Give(Handed),
    /// Probe this window (with the lock let go), then ask again.
    Probe(Window),
    /// Every planned snarf is out.
    Done,
}

#[derive(Debug)]
struct Queue {
    epoch: u64,
    vols: Vec<VolQueue>,
    by_id: HashMap<VolumeId, usize>,
    urgent: VecDeque<Handed>,
    held: VecDeque<Handed>,
    /// Snarfs the last probes found in the page cache, each window's ascending.
    cached: VecDeque<Handed>,
    probe: Probe,
    /// Volume the sequential pass is in.
    seq_vol: usize,
    remaining: u64,
    urgent_handed: u64,
    held_handed: u64,
    cached_handed: u64,
    cold_handed: u64,
}

impl Queue {
    fn on_capture(&mut self, c: &Capture) {
        if !c.covers(self.epoch) {
            return;
        }
        if let Some(&vol) = self.by_id.get(&c.volume) {
            if self.vols[vol].wanted(c.snarf) {
                self.urgent.push_back(Handed {
                    vol,
                    snarf: c.snarf,
                    tier: Tier::Urgent,
                });
            }
        }
    }

    fn take(&mut self, h: Handed) -> bool {
        let v = &mut self.vols[h.vol];
        if !v.wanted(h.snarf) {
            return false;
        }
        v.handed.insert(h.snarf);
        self.remaining -= 1;
        true
    }

    fn next(&mut self) -> Step {
        while let Some(h) = self.urgent.pop_front() {
            if self.take(h) {
                self.urgent_handed += 1;
                return Step::Give(h);
            }
        }
        while let Some(h) = self.held.pop_front() {
            if self.take(h) {
                self.held_handed += 1;
                return Step::Give(h);
            }
        }
        while let Some(h) = self.cached.pop_front() {
            if self.take(h) {
                self.cached_handed += 1;
                return Step::Give(h);
            }
        }
        if let Some(w) = self.next_window() {
            return Step::Probe(w);
        }
        while self.seq_vol < self.vols.len() {
            let vol = self.seq_vol;
            let v = &mut self.vols[vol];
            // Jumps straight to the next planned snarf.
            match v.planned_from(v.cursor) {
                Some(snarf) => {
                    v.cursor = snarf + 1;
                    let h = Handed {
                        vol,
                        snarf,
                        tier: Tier::Cold,
                    };
                    if self.take(h) {
                        self.cold_handed += 1;
                        if let Some(r) = &mut self.probe.resting {
                            *r = r.saturating_sub(1);
                        }
                        return Step::Give(h);
                    }
                }
                None => self.seq_vol += 1,
            }
        }
        Step::Done
    }

    /// The next window the cached tier should probe, if a pass is under way (or due).
    /// Only what lies ahead of the sequential pass can still be wanted.
    fn next_window(&mut self) -> Option<Window> {
        if !self.probe.on {
            return None;
        }
        match self.probe.resting {
            Some(0) => {
                // A new pass, from where the sequential pass is now.
                self.probe.resting = None;
                self.probe.windows = 0;
                self.probe.vol = self.seq_vol;
                self.probe.at = 0;
            }
            Some(_) => return None,
            None => {}
        }
        loop {
            if self.probe.vol < self.seq_vol {
                self.probe.vol = self.seq_vol;
                self.probe.at = 0;
            }
            let Some(v) = self.vols.get(self.probe.vol) else {
                // The pass is over; rest while the cold tier reads a share of it.
                let window = self.vols.iter().map(|v| v.window).max().unwrap_or(1);
                let rest = (self.probe.windows * window / PROBES_PER_COLD_WINDOW).max(window);
                self.probe.resting = Some(rest);
                return None;
            };
            let behind = if self.probe.vol == self.seq_vol {
                v.cursor
            } else {
                0
            };
            let Some(from) = v.planned_from(self.probe.at.max(behind)) else {
                self.probe.vol += 1;
                self.probe.at = 0;
                continue;
            };
            let end = ((from / v.window + 1) * v.window).min(v.count);
            self.probe.at = end;
            let mut snarfs = Vec::new();
            let mut s = Some(from);
            while let Some(i) = s.filter(|&i| i < end) {
                if v.wanted(i) {
                    snarfs.push(i);
                }
                s = v.planned_from(i + 1);
            }
            if !snarfs.is_empty() {
                self.probe.windows += 1;
                return Some(Window {
                    vol: self.probe.vol,
                    snarfs,
                });
            }
        }
    }

    /// What probing window `w` found.
    fn probed(&mut self, w: &Window, found: std::io::Result<Vec<u64>>, name: &str) {
        match found {
            Ok(snarfs) => self.cached.extend(snarfs.into_iter().map(|snarf| Handed {
                vol: w.vol,
                snarf,
                tier: Tier::Cached,
            })),
            Err(e) => {
                // Not worth failing a backup over: the rest go out in disk order.
                log::warn!(
                    "cannot tell which snarfs of volume \"{name}\" are in memory ({e}); \
                     the backup reads the rest in disk order"
                );
                self.probe.on = false;
            }
        }
    }
}

/// Counts of what a feed handed out, and from where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Snarfs still to hand out.
    pub remaining: u64,
    /// Handed because a write captured their pre-image while the job ran.
    pub urgent: u64,
    /// Handed because their pre-image was held when the job started.
    pub held: u64,
    /// Handed because their bytes were in the page cache.
    pub cached: u64,
    /// Handed in disk order.
    pub cold: u64,
}

/// The feed of one backup job over one snapshot; see the module documentation.
pub struct Feed {
    engine: Arc<Engine>,
    snap: Arc<Snapshot>,
    names: Vec<String>,
    queue: Arc<Mutex<Queue>>,
    watch: u64,
    residency: Option<Arc<dyn Residency>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("snapshot", &self.snap.name())
            .field("volumes", &self.names)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// A feed over `volumes` of `snap` whose cached tier asks the kernel's page cache.
    /// Fails if a volume is not in the snapshot.
    pub fn new(
        engine: Arc<Engine>,
        snap: Arc<Snapshot>,
        volumes: Vec<FeedVolume>,
    ) -> snapshot::Result<Feed> {
        Feed::with_residency(engine, snap, volumes, Some(Arc::new(PageCache::default())))
    }

    /// [`Feed::new`] with the cached tier asking `residency` (`None`: no cached tier).
    pub fn with_residency(
        engine: Arc<Engine>,
        snap: Arc<Snapshot>,
        volumes: Vec<FeedVolume>,
        residency: Option<Arc<dyn Residency>>,
    ) -> snapshot::Result<Feed> {
        let window_bytes = residency
            .as_ref()
            .map_or(WINDOW_BYTES, |r| r.window_bytes());
        let mut vols = Vec::with_capacity(volumes.len());
        let mut by_id = HashMap::new();
        let mut remaining = 0;
        for (n, fv) in volumes.iter().enumerate() {
            let sv = snap
                .volume(&fv.name)
                .ok_or_else(|| snapshot::Error::NoSuchVolume {
                    snapshot: snap.name().to_string(),
                    volume: fv.name.clone(),
                })?;
            let count = sv.snarf_count();
            remaining += match &fv.only {
                Some(s) if s.capacity() <= count => s.count(),
                Some(s) => s.iter().take_while(|&i| i < count).count() as u64,
                None => count,
            };
            by_id.insert(sv.volume.id(), n);
            vols.push(VolQueue {
                id: sv.volume.id(),
                count,
                only: fv.only.clone(),
                handed: SnarfSet::new(count),
                cursor: 0,
                window: (window_bytes / sv.volume.snarf_size()).max(1),
            });
        }
        let queue = Arc::new(Mutex::new(Queue {
            epoch: snap.epoch(),
            vols,
            by_id,
            urgent: VecDeque::new(),
            held: VecDeque::new(),
            cached: VecDeque::new(),
            probe: Probe {
                on: residency.is_some(),
                vol: 0,
                at: 0,
                windows: 0,
                resting: None,
            },
            seq_vol: 0,
            remaining,
            urgent_handed: 0,
            held_handed: 0,
            cached_handed: 0,
            cold_handed: 0,
        }));
        // Watch first, then list what is held: a capture in between is seen by one or both,
        // and handing out checks each snarf only once.
        let weak: Weak<Mutex<Queue>> = Arc::downgrade(&queue);
        let watch = engine.watch_captures(Arc::new(move |c: &Capture| {
            if let Some(q) = weak.upgrade() {
                q.lock().on_capture(c);
            }
        }));
        let mut first = Vec::new();
        let mut spilled = Vec::new();
        {
            let ids: Vec<VolumeId> = queue.lock().vols.iter().map(|v| v.id).collect();
            for (vol, id) in ids.into_iter().enumerate() {
                for (snarf, loc) in engine.held_snarfs(&snap, id) {
                    let h = Handed {
                        vol,
                        snarf,
                        tier: Tier::Held,
                    };
                    match loc {
                        Location::Memory | Location::Zero => first.push(h),
                        Location::Spill => spilled.push(h),
                    }
                }
            }
        }
        queue.lock().held = first.into_iter().chain(spilled).collect();
        Ok(Feed {
            engine,
            snap,
            names: volumes.into_iter().map(|v| v.name).collect(),
            queue,
            watch,
            residency,
        })
    }

    /// The snapshot fed from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    /// The volume names, in feed position order.
    pub fn volume_names(&self) -> &[String] {
        &self.names
    }

    /// Up to `max` snarfs not handed out before, in feed order; empty when all are out.
    pub fn next(&self, max: usize) -> Vec<Handed> {
        let mut q = self.queue.lock();
        let mut out = Vec::with_capacity(max.min(q.remaining as usize));
        while out.len() < max {
            match q.next() {
                Step::Give(h) => out.push(h),
                Step::Probe(w) => {
                    // Probing makes system calls: let writers announce captures meanwhile.
                    let found = MutexGuard::unlocked(&mut q, || self.probe(&w));
                    q.probed(&w, found, &self.names[w.vol]);
                }
                Step::Done => break,
            }
        }
        out
    }

    fn probe(&self, w: &Window) -> std::io::Result<Vec<u64>> {
        let (Some(residency), Some(sv)) = (&self.residency, self.snap.volume(&self.names[w.vol]))
        else {
            return Ok(Vec::new());
        };
        residency.resident(&sv.volume, &w.snarfs)
    }

    /// Counts so far.
    pub fn stats(&self) -> FeedStats {
        let q = self.queue.lock();
        FeedStats {
            remaining: q.remaining,
            urgent: q.urgent_handed,
            held: q.held_handed,
            cached: q.cached_handed,
            cold: q.cold_handed,
        }
    }

    /// Whether the job may acknowledge snarf `snarf` of the volume at position `vol`, and
    /// why: only a snarf of the plan that was handed out, or one the plan reuses from the
    /// base (not in an incremental volume's send set). The error says what is wrong.
    pub fn ack_kind(&self, vol: usize, snarf: u64) -> Result<AckKind, String> {
        let q = self.queue.lock();
        let v = q.vols.get(vol).ok_or_else(|| {
            format!(
                "an ack names volume {vol} of the plan, which has {}",
                q.vols.len()
            )
        })?;
        let name = &self.names[vol];
        if snarf >= v.count {
            return Err(format!(
                "an ack names snarf {snarf} of volume \"{name}\", which has {} snarfs",
                v.count
            ));
        }
        if v.handed.contains(snarf) {
            return Ok(AckKind::Handed);
        }
        match &v.only {
            Some(only) if !only.contains(snarf) => Ok(AckKind::Reused),
            _ => Err(format!(
                "an ack names snarf {snarf} of volume \"{name}\", which was never handed to this job"
            )),
        }
    }

    /// The length of snarf `snarf` of the volume at position `vol` as the snapshot froze it;
    /// `None` past the volume's end (computed without overflow for any `snarf`).
    pub fn snarf_len(&self, vol: usize, snarf: u64) -> Option<u32> {
        let sv = self.snap.volume(self.names.get(vol)?)?;
        let ss = sv.volume.snarf_size();
        let start = snarf.checked_mul(ss)?;
        let left = sv.attr.size.checked_sub(start).filter(|l| *l > 0)?;
        u32::try_from(left.min(ss)).ok()
    }

    /// Whether a backup already stored snarf `snarf` of the volume at position `vol` for
    /// this snapshot (its pre-image is freed, reads come from that backup).
    pub fn is_stored(&self, vol: usize, snarf: u64) -> bool {
        self.names
            .get(vol)
            .and_then(|n| self.snap.volume(n))
            .is_some_and(|sv| sv.is_stored(snarf))
    }

    /// The backup stored snarf `snarf` of the volume at position `vol`: its pre-image is
    /// freed unless another snapshot needs it. The caller has checked the acknowledgement
    /// ([`Feed::ack_kind`]).
    pub fn ack(&self, vol: usize, snarf: u64) -> snapshot::Result<()> {
        self.ack_many(&[(vol, snarf)])
    }

    /// [`Feed::ack`] for many snarfs at once: a persistent snapshot records them durably
    /// with one sync per volume before any pre-image is freed.
    pub fn ack_many(&self, items: &[(usize, u64)]) -> snapshot::Result<()> {
        let ids: Vec<Option<VolumeId>> = {
            let q = self.queue.lock();
            q.vols.iter().map(|v| Some(v.id)).collect()
        };
        let mut by_vol: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
        for &(vol, snarf) in items {
            by_vol.entry(vol).or_default().push(snarf);
        }
        for (vol, snarfs) in by_vol {
            if let Some(Some(id)) = ids.get(vol) {
                self.engine.release_snarfs(&self.snap, *id, &snarfs)?;
            }
        }
        Ok(())
    }

    /// The volume id at position `vol`.
    pub fn volume_id(&self, vol: usize) -> Option<VolumeId> {
        self.queue.lock().vols.get(vol).map(|v| v.id)
    }

    /// Reads a handed snarf's contents as the snapshot froze them into `buf` (which is
    /// resized to the snarf's length). Returns `false` without filling `buf` when the snarf
    /// is known to be all zeros (a hole, a zero pre-image, or zeros read).
    pub fn read(&self, h: Handed, buf: &mut Vec<u8>) -> snapshot::Result<bool> {
        let name = &self.names[h.vol];
        let sv = self
            .snap
            .volume(name)
            .ok_or_else(|| snapshot::Error::NoSuchVolume {
                snapshot: self.snap.name().to_string(),
                volume: name.clone(),
            })?;
        let snarf_size = sv.volume.snarf_size();
        let start = h.snarf * snarf_size;
        let len = sv.attr.size.saturating_sub(start).min(snarf_size) as usize;
        buf.resize(len, 0);
        if len == 0 || self.engine.snapshot_snarf_is_hole(&self.snap, sv, h.snarf) {
            return Ok(false);
        }
        let got = self.engine.read_snapshot(&self.snap, name, start, buf)?;
        buf[got..].fill(0);
        Ok(!is_all_zero(buf))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.engine.unwatch_captures(self.watch);
    }
}

#[cfg(test)]
mod tests;
