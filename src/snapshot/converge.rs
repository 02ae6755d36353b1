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
use std::time::{Duration, Instant};

use super::{Engine, Error, Result, SnarfSet};

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
        &self,
        first: BTreeMap<String, SnarfSet>,
        policy: ConvergePolicy,
        freeze_name: &str,
        sink: &mut dyn ConvergeSink,
    ) -> Result<ConvergeReport> {
        let snarf = self.store.snarf_size();
        let mut report = ConvergeReport::default();
        let mut mark = self.mark_epoch();
        let mut todo = first;
        let mut last_dirty = u64::MAX;
        loop {
            let bytes = self.copy_live(&todo, sink)?;
            if report.passes == 0 {
                report.first_bytes = bytes;
            } else {
                report.recopied_bytes += bytes;
            }
            report.passes += 1;
            let mut dirty = BTreeMap::new();
            let mut dirty_bytes = 0;
            for name in todo.keys() {
                let set = self.live_written_since(name, mark)?;
                dirty_bytes += set.count() * snarf;
                dirty.insert(name.clone(), set);
            }
            let small = dirty_bytes <= policy.small_bytes
                || (dirty_bytes as f64) <= report.first_bytes as f64 * policy.small_ratio;
            let stuck = dirty_bytes >= last_dirty;
            if small || stuck || report.passes >= policy.max_passes {
                break;
            }
            last_dirty = dirty_bytes;
            mark = self.mark_epoch();
            todo = dirty;
        }
        self.copy_frozen(
            todo.keys().cloned().collect(),
            mark,
            freeze_name,
            sink,
            &mut report,
        )?;
        Ok(report)
    }

    /// One live pass: reads each listed snarf from the live volume and sends it.
    fn copy_live(
        &self,
        todo: &BTreeMap<String, SnarfSet>,
        sink: &mut dyn ConvergeSink,
    ) -> Result<u64> {
        let snarf = self.store.snarf_size();
        let mut buf = vec![0u8; snarf as usize];
        let mut bytes = 0;
        for (name, set) in todo {
            let vol = self.volume(name)?;
            for i in set.iter() {
                let n = self.read(&vol, i * snarf, &mut buf)?;
                if n == 0 {
                    // Past the live end now; the frozen pass sees the size at the freeze.
                    continue;
                }
                sink.put(name, i, &buf[..n])?;
                bytes += n as u64;
            }
        }
        Ok(bytes)
    }

    /// The final pass: freezes every volume, copies the snarfs written since `mark` from
    /// the frozen view, and releases it whatever happened.
    fn copy_frozen(
        &self,
        volumes: Vec<String>,
        mark: u64,
        freeze_name: &str,
        sink: &mut dyn ConvergeSink,
        report: &mut ConvergeReport,
    ) -> Result<()> {
        let started = Instant::now();
        let snap = self.take_with(freeze_name, super::Durability::Volatile)?;
        let copied = (|| -> Result<()> {
            let snarf = self.store.snarf_size();
            let mut buf = vec![0u8; snarf as usize];
            for name in &volumes {
                let sv = snap.volume(name).ok_or_else(|| Error::NoSuchVolume {
                    snapshot: freeze_name.to_string(),
                    volume: name.clone(),
                })?;
                report.sizes.insert(name.clone(), sv.attr.size);
                let count = sv.snarf_count();
                let vol = &sv.volume;
                let mut dirty = Vec::new();
                {
                    let st = vol.read_state();
                    st.for_each_newer(mark, |i, _| {
                        if i < count {
                            dirty.push(i);
                        }
                    });
                }
                for i in dirty {
                    let n = self.read_snapshot(&snap, name, i * snarf, &mut buf)?;
                    sink.put(name, i, &buf[..n])?;
                    report.recopied_bytes += n as u64;
                    report.frozen_snarfs += 1;
                }
            }
            Ok(())
        })();
        report.freeze_epoch = snap.epoch();
        let released = self.release(freeze_name);
        report.freeze = started.elapsed();
        copied?;
        released
    }
}
