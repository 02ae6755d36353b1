//! The feed: which snarf of a snapshot a backup job gets next. It runs beside the engine
//! (in the mount daemon, or in the job itself in direct mode) and hands out every planned
//! (volume, snarf) pair exactly once, in this order:
//!
//! 1. *urgent*: snarfs whose pre-image a live write captured after the feed started, in
//!    capture order (the engine announces each capture through [`Engine::watch_captures`]);
//! 2. snarfs whose pre-image was already held when the feed started: those in memory (and
//!    all-zero ones, which cost nothing to send) first, then those spilled to disk;
//! 3. the rest, volume by volume, in ascending snarf order, so reads of the live files
//!    stay sequential.
//!
//! Sending held snarfs first means their pre-images are freed as soon as the backup has
//! stored them ([`Feed::ack`] calls [`Engine::release_snarf`]), so a backup of a volume under
//! write load holds little pre-image memory. Only snarfs in the job's plan (every snarf, or
//! the changed set of an incremental backup) are handed out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

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

/// A snarf handed to the job: the position of its volume in the feed's list, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handed {
    /// Position of the volume in the list the feed was made with.
    pub vol: usize,
    /// Snarf index in the volume.
    pub snarf: u64,
}

#[derive(Debug)]
struct VolQueue {
    id: VolumeId,
    count: u64,
    only: Option<SnarfSet>,
    handed: SnarfSet,
    /// Next index the sequential pass looks at.
    cursor: u64,
}

impl VolQueue {
    fn wanted(&self, snarf: u64) -> bool {
        snarf < self.count
            && !self.handed.contains(snarf)
            && self.only.as_ref().is_none_or(|s| s.contains(snarf))
    }
}

#[derive(Debug)]
struct Queue {
    epoch: u64,
    vols: Vec<VolQueue>,
    by_id: HashMap<VolumeId, usize>,
    urgent: VecDeque<Handed>,
    held: VecDeque<Handed>,
    /// Volume the sequential pass is in.
    seq_vol: usize,
    remaining: u64,
    urgent_handed: u64,
    held_handed: u64,
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

    fn next(&mut self) -> Option<Handed> {
        while let Some(h) = self.urgent.pop_front() {
            if self.take(h) {
                self.urgent_handed += 1;
                return Some(h);
            }
        }
        while let Some(h) = self.held.pop_front() {
            if self.take(h) {
                self.held_handed += 1;
                return Some(h);
            }
        }
        while self.seq_vol < self.vols.len() {
            let vol = self.seq_vol;
            let v = &mut self.vols[vol];
            let next = match &v.only {
                // Jump straight to the next planned snarf.
                Some(only) => only.next_from(v.cursor),
                None => (v.cursor < v.count).then_some(v.cursor),
            };
            match next {
                Some(snarf) => {
                    v.cursor = snarf + 1;
                    let h = Handed { vol, snarf };
                    if self.take(h) {
                        return Some(h);
                    }
                }
                None => self.seq_vol += 1,
            }
        }
        None
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
}

/// The feed of one backup job over one snapshot; see the module documentation.
pub struct Feed {
    engine: Arc<Engine>,
    snap: Arc<Snapshot>,
    names: Vec<String>,
    queue: Arc<Mutex<Queue>>,
    watch: u64,
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
    /// A feed over `volumes` of `snap`. Fails if a volume is not in the snapshot.
    pub fn new(
        engine: Arc<Engine>,
        snap: Arc<Snapshot>,
        volumes: Vec<FeedVolume>,
    ) -> snapshot::Result<Feed> {
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
            });
        }
        let queue = Arc::new(Mutex::new(Queue {
            epoch: snap.epoch(),
            vols,
            by_id,
            urgent: VecDeque::new(),
            held: VecDeque::new(),
            seq_vol: 0,
            remaining,
            urgent_handed: 0,
            held_handed: 0,
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
                    let h = Handed { vol, snarf };
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
                Some(h) => out.push(h),
                None => break,
            }
        }
        out
    }

    /// Counts so far.
    pub fn stats(&self) -> FeedStats {
        let q = self.queue.lock();
        FeedStats {
            remaining: q.remaining,
            urgent: q.urgent_handed,
            held: q.held_handed,
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
