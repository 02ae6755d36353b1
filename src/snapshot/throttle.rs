//! Throttling: what a writer does when a pre-image cannot be kept. It waits for room (paced
//! as the disk budget fills), and once it has waited past the limit, or the old contents
//! cannot be kept at all, the snapshots concerned are broken so the live write goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, Result, SnapState, Snapshot};
use crate::chain::ErrorChain;
use crate::store::VolumeId;

/// What an operation must do before it can go on; anything but `Done` is settled with
/// every lock let go ([`Engine::settle`]), then the operation starts again.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Done,
    /// A pre-image could not be captured for lack of room (budgets full, the disk full or
    /// failing, no memory): wait. `durable`: it needed a slot on disk (for a persistent
    /// snapshot), so only disk room helps.
    NeedRoom {
        durable: bool,
    },
    /// The sync that was to make pre-images durable failed: they cannot be relied on, so
    /// every live persistent snapshot is broken with `reason` (the writes go on).
    DurableLost {
        reason: String,
    },
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
pub(super) struct ThrottleCounters {
    pub(super) waiting: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) waited_ns: AtomicU64,
    pub(super) broken: AtomicU64,
}

impl Engine {
    /// Runs `attempt` until it is done. Each try holds its locks only while it runs; what a
    /// try that could not finish asks for (room, or a broken snapshot) is settled with no
    /// lock held, then it tries again. The one place writers wait for pre-image room.
    pub(super) fn until_done(&self, mut attempt: impl FnMut() -> Result<Step>) -> Result<()> {
        let mut waited = Duration::ZERO;
        loop {
            match attempt()? {
                Step::Done => return Ok(()),
                step => self.settle(step, &mut waited),
            }
        }
    }

    /// Does what a step that is not [`Step::Done`] asks, with no lock held: wait for room,
    /// or break the snapshots whose data could not be kept. The operation then starts again.
    fn settle(&self, step: Step, waited: &mut Duration) {
        match step {
            Step::Done => {}
            Step::NeedRoom { durable } => self.wait_for_room(waited, durable),
            Step::DurableLost { reason } => {
                self.break_where(&reason, |s| s.is_persistent());
                // Nothing those pre-images protected is kept any more.
                self.cache.file().forgive();
            }
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

    /// Waits for pre-image room (on disk, when `durable`); breaks the snapshot holding the
    /// most pre-images (on disk, when `durable`) once this writer has waited past the
    /// limit, so the live write always goes on.
    pub(super) fn wait_for_room(&self, waited: &mut Duration, durable: bool) {
        let start = Instant::now();
        self.throttle.waiting.fetch_add(1, Ordering::Relaxed);
        self.throttle.events.fetch_add(1, Ordering::Relaxed);
        let limit = self.opts.budgets.break_after();
        let room = || {
            if durable {
                self.cache.has_durable_room()
            } else {
                self.cache.has_room()
            }
        };
        loop {
            if room() {
                break;
            }
            let so_far = *waited + start.elapsed();
            if so_far >= limit {
                let _one_at_a_time = self.breaking.lock();
                if room() {
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
                        "a writer waited {:.1} s for pre-image room because pre-images could not be written to {} ({why}; {usage}); free space there, or back up or release snapshots sooner",
                        so_far.as_secs_f64(),
                        self.store.cow_dir().display(),
                    ),
                    None => format!(
                        "a writer waited {:.1} s for pre-image room ({usage}); back up or release snapshots sooner, or raise --preimage-mem/--preimage-disk",
                        so_far.as_secs_f64(),
                    ),
                };
                self.break_largest(&reason, durable);
                break;
            }
            self.cache
                .wait_for_room((limit - so_far).min(Duration::from_millis(50)), durable);
        }
        let spent = start.elapsed();
        *waited += spent;
        self.throttle
            .waited_ns
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        self.throttle.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Paces a writer that pushed pre-images into a nearly full disk budget.
    pub(super) fn pace(&self, spilled_before: u64) {
        if self.opts.pace_from >= 1.0 {
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

    /// Breaks the live snapshot that needs the most pre-images (held on disk, when
    /// `on_disk`). Returns its name.
    fn break_largest(&self, reason: &str, on_disk: bool) -> Option<String> {
        let live: Vec<Arc<Snapshot>> = self.live.read().values().cloned().collect();
        if live.is_empty() {
            return None;
        }
        let mut counts = vec![0u64; live.len()];
        for (vol, index) in self.cache.keys() {
            for (first, last, place) in self.cache.ranges_placed(vol, index) {
                if on_disk && place != super::Location::Spill {
                    continue;
                }
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
        self.break_snapshots(vec![victim.clone()], reason);
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
        self.break_snapshots(victims, reason);
    }

    /// Breaks `victims` with `reason`: no pre-image is kept for them from now on, and once
    /// the broken state of the persistent ones is durable (so a restart never brings them
    /// back live without their pre-images) the pre-images only they needed are freed.
    pub(super) fn break_snapshots(&self, victims: Vec<Arc<Snapshot>>, reason: &str) {
        if victims.is_empty() {
            return;
        }
        for snap in &victims {
            log::warn!("breaking snapshot \"{}\": {reason}", snap.name());
            snap.set_state(SnapState::Broken(reason.to_string()));
            self.throttle.broken.fetch_add(1, Ordering::Relaxed);
            self.live.write().remove(&snap.epoch());
        }
        if victims.iter().any(|s| s.is_persistent()) {
            if let Err(e) = self.write_table() {
                log::error!(
                    "the broken state of snapshot \"{}\" could not be recorded ({}); its pre-images are kept until it can be",
                    victims[0].name(),
                    e.chain()
                );
                self.unpersisted.lock().extend(victims);
                return;
            }
        }
        for snap in &victims {
            self.retire_snapshot(snap);
        }
    }
}
