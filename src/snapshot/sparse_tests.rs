//! Tests of bookkeeping in proportion to use: a terabyte volume costs memory and saved
//! stamps in proportion to what was written, and a snapshot knows its holes (what reads as
//! zeros) without reading them, exactly where a snarf-by-snarf reading says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::store::{InitOptions, Store};

const TIB: u64 = 1 << 40;

fn new_store(dir: &Path, snarf_size: u64) -> PathBuf {
    let root = dir.join("s");
    let opts = InitOptions {
        snarf_size,
        ..InitOptions::default()
    };
    Store::init(&root, &opts).unwrap();
    root
}

fn engine(root: &Path) -> Engine {
    let store = Store::open(root, "test").unwrap();
    let opts = EngineOptions::from_store(&store);
    Engine::new(store, opts).unwrap()
}

#[test]
fn a_terabyte_volume_costs_bookkeeping_in_proportion_to_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let e = engine(&root);
    let v = e.create_volume("big.img", TIB).unwrap();
    let idle = v.metadata_bytes();
    // Today's flat stamps took 128 MiB here.
    assert!(
        idle < 1 << 20,
        "{idle} bytes of bookkeeping for an unwritten 1 TiB volume"
    );

    // 256 scattered extents of 256 KiB (64 MiB written, 1024 snarfs), some under a
    // snapshot, so they are written in more than one epoch.
    let extent = vec![7u8; 256 << 10];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for n in 0..256u64 {
        if n == 128 {
            e.take("half").unwrap();
        }
        let at = n * (TIB / 256) + rng.random_range(0..1000u64) * (64 << 10);
        e.write(&v, at, &extent).unwrap();
    }
    let written = 256 * 4;
    let used = v.metadata_bytes() - idle;
    assert!(
        used <= 18 * written,
        "{used} bytes of stamps for {written} written snarfs"
    );
    e.close().unwrap();
    drop(e);
    let saved = std::fs::metadata(root.join("state/stamps").join(format!("{:016x}", v.id())))
        .unwrap()
        .len();
    // Today's file held 8 bytes per snarf: 128 MiB.
    assert!(saved < 64 << 10, "{saved} bytes of saved stamps");

    // They come back as they were: the next session's changes are told apart.
    let e = engine(&root);
    let v = e.volume("big.img").unwrap();
    let since = e.take("base").unwrap().epoch();
    e.write(&v, TIB - 10, b"tail").unwrap();
    let s = e.take("after").unwrap();
    match e.changed_snarfs(&s, "big.img", since).unwrap() {
        Changed::Snarfs(set) => assert_eq!(set.iter().collect::<Vec<_>>(), vec![(TIB >> 16) - 1]),
        Changed::Lost { reason } => panic!("{reason}"),
    }
}

/// What a snapshot reads in snarf `i`, byte for byte, is all zeros.
fn reads_zero(e: &Engine, s: &Snapshot, vol: &str, i: u64, snarf: u64) -> bool {
    let mut buf = vec![0u8; snarf as usize];
    let n = e.read_snapshot(s, vol, i * snarf, &mut buf).unwrap();
    buf[..n].iter().all(|&b| b == 0)
}

#[test]
fn snapshot_holes_are_found_without_reading_and_never_hide_data() {
    let snarf = 4096u64;
    let count = 300u64;
    for seed in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = new_store(dir.path(), snarf);
        let e = engine(&root);
        let v = e.create_volume("v", count * snarf).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut write_some = |e: &Engine, zeros: bool| {
            for _ in 0..rng.random_range(1..12) {
                let at = rng.random_range(0..count * snarf);
                let len = rng.random_range(1..6 * snarf).min(count * snarf - at);
                let fill = if zeros {
                    0
                } else {
                    rng.random_range(1..=255u8)
                };
                e.write(&v, at, &vec![fill; len as usize]).unwrap();
            }
        };
        write_some(&e, false);
        let s = e.take("s").unwrap();
        // After the snapshot: data over holes, zeros over data, and data again.
        write_some(&e, false);
        write_some(&e, true);
        let sv = s.volume("v").unwrap();
        let zero: Vec<bool> = (0..count)
            .map(|i| reads_zero(&e, &s, "v", i, snarf))
            .collect();
        let data = e.data_snarfs(&s, sv);
        for i in 0..count {
            if !zero[i as usize] {
                assert!(data.contains(i), "seed {seed}: snarf {i} holds data");
            }
            // Everything skipped reads as zeros (so no data comes before the answer).
            let skipped = e.next_data_snarf(&s, sv, i).unwrap_or(count);
            assert!(
                (i..skipped).all(|j| zero[j as usize]),
                "seed {seed}: from {i} told the next data is at {skipped}"
            );
            if let Some(h) = e.next_hole_snarf(&s, sv, i) {
                assert!(h >= i && zero[h as usize], "seed {seed}: {h} is no hole");
            }
        }
    }
}

#[test]
fn a_terabyte_snapshot_finds_its_data_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let e = engine(&root);
    let v = e.create_volume("big.img", TIB).unwrap();
    e.write(&v, TIB / 2, b"middle").unwrap();
    e.write(&v, TIB - 6, b"needle").unwrap();
    let s = e.take("s").unwrap();
    // A write after the snapshot over a hole keeps it a hole for the snapshot.
    e.write(&v, TIB / 4, b"later").unwrap();
    let sv = s.volume("big.img").unwrap();
    let last = (TIB >> 16) - 1;
    let start = Instant::now();
    assert_eq!(e.next_data_snarf(&s, sv, 0), Some((TIB / 2) >> 16));
    assert_eq!(e.next_data_snarf(&s, sv, ((TIB / 2) >> 16) + 1), Some(last));
    assert_eq!(
        e.next_hole_snarf(&s, sv, (TIB / 2) >> 16),
        Some(((TIB / 2) >> 16) + 1)
    );
    let data = e.data_snarfs(&s, sv);
    assert_eq!(data.iter().collect::<Vec<_>>(), vec![(TIB / 2) >> 16, last]);
    // 16 million snarfs, answered by a few seeks and skips of unwritten groups.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
