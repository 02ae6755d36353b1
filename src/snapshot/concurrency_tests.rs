//! Concurrency tests: writer threads each write a numbered sequence of stamped blocks while
//! snapshots are taken and read; every snapshot must show each writer's writes as an exact
//! prefix of its sequence (no torn or reordered write). And the throttling test: with tiny
//! budgets and no reader, writers slow down, a snapshot is broken, writers go on, and the
//! other snapshot stays exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::store::{InitOptions, Store};

const SNARF: u64 = 4096;
/// Block length: not a multiple of the snarf size, so blocks straddle snarfs and share
/// them with other writers' blocks.
const BLOCK: u64 = 5000;
const WRITERS: u64 = 4;
const BLOCKS_PER_WRITER: u64 = 24;
const ROUNDS: u64 = 60;

fn engine(dir: &std::path::Path, mem: u64, disk: u64, break_after: f64) -> Engine {
    let root = dir.join("store");
    let opts = InitOptions {
        snarf_size: SNARF,
        budgets: Budgets {
            memory: mem,
            disk,
            break_after_secs: break_after,
        },
        repository: None,
        // The volatile tier is what these tests are about.
        snapshots: crate::store::Durability::Volatile,
    };
    Store::init(&root, &opts).unwrap();
    let store = Store::open(&root, "concurrency test").unwrap();
    let mut eo = EngineOptions::from_store(&store);
    eo.pace_from = 1.0;
    Engine::new(store, eo).unwrap()
}

/// Where writer `w`'s block `k` lives: volume `k % 2`, interleaved with the other writers.
fn place(w: u64, k: u64) -> (usize, u64) {
    ((k % 2) as usize, ((k / 2) * WRITERS + w) * BLOCK)
}

/// The contents of sequence number `seq` of writer `w` (block `seq % BLOCKS`, round
/// `seq / BLOCKS`): a 16-byte stamp repeated.
fn stamped(w: u64, seq: u64) -> Vec<u8> {
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&(w + 1).to_le_bytes());
    stamp[8..].copy_from_slice(&(seq + 1).to_le_bytes());
    stamp.iter().copied().cycle().take(BLOCK as usize).collect()
}

/// Checks one snapshot: for each writer, the visible blocks are exactly the result of a
/// prefix of its sequence. Returns the prefix lengths.
fn check_prefixes(engine: &Engine, snap: &Snapshot) -> Vec<u64> {
    let names = ["a", "b"];
    let mut prefixes = Vec::new();
    for w in 0..WRITERS {
        // Read what each block shows: 0 for never written, else seq + 1.
        let mut shown = Vec::new();
        for k in 0..BLOCKS_PER_WRITER {
            let (v, off) = place(w, k);
            let mut buf = vec![0u8; BLOCK as usize];
            let n = engine.read_snapshot(snap, names[v], off, &mut buf).unwrap();
            buf.truncate(n);
            buf.resize(BLOCK as usize, 0);
            let seq_plus_one = u64::from_le_bytes(buf[8..16].try_into().unwrap());
            let want = if seq_plus_one == 0 {
                vec![0u8; BLOCK as usize]
            } else {
                stamped(w, seq_plus_one - 1)
            };
            assert!(
                buf == want,
                "snapshot {}: writer {w} block {k} is torn or foreign (shows seq {seq_plus_one})",
                snap.name()
            );
            shown.push(seq_plus_one);
        }
        // The prefix length is one past the newest sequence number visible.
        let prefix = shown.iter().copied().max().unwrap_or(0);
        for (k, &s) in shown.iter().enumerate() {
            let k = k as u64;
            // Newest write to block k among sequence numbers < prefix.
            let expect = (0..ROUNDS)
                .map(|r| r * BLOCKS_PER_WRITER + k)
                .filter(|&seq| seq < prefix)
                .max()
                .map_or(0, |seq| seq + 1);
            assert_eq!(
                s,
                expect,
                "snapshot {}: writer {w} block {k} shows seq {s} but a prefix of {prefix} writes means {expect}",
                snap.name()
            );
        }
        prefixes.push(prefix);
    }
    prefixes
}

#[test]
fn snapshots_see_a_prefix_of_every_writers_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(dir.path(), 64 << 20, 64 << 20, 30.0));
    engine.create_volume("a", 0).unwrap();
    engine.create_volume("b", 0).unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let vols = [engine.volume("a").unwrap(), engine.volume("b").unwrap()];
                for seq in 0..ROUNDS * BLOCKS_PER_WRITER {
                    let (v, off) = place(w, seq % BLOCKS_PER_WRITER);
                    engine.write(&vols[v], off, &stamped(w, seq)).unwrap();
                }
            })
        })
        .collect();

    // Take, verify while writers run, and release snapshots until the writers finish.
    let mut seen = 0;
    let mut partial = 0;
    let mut kept = Vec::new();
    let mut n = 0;
    while !writers.iter().all(|h| h.is_finished()) || n < 3 {
        let name = format!("s{n}");
        n += 1;
        let snap = engine.take(&name).unwrap();
        let prefixes = check_prefixes(&engine, &snap);
        if prefixes
            .iter()
            .any(|&p| p > 0 && p < ROUNDS * BLOCKS_PER_WRITER)
        {
            partial += 1;
        }
        seen += 1;
        if n % 3 == 0 {
            kept.push(snap);
        } else {
            engine.release(&name).unwrap();
        }
    }
    for h in writers {
        h.join().unwrap();
    }
    // Snapshots kept across the whole run are still exact after all later writes.
    for snap in &kept {
        check_prefixes(&engine, snap);
    }
    let last = engine.take("final").unwrap();
    assert_eq!(
        check_prefixes(&engine, &last),
        vec![ROUNDS * BLOCKS_PER_WRITER; WRITERS as usize]
    );
    assert!(seen >= 3);
    assert!(
        partial >= 2,
        "too few snapshots landed mid-run ({partial} of {seen}) to test anything"
    );
    assert_eq!(engine.stats().broken, 0);
}

#[test]
fn full_budgets_throttle_then_break_the_biggest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 40 pre-images in all: 8 in memory, 32 spilled.
    let engine = Arc::new(engine(dir.path(), 8 * SNARF, 32 * SNARF, 0.5));
    let vol = engine.create_volume("v", 64 * SNARF).unwrap();
    let mut oracle = vec![0u8; 64 * SNARF as usize];
    for i in 0..64u64 {
        let fill = vec![(i as u8) | 0x80; SNARF as usize];
        engine.write(&vol, i * SNARF, &fill).unwrap();
        oracle[(i * SNARF) as usize..((i + 1) * SNARF) as usize].copy_from_slice(&fill);
    }
    engine.take("big").unwrap();
    // 30 pre-images only "big" needs.
    for i in 0..30u64 {
        engine.write(&vol, i * SNARF, &[1u8; 100]).unwrap();
        oracle[(i * SNARF) as usize..(i * SNARF + 100) as usize].fill(1);
    }
    engine.take("small").unwrap();
    let small_oracle = oracle.clone();
    // 5 pre-images only "small" needs: 35 of 40 slots used.
    for i in 0..5u64 {
        engine.write(&vol, i * SNARF, &[2u8; 100]).unwrap();
    }
    // Writers now touch 34 snarfs both snapshots need: 5 fit, then they must wait until
    // the limit, and "big" (35 needed vs 10) is broken.
    let start = Instant::now();
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let engine = engine.clone();
            let vol = vol.clone();
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for i in (30 + t..64).step_by(2) {
                    let t0 = Instant::now();
                    engine.write(&vol, i * SNARF + 7, &[3u8; 300]).unwrap();
                    slowest = slowest.max(t0.elapsed());
                }
                slowest
            })
        })
        .collect();
    let slowest: Vec<Duration> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        slowest.iter().any(|d| *d >= Duration::from_millis(400)),
        "writers were not held up: {slowest:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "writers took too long"
    );
    let stats = engine.stats();
    assert_eq!(stats.broken, 1, "exactly one snapshot should be broken");
    assert!(stats.throttle_events > 0);
    match engine.snapshot("big").unwrap().state() {
        SnapState::Broken(reason) => assert!(reason.contains("pre-image room"), "{reason}"),
        other => panic!("big should be broken, is {other:?}"),
    }
    let small = engine.snapshot("small").unwrap();
    assert_eq!(small.state(), SnapState::Live);
    let mut buf = vec![0u8; small_oracle.len()];
    assert_eq!(
        engine.read_snapshot(&small, "v", 0, &mut buf).unwrap(),
        buf.len()
    );
    assert!(buf == small_oracle, "the surviving snapshot is not exact");
}
