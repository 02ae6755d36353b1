//! Feed order, urgent captures, exactly-once hand-out and acknowledgements, against a real
//! engine over a temporary store.

use std::collections::HashSet;

use super::*;
use crate::snapshot::EngineOptions;
use crate::store::{Budgets, InitOptions, Store};

const SNARF: u64 = 4096;

fn engine(dir: &std::path::Path, mem_snarfs: u64, disk_snarfs: u64) -> Arc<Engine> {
    let root = dir.join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets {
                memory: mem_snarfs * SNARF,
                disk: disk_snarfs * SNARF,
                break_after_secs: 30.0,
            },
            repository: None,
            // The volatile tier is what these tests are about.
            snapshots: crate::store::Durability::Volatile,
        },
    )
    .unwrap();
    let store = Store::open(&root, "feed test").unwrap();
    let mut opts = EngineOptions::from_store(&store);
    opts.pace_from = 1.0;
    Arc::new(Engine::new(store, opts).unwrap())
}

fn fill(e: &Engine, name: &str, snarfs: u64, byte: u8) {
    let v = e.volume(name).unwrap();
    e.write(&v, 0, &vec![byte; (snarfs * SNARF) as usize])
        .unwrap();
}

fn poke(e: &Engine, name: &str, snarf: u64) {
    let v = e.volume(name).unwrap();
    e.write(&v, snarf * SNARF + 7, b"new").unwrap();
}

fn all(feed: &Feed) -> Vec<u64> {
    feed.next(1000).into_iter().map(|h| h.snarf).collect()
}

#[test]
fn memory_before_spill_before_sequential_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 2, 8);
    e.create_volume("v", 16 * SNARF).unwrap();
    fill(&e, "v", 16, 1);
    let snap = e.take("s").unwrap();
    // The first two captures fill memory; the next two spill.
    for i in [9, 5, 12, 10] {
        poke(&e, "v", i);
    }
    let v = e.volume("v").unwrap();
    assert_eq!(
        e.preimage_location(&snap, v.id(), 9),
        Some(Location::Memory)
    );
    assert_eq!(
        e.preimage_location(&snap, v.id(), 12),
        Some(Location::Spill)
    );
    let feed = Feed::new(
        e.clone(),
        snap,
        vec![FeedVolume {
            name: "v".into(),
            only: None,
        }],
    )
    .unwrap();
    assert_eq!(feed.stats().remaining, 16);
    let order = all(&feed);
    assert_eq!(
        order,
        vec![5, 9, 10, 12, 0, 1, 2, 3, 4, 6, 7, 8, 11, 13, 14, 15]
    );
    assert!(feed.next(10).is_empty());
    let st = feed.stats();
    assert_eq!((st.remaining, st.held, st.urgent), (0, 4, 0));
}

#[test]
fn urgent_captures_jump_the_queue_and_nothing_comes_twice() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("a", 8 * SNARF).unwrap();
    e.create_volume("b", 8 * SNARF).unwrap();
    fill(&e, "a", 8, 1);
    fill(&e, "b", 8, 2);
    let snap = e.take("s").unwrap();
    let feed = Feed::new(
        e.clone(),
        snap,
        vec![
            FeedVolume {
                name: "a".into(),
                only: None,
            },
            FeedVolume {
                name: "b".into(),
                only: None,
            },
        ],
    )
    .unwrap();
    let first: Vec<Handed> = feed.next(3);
    assert_eq!(
        first.iter().map(|h| (h.vol, h.snarf)).collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (0, 2)]
    );
    // A write to a snarf already handed out brings nothing back; one not yet handed out
    // comes next, ahead of the sequential order, even in another volume.
    poke(&e, "a", 1);
    poke(&e, "b", 6);
    poke(&e, "a", 5);
    let next = feed.next(2);
    assert_eq!(
        next.iter().map(|h| (h.vol, h.snarf)).collect::<Vec<_>>(),
        vec![(1, 6), (0, 5)]
    );
    let mut seen: HashSet<(usize, u64)> = first
        .iter()
        .chain(&next)
        .map(|h| (h.vol, h.snarf))
        .collect();
    loop {
        let batch = feed.next(4);
        if batch.is_empty() {
            break;
        }
        for h in batch {
            assert!(seen.insert((h.vol, h.snarf)), "{h:?} handed out twice");
            // Writes while the job runs, to snarfs before and after the cursor.
            poke(&e, if h.vol == 0 { "b" } else { "a" }, (h.snarf + 3) % 8);
        }
    }
    assert_eq!(seen.len(), 16, "every snarf handed out once");
    assert!(feed.stats().urgent >= 2, "{:?}", feed.stats());
}

#[test]
fn only_planned_snarfs_are_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 10 * SNARF).unwrap();
    fill(&e, "v", 10, 3);
    let snap = e.take("s").unwrap();
    poke(&e, "v", 4); // held, but not planned
    let mut only = SnarfSet::new(10);
    for i in [2, 7, 8] {
        only.insert(i);
    }
    let feed = Feed::new(
        e.clone(),
        snap,
        vec![FeedVolume {
            name: "v".into(),
            only: Some(only),
        }],
    )
    .unwrap();
    assert_eq!(feed.stats().remaining, 3);
    poke(&e, "v", 3); // not planned either
    poke(&e, "v", 8); // planned: urgent
    assert_eq!(all(&feed), vec![8, 2, 7]);
}

#[test]
fn acks_free_preimages_and_reads_give_the_frozen_contents() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 6 * SNARF + 100).unwrap();
    fill(&e, "v", 4, 9); // snarfs 4, 5 and the short 6 stay holes
    let snap = e.take("s").unwrap();
    for i in 0..4 {
        poke(&e, "v", i);
    }
    assert_eq!(e.stats().cache.held, 4);
    let feed = Feed::new(
        e.clone(),
        snap.clone(),
        vec![FeedVolume {
            name: "v".into(),
            only: None,
        }],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut handed = feed.next(100);
    assert_eq!(handed.len(), 7);
    for h in handed.drain(..) {
        let data = feed.read(h, &mut buf).unwrap();
        let want_len = if h.snarf == 6 { 100 } else { SNARF as usize };
        assert_eq!(buf.len(), want_len);
        if h.snarf < 4 {
            assert!(data && buf.iter().all(|&b| b == 9), "snarf {}", h.snarf);
        } else {
            assert!(!data, "snarf {} is a hole", h.snarf);
        }
        let before = e.stats().cache.held;
        feed.ack(h.vol, h.snarf).unwrap();
        if h.snarf < 4 {
            assert_eq!(e.stats().cache.held, before - 1, "ack frees the pre-image");
        }
    }
    assert_eq!(e.stats().cache.held, 0);
    assert_eq!(e.stats().cache.mem_used, 0);
    // The snapshot now sends readers of acknowledged snarfs to the backup.
    let err = e.read_snapshot(&snap, "v", 0, &mut [0u8; 10]).unwrap_err();
    assert!(
        matches!(err, crate::snapshot::Error::StoredInBackup { snarf: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_dropped_feed_stops_watching() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 4 * SNARF).unwrap();
    fill(&e, "v", 4, 1);
    let snap = e.take("s").unwrap();
    let feed = Feed::new(
        e.clone(),
        snap,
        vec![FeedVolume {
            name: "v".into(),
            only: None,
        }],
    )
    .unwrap();
    drop(feed);
    poke(&e, "v", 2); // must not reach a dropped feed
    assert!(Feed::new(
        e.clone(),
        e.snapshot("s").unwrap(),
        vec![FeedVolume {
            name: "nope".into(),
            only: None,
        }],
    )
    .is_err());
}
