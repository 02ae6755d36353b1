//! Converge copies under a writer thread: the copy, replayed, equals the volume as of the
//! final freeze byte for byte, and no pre-image is held before that freeze.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::converge::{ConvergePolicy, ConvergeReport, ConvergeSink};
use super::*;
use crate::store::{InitOptions, Store};

const SNARF: u64 = 4096;
const SNARFS: u64 = 256;

/// One write the writer made: where, what, and the epoch it landed in.
pub(crate) struct Logged {
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) epoch: u64,
}

/// `start` with every logged write of an epoch at or before `freeze` replayed; asserts those
/// writes form a prefix of the log and that writes landed on both sides of the freeze.
pub(crate) fn replay_to(mut start: Vec<u8>, log: &[Logged], freeze: u64) -> Vec<u8> {
    let (mut before, mut after) = (0, 0);
    for w in log {
        if w.epoch <= freeze {
            assert_eq!(after, 0, "writes before the freeze form a prefix");
            let at = w.offset as usize;
            start[at..at + w.data.len()].copy_from_slice(&w.data);
            before += 1;
        } else {
            after += 1;
        }
    }
    assert!(
        before > 0 && after > 0,
        "writes on both sides of the freeze"
    );
    start
}

/// The first snarf of `snarf` bytes where `got` and `want` differ (`None`: equal).
pub(crate) fn first_difference(got: &[u8], want: &[u8], snarf: usize) -> Option<usize> {
    (got != want).then(|| {
        got.chunks(snarf)
            .zip(want.chunks(snarf))
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()) / snarf)
    })
}

/// Keeps the last copy of each snarf, and checks no pre-image is held before the freeze.
struct Copy {
    engine: Arc<Engine>,
    image: Vec<u8>,
    frozen: bool,
    /// Slows each live copy down, so a writer can outrun the passes.
    delay: Duration,
}

impl ConvergeSink for Copy {
    fn put(&mut self, _volume: &str, index: u64, data: &[u8]) -> Result<()> {
        if !self.frozen {
            if self.engine.list().is_empty() {
                let held = self.engine.stats().cache.held;
                assert_eq!(held, 0, "pre-images held before the freeze");
            } else {
                self.frozen = true;
            }
        }
        let at = (index * SNARF) as usize;
        self.image[at..at + data.len()].copy_from_slice(data);
        if !self.frozen && !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        Ok(())
    }
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let root = dir.join("store");
    let opts = InitOptions {
        snarf_size: SNARF,
        budgets: Budgets {
            memory: 64 * SNARF,
            disk: 1024 * SNARF,
            break_after_secs: 30.0,
        },
        repository: None,
        snapshots: crate::store::Durability::Volatile,
    };
    Store::init(&root, &opts).expect("init");
    let store = Store::open(&root, "converge test").expect("open");
    let eo = EngineOptions::from_store(&store);
    Arc::new(Engine::new(store, eo).expect("engine"))
}

/// Runs a converge copy of one volume under a writer thread writing sequence-stamped
/// blocks (pausing `pause` between writes) and checks the copy against the oracle replay
/// of every write that landed at or before the freeze.
fn run(seed: u64, pause: Duration, delay: Duration, policy: ConvergePolicy) -> ConvergeReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let vol = engine.create_volume("v", SNARFS * SNARF).expect("volume");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut start = vec![0u8; (SNARFS * SNARF) as usize];
    rng.fill(&mut start[..]);
    engine.write(&vol, 0, &start).expect("fill");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, vol, stop) = (engine.clone(), vol.clone(), stop.clone());
        thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
            let mut log = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let len = rng.random_range(1..=3 * SNARF as usize);
                let offset = rng.random_range(0..SNARFS * SNARF - len as u64);
                let data: Vec<u8> = (0..len).map(|k| (seq as u8) ^ (k as u8)).collect();
                engine.write(&vol, offset, &data).expect("write");
                // A single writer: the stamp of the snarf it just wrote is its own epoch.
                let epoch = vol.read_state().stamp(offset / SNARF);
                log.push(Logged {
                    offset,
                    data,
                    epoch,
                });
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
            log
        })
    };
    thread::sleep(Duration::from_millis(20));
    let mut copy = Copy {
        engine: engine.clone(),
        image: vec![0u8; (SNARFS * SNARF) as usize],
        frozen: false,
        delay,
    };
    let mut all = SnarfSet::new(SNARFS);
    all.insert_range(0, SNARFS);
    let first = [("v".to_string(), all)].into_iter().collect();
    let report = engine
        .converge(first, policy, ".snarf-converge-test", &mut copy)
        .expect("converge");
    // Writes go on after the freeze; they must not show in the copy.
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().expect("writer");
    let oracle = replay_to(start, &log, report.freeze_epoch);
    assert_eq!(report.sizes.get("v"), Some(&(SNARFS * SNARF)));
    if let Some(bad) = first_difference(&copy.image, &oracle, SNARF as usize) {
        panic!("seed {seed}: the copy differs from the freeze at snarf {bad} ({report:?})");
    }
    assert!(engine.list().is_empty(), "the freeze is released");
    assert_eq!(engine.stats().cache.held, 0, "its pre-images are freed");
    report
}

#[test]
fn converge_equals_the_final_freeze_under_a_writer() {
    for seed in 0..4 {
        let report = run(
            seed,
            Duration::from_micros(200),
            Duration::from_micros(50),
            ConvergePolicy::default(),
        );
        assert!(report.passes >= 1, "{report:?}");
        assert_eq!(report.first_bytes, SNARFS * SNARF);
        assert!(report.recopied_bytes > 0, "the writer's snarfs came again");
    }
}

#[test]
fn converge_runs_several_passes_while_the_dirty_set_shrinks() {
    // Nothing counts as small: only a dirty set that stops shrinking, or the cap, ends it.
    let policy = ConvergePolicy {
        max_passes: 8,
        small_bytes: 0,
        small_ratio: 0.0,
    };
    let report = run(
        7,
        Duration::from_millis(2),
        Duration::from_micros(100),
        policy,
    );
    assert!(report.passes >= 2, "{report:?}");
}

#[test]
fn converge_ends_at_the_cap_when_the_writer_outruns_it() {
    // The writer never pauses and each copy is slow: the dirty set never gets small.
    let policy = ConvergePolicy {
        max_passes: 3,
        small_bytes: 0,
        small_ratio: 0.0,
    };
    let report = run(11, Duration::ZERO, Duration::from_micros(300), policy);
    assert!(report.passes <= 3, "{report:?}");
    assert!(
        report.frozen_snarfs > 0,
        "the frozen pass had work: {report:?}"
    );
}
