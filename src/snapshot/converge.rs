//! Converge copies: a volume set copied live in passes, then frozen for just the snarfs
//! written during the last pass, so the copy is exactly the volumes at that final freeze.
//!
//! Each pass starts with an epoch *mark* ([`Engine::mark_epoch`]): the gate is held
//! exclusively for an instant, as for a snapshot, so every write is wholly before or
//! wholly after it, on every volume at once. No snapshot is registered, so writes after a
//! mark make no pre-images; they only carry a stamp newer than the mark. Every read of a
//! pass happens after its mark, so a write that overlaps or follows a read (a torn live
//! read included) stamps its snarf newer than the mark and puts it in the next pass's
//! dirty set. A snarf not dirty since the last mark therefore reads at the freeze exactly
//! as it did when it was copied; the final pass copies the dirty ones from the frozen view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, Error, Result, Snapshot, SnarfSet};
use crate::store::{self, Volume};

/// When a converge copy stops copying live and freezes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvergePolicy {
    /// Most live passes (the first full pass included) before the freeze.
    pub max_passes: u32,
    /// Freeze once the dirty set is at most this many bytes.
    pub small_bytes: u64,
    /// Freeze once the dirty set is at most this fraction of the first pass.
    pub small_ratio: f64,
}

impl Default for ConvergePolicy {
    fn default() -> ConvergePolicy {
        ConvergePolicy {
            max_passes: 8,
            small_bytes: 4 << 20,
            small_ratio: 0.01,
        }
    }
}

/// Where a converge copy sends each snarf it reads: volume name, snarf index, its bytes
/// (short for the last snarf of a volume). A snarf may come again in a later pass; the last
/// one sent is the one that counts.
pub trait ConvergeSink {
    /// Takes one snarf's contents.
    fn put(&mut self, volume: &str, index: u64, data: &[u8]) -> Result<()>;
}

/// What a converge copy did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvergeReport {
    /// Live passes run (the first included), not counting the frozen one.
    pub passes: u32,
    /// Bytes copied by the first pass.
    pub first_bytes: u64,
    /// Bytes copied again by later passes and the frozen one.
    pub recopied_bytes: u64,
    /// How long the final freeze (snapshot taken to released) lasted.
    pub freeze: Duration,
    /// The epoch of the final freeze: the copy is the volumes as of it.
    pub freeze_epoch: u64,
    /// Snarfs copied from the frozen view.
    pub frozen_snarfs: u64,
    /// Each volume's size at the freeze.
    pub sizes: BTreeMap<String, u64>,
}

/// One snarf a converge copy read into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The volume's position in the list the copy started with.
    pub vol: usize,
    /// The snarf's index.
    pub index: u64,
    /// Its length (short for the last snarf of a volume).
    pub len: usize,
    /// Read from the final freeze rather than from the live volume.
    pub frozen: bool,
}

/// A converge copy in progress, pulled a snarf at a time ([`Converge::next`]), so a
/// backup job can be fed from it as from a snapshot. Dropping it releases the freeze if
/// it is still held.
pub struct Converge {
    engine: Arc<Engine>,
    policy: ConvergePolicy,
    freeze_name: String,
    names: Vec<String>,
    /// Each volume's id when the copy started: a name that comes to mean another volume
    /// (renamed over, deleted and made again) fails the copy.
    ids: Vec<u64>,
    /// The current pass's snarfs, per volume position.
    todo: Vec<SnarfSet>,
    /// Where the current pass is: volume position, next index to look at.
    at: (usize, u64),
    /// The current pass's live volumes, resolved when it started.
    live: Vec<Arc<Volume>>,
    mark: u64,
    pass_bytes: u64,
    last_dirty: u64,
    frozen: Option<(Arc<Snapshot>, Instant)>,
    /// The freeze, once released: the copy is the volumes as of it.
    froze: Option<Arc<Snapshot>>,
    report: ConvergeReport,
}

impl std::fmt::Debug for Converge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converge")
            .field("freeze_name", &self.freeze_name)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Converge {
    /// Starts a copy of `first` (per volume, in order, the snarfs the backup needs) whose
    /// first pass reads live after the epoch mark `mark` (from [`Engine::mark_epoch`], or
    /// the epoch of a snapshot the sets were planned on, released since).
    pub fn start(
        engine: Arc<Engine>,
        first: Vec<(String, SnarfSet)>,
        policy: ConvergePolicy,
        freeze_name: &str,
        mark: u64,
    ) -> Result<Converge> {
        let (names, todo): (Vec<String>, Vec<SnarfSet>) = first.into_iter().unzip();
        let live = names
            .iter()
            .map(|n| engine.volume(n))
            .collect::<Result<Vec<_>>>()?;
        let ids = live.iter().map(|v| v.id()).collect();
        Ok(Converge {
            engine,
            policy,
            freeze_name: freeze_name.to_string(),
            names,
            ids,
            todo,
            at: (0, 0),
            live,
            mark,
            pass_bytes: 0,
            last_dirty: u64::MAX,
            frozen: None,
            froze: None,
            report: ConvergeReport::default(),
        })
    }

    /// Each volume's id, as the copy started (in the order of the list it started with).
    pub fn volume_ids(&self) -> &[u64] {
        &self.ids
    }

    /// The live volumes by name, each checked to be the volume the copy started with.
    fn resolve(&self) -> Result<Vec<Arc<Volume>>> {
        self.names
            .iter()
            .zip(&self.ids)
            .map(|(n, &id)| {
                let v = self.engine.volume(n)?;
                if v.id() != id {
                    return Err(Error::VolumeReplaced(n.clone()));
                }
                Ok(v)
            })
            .collect()
    }

    /// What the copy did so far (complete once [`Converge::next`] gave `None`).
    pub fn report(&self) -> &ConvergeReport {
        &self.report
    }

    /// The final freeze, once the copy is complete and it is released.
    pub fn freeze(&self) -> Option<&Arc<Snapshot>> {
        self.froze.as_ref()
    }

    /// Reads the next snarf into `buf` (at least a snarf long); `None` once the copy is
    /// complete: everything read, last copy winning, is the volumes at the freeze.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Option<Piece>> {
        let snarf = self.engine.store.snarf_size();
        loop {
            if self.froze.is_some() {
                return Ok(None);
            }
            if let Some(index) = self.advance() {
                let vol = self.at.0;
                let piece = match &self.frozen {
                    Some((snap, _)) => {
                        let n = self.engine.read_snapshot(
                            snap,
                            &self.names[vol],
                            index * snarf,
                            &mut buf[..snarf as usize],
                        )?;
                        self.report.recopied_bytes += n as u64;
                        self.report.frozen_snarfs += 1;
                        Piece {
                            vol,
                            index,
                            len: n,
                            frozen: true,
                        }
                    }
                    None => {
                        let n = self.engine.read(
                            &self.live[vol],
                            index * snarf,
                            &mut buf[..snarf as usize],
                        )?;
                        if n == 0 {
                            // Past the live end now; the frozen pass sees the size at the freeze.
                            continue;
                        }
                        self.pass_bytes += n as u64;
                        Piece {
                            vol,
                            index,
                            len: n,
                            frozen: false,
                        }
                    }
                };
                return Ok(Some(piece));
            }
            if self.frozen.is_some() {
                self.release_freeze()?;
            } else {
                self.end_live_pass()?;
            }
        }
    }

    /// The next index of the current pass, moving the cursor past it.
    fn advance(&mut self) -> Option<u64> {
        while self.at.0 < self.todo.len() {
            let (vol, from) = self.at;
            if let Some(i) = self.todo[vol].next_from(from) {
                self.at = (vol, i + 1);
                return Some(i);
            }
            self.at = (vol + 1, 0);
        }
        None
    }

    /// A live pass ended: either another pass over what was written meanwhile, or the freeze.
    fn end_live_pass(&mut self) -> Result<()> {
        let snarf = self.engine.store.snarf_size();
        if self.report.passes == 0 {
            self.report.first_bytes = self.pass_bytes;
        } else {
            self.report.recopied_bytes += self.pass_bytes;
        }
        self.pass_bytes = 0;
        self.report.passes += 1;
        let mut dirty = Vec::with_capacity(self.names.len());
        let mut dirty_bytes = 0;
        for name in &self.names {
            let set = self.engine.live_written_since(name, self.mark)?;
            dirty_bytes += set.count() * snarf;
            dirty.push(set);
        }
        let p = self.policy;
        let small = dirty_bytes <= p.small_bytes
            || (dirty_bytes as f64) <= self.report.first_bytes as f64 * p.small_ratio;
        let stuck = dirty_bytes >= self.last_dirty;
        self.at = (0, 0);
        if small || stuck || self.report.passes >= p.max_passes {
            return self.take_freeze();
        }
        self.last_dirty = dirty_bytes;
        self.mark = self.engine.mark_epoch();
        self.live = self.resolve()?;
        self.todo = dirty;
        Ok(())
    }

    /// Freezes every volume and makes the frozen pass the snarfs written since the last mark.
    fn take_freeze(&mut self) -> Result<()> {
        let started = Instant::now();
        let snap = self.engine.take_reserved(&self.freeze_name)?;
        self.report.freeze_epoch = snap.epoch();
        let mut todo = Vec::with_capacity(self.names.len());
        for (name, &id) in self.names.iter().zip(&self.ids) {
            let sv = match snap.volume(name) {
                Some(sv) if sv.volume.id() == id => sv,
                other => {
                    let _ = self.engine.release(&self.freeze_name);
                    return Err(match other {
                        Some(_) => Error::VolumeReplaced(name.clone()),
                        None => store::Error::NoSuchVolume(name.clone()).into(),
                    });
                }
            };
            self.report.sizes.insert(name.clone(), sv.attr.size);
            let count = sv.snarf_count();
            let mut set = SnarfSet::new(count);
            sv.volume.read_state().for_each_newer(self.mark, |i, _| {
                if i < count {
                    set.insert(i);
                }
            });
            todo.push(set);
        }
        self.todo = todo;
        self.frozen = Some((snap, started));
        Ok(())
    }

    fn release_freeze(&mut self) -> Result<()> {
        if let Some((snap, started)) = self.frozen.take() {
            let released = self.engine.release(&self.freeze_name);
            self.report.freeze = started.elapsed();
            self.froze = Some(snap);
            released?;
        }
        Ok(())
    }
}

impl Drop for Converge {
    fn drop(&mut self) {
        if self.frozen.take().is_some() {
            if let Err(e) = self.engine.release(&self.freeze_name) {
                log::warn!(
                    "releasing the freeze {} of a converge copy: {e}",
                    self.freeze_name
                );
            }
        }
    }
}

impl Engine {
    /// Starts a new epoch for every volume at once, with no snapshot: returns the epoch that
    /// ended, so every write from now on stamps its snarf newer than it.
    pub fn mark_epoch(&self) -> u64 {
        let mut gate = self.gate.write();
        let ended = *gate;
        *gate += 1;
        ended
    }

    /// The snarfs of the live volume `volume` written since the epoch mark `since`.
    pub fn live_written_since(&self, volume: &str, since: u64) -> Result<SnarfSet> {
        let vol = self.volume(volume)?;
        let st = vol.read_state();
        let count = st.size().div_ceil(vol.snarf_size());
        let mut set = SnarfSet::new(count);
        st.for_each_newer(since, |i, _| {
            if i < count {
                set.insert(i);
            }
        });
        Ok(set)
    }

    /// Copies `first` (per volume, the snarfs the backup needs) live, then passes over what
    /// was written meanwhile until `policy` says freeze, then takes the volatile snapshot
    /// `freeze_name`, copies the snarfs written since the last mark from it and releases it.
    /// Everything sent, last copy winning, is the volumes at the freeze.
    pub fn converge(
        self: &Arc<Engine>,
        first: BTreeMap<String, SnarfSet>,
        policy: ConvergePolicy,
        freeze_name: &str,
        sink: &mut dyn ConvergeSink,
    ) -> Result<ConvergeReport> {
        let mark = self.mark_epoch();
        let first: Vec<(String, SnarfSet)> = first.into_iter().collect();
        let names: Vec<String> = first.iter().map(|(n, _)| n.clone()).collect();
        let mut run = Converge::start(self.clone(), first, policy, freeze_name, mark)?;
        let mut buf = vec![0u8; self.store.snarf_size() as usize];
        while let Some(p) = run.next(&mut buf)? {
            sink.put(&names[p.vol], p.index, &buf[..p.len])?;
        }
        Ok(run.report().clone())
    }
}
