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

/// A page cache the test controls: which snarfs are resident, how many snarfs a window
/// holds, whether asking fails, and every question asked.
#[derive(Default)]
struct FakeCache {
    resident: Mutex<HashSet<(VolumeId, u64)>>,
    window_snarfs: u64,
    fail: std::sync::atomic::AtomicBool,
    calls: Mutex<Vec<(VolumeId, Vec<u64>)>>,
}

impl FakeCache {
    fn new(window_snarfs: u64) -> Arc<FakeCache> {
        Arc::new(FakeCache {
            window_snarfs,
            ..FakeCache::default()
        })
    }

    fn set(&self, e: &Engine, name: &str, snarfs: &[u64]) {
        let id = e.volume(name).unwrap().id();
        self.resident.lock().extend(snarfs.iter().map(|&s| (id, s)));
    }
}

impl Residency for FakeCache {
    fn window_bytes(&self) -> u64 {
        self.window_snarfs * SNARF
    }

    fn resident(&self, volume: &crate::store::Volume, snarfs: &[u64]) -> std::io::Result<Vec<u64>> {
        self.calls.lock().push((volume.id(), snarfs.to_vec()));
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        let r = self.resident.lock();
        Ok(snarfs
            .iter()
            .copied()
            .filter(|&s| r.contains(&(volume.id(), s)))
            .collect())
    }
}

fn whole(names: &[&str]) -> Vec<FeedVolume> {
    names
        .iter()
        .map(|n| FeedVolume {
            name: n.to_string(),
            only: None,
        })
        .collect()
}

fn drain(feed: &Feed) -> Vec<(usize, u64, Tier)> {
    let mut out = Vec::new();
    loop {
        let batch = feed.next(3);
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.into_iter().map(|h| (h.vol, h.snarf, h.tier)));
    }
}

#[test]
fn cached_snarfs_go_after_held_ones_and_before_cold_ones_ascending() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("a", 16 * SNARF).unwrap();
    e.create_volume("b", 8 * SNARF).unwrap();
    fill(&e, "a", 16, 1);
    fill(&e, "b", 8, 2);
    let snap = e.take("s").unwrap();
    poke(&e, "a", 5); // held
    let cache = FakeCache::new(4);
    cache.set(&e, "a", &[14, 3, 12, 7, 5]);
    cache.set(&e, "b", &[6, 1]);
    let feed =
        Feed::with_residency(e.clone(), snap, whole(&["a", "b"]), Some(cache.clone())).unwrap();
    let order = drain(&feed);
    use Tier::*;
    let mut want = vec![(0, 5, Held)];
    want.extend([3, 7, 12, 14].map(|s| (0, s, Cached)));
    want.extend([1, 6].map(|s| (1, s, Cached)));
    want.extend([0, 1, 2, 4, 6, 8, 9, 10, 11, 13, 15].map(|s| (0, s, Cold)));
    want.extend([0, 2, 3, 4, 5, 7].map(|s| (1, s, Cold)));
    assert_eq!(order, want);
    let st = feed.stats();
    assert_eq!((st.held, st.cached, st.cold, st.urgent), (1, 6, 17, 0));
    // Each question covers one aligned window, ascending, and never names a snarf
    // already handed out (5 went out as held before any probe).
    let calls = cache.calls.lock();
    // The first pass asks about the 4 windows of a, then the 2 of b; later passes (after
    // every 4 cold snarfs) only about what is still ahead of the sequential pass.
    let first: Vec<u64> = calls[..6].iter().map(|(_, s)| s[0] / 4).collect();
    assert_eq!(first, [0, 1, 2, 3, 0, 1], "{calls:?}");
    for (_, snarfs) in calls.iter() {
        assert!(snarfs.windows(2).all(|w| w[0] < w[1]), "{snarfs:?}");
        assert_eq!(snarfs[0] / 4, snarfs[snarfs.len() - 1] / 4, "{snarfs:?}");
    }
    assert!(!calls[1].1.contains(&5), "{:?}", calls[1]);
}

#[test]
fn the_cached_tier_looks_again_once_the_cold_tier_has_read_a_share() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 64 * SNARF).unwrap();
    fill(&e, "v", 64, 1);
    let snap = e.take("s").unwrap();
    let cache = FakeCache::new(4);
    let feed = Feed::with_residency(e.clone(), snap, whole(&["v"]), Some(cache.clone())).unwrap();
    // Nothing in memory: one pass over the 16 windows, then disk order.
    let first = feed.next(1);
    assert_eq!((first[0].snarf, first[0].tier), (0, Tier::Cold));
    assert_eq!(cache.calls.lock().len(), 16);
    // The workload reads 40, 41 and 0 (already out); the next pass waits until the cold
    // tier has handed out a window's worth (4 snarfs).
    cache.set(&e, "v", &[41, 40, 0]);
    let some: Vec<_> = feed.next(3).iter().map(|h| (h.snarf, h.tier)).collect();
    assert_eq!(some, [1, 2, 3].map(|s| (s, Tier::Cold)));
    assert_eq!(cache.calls.lock().len(), 16, "no probe while resting");
    let more: Vec<_> = feed.next(3).iter().map(|h| (h.snarf, h.tier)).collect();
    assert_eq!(
        more,
        vec![(40, Tier::Cached), (41, Tier::Cached), (4, Tier::Cold)]
    );
    // The second pass started at the sequential pass's place: nothing behind it asked.
    let calls = cache.calls.lock();
    assert!(
        calls[16..].iter().all(|(_, s)| s[0] >= 4),
        "{:?}",
        &calls[16..]
    );
    drop(calls);
    let rest = drain(&feed);
    assert_eq!(rest.len(), 64 - 7);
    assert!(rest.iter().all(|&(_, s, _)| s != 40 && s != 41 && s > 4));
}

#[test]
fn a_failing_residency_turns_the_cached_tier_off() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 12 * SNARF).unwrap();
    fill(&e, "v", 12, 1);
    let snap = e.take("s").unwrap();
    let cache = FakeCache::new(4);
    cache.set(&e, "v", &[9]);
    cache.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let feed = Feed::with_residency(e.clone(), snap, whole(&["v"]), Some(cache.clone())).unwrap();
    let order: Vec<u64> = drain(&feed).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(order, (0..12).collect::<Vec<_>>());
    assert_eq!(cache.calls.lock().len(), 1, "asked once, then off");
    assert_eq!(feed.stats().cold, 12);
}

#[test]
fn the_kernel_page_cache_finds_what_was_read_after_an_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 64, 0);
    e.create_volume("v", 32 * SNARF).unwrap();
    fill(&e, "v", 32, 7);
    let v = e.volume("v").unwrap();
    v.sync_data().unwrap();
    let pc = PageCache::default();
    let all: Vec<u64> = (0..32).collect();
    crate::sys::pagecache::evict(v.file(), 0, 32 * SNARF).unwrap();
    let cold = pc.resident(&v, &all).unwrap();
    if cold.len() == 32 {
        // A file system that keeps every page in memory (tmpfs) cannot be evicted.
        eprintln!("skipped: the test folder's file system does not drop pages");
        return;
    }
    assert!(cold.is_empty(), "{cold:?}");
    let mut buf = vec![0u8; SNARF as usize];
    for s in [3, 17, 30] {
        v.read_snarf(s, &mut buf).unwrap();
    }
    assert_eq!(pc.resident(&v, &all).unwrap(), vec![3, 17, 30]);
    // mincore(2) answers the same as cachestat(2).
    let pc = PageCache::mincore_only();
    assert_eq!(pc.resident(&v, &all).unwrap(), vec![3, 17, 30]);
}

/// Random volumes, plans, held pre-images, captures, batch sizes and page-cache contents
/// (changing or not, failing or not): every planned snarf goes out exactly once, nothing
/// else does, a cached one was resident when asked, and with a still cache every cached
/// snarf goes out before any cold one, each tier ascending.
#[test]
fn random_feeds_hand_out_every_planned_snarf_once_in_tier_order() {
    use rand::{Rng, SeedableRng};
    for seed in 0..80u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let still = seed % 2 == 0;
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), rng.random_range(1..8), 64);
        let nvols = rng.random_range(1..=3);
        let mut names = Vec::new();
        let mut counts = Vec::new();
        for n in 0..nvols {
            let name = format!("v{n}");
            let count = rng.random_range(1..40u64);
            e.create_volume(&name, count * SNARF).unwrap();
            fill(&e, &name, rng.random_range(0..=count), n as u8 + 1);
            names.push(name);
            counts.push(count);
        }
        let snap = e.take("s").unwrap();
        for _ in 0..rng.random_range(0..6) {
            let n = rng.random_range(0..nvols);
            poke(&e, &names[n], rng.random_range(0..counts[n]));
        }
        let cache = FakeCache::new(rng.random_range(1..9));
        let mut planned = HashSet::new();
        let mut volumes = Vec::new();
        for n in 0..nvols {
            let only = rng.random_bool(0.5).then(|| {
                let mut set = SnarfSet::new(counts[n]);
                for s in 0..counts[n] {
                    if rng.random_bool(0.4) {
                        set.insert(s);
                    }
                }
                set
            });
            for s in 0..counts[n] {
                if only.as_ref().is_none_or(|o| o.contains(s)) {
                    planned.insert((n, s));
                }
                if rng.random_bool(0.3) {
                    cache.set(&e, &names[n], &[s]);
                }
            }
            volumes.push(FeedVolume {
                name: names[n].clone(),
                only,
            });
        }
        let feed = Feed::with_residency(e.clone(), snap, volumes, Some(cache.clone())).unwrap();
        assert_eq!(feed.stats().remaining, planned.len() as u64, "seed {seed}");
        let ids: Vec<VolumeId> = names.iter().map(|n| e.volume(n).unwrap().id()).collect();
        let mut ever: HashSet<(VolumeId, u64)> = cache.resident.lock().clone();
        let mut out: Vec<Handed> = Vec::new();
        loop {
            let batch = feed.next(rng.random_range(1..7));
            if batch.is_empty() {
                break;
            }
            for h in &batch {
                if h.tier == Tier::Cached {
                    assert!(ever.contains(&(ids[h.vol], h.snarf)), "seed {seed}: {h:?}");
                }
            }
            out.extend(batch);
            if !still {
                if rng.random_bool(0.3) {
                    let n = rng.random_range(0..nvols);
                    poke(&e, &names[n], rng.random_range(0..counts[n]));
                }
                if rng.random_bool(0.3) {
                    let n = rng.random_range(0..nvols);
                    let s = rng.random_range(0..counts[n]);
                    cache.set(&e, &names[n], &[s]);
                    ever.insert((ids[n], s));
                }
                if rng.random_bool(0.2) {
                    cache.resident.lock().clear();
                }
                if rng.random_bool(0.05) {
                    cache.fail.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let mut seen = HashSet::new();
        for h in &out {
            assert!(seen.insert((h.vol, h.snarf)), "seed {seed}: {h:?} twice");
        }
        assert_eq!(seen, planned, "seed {seed}");
        let st = feed.stats();
        assert_eq!(st.remaining, 0);
        assert_eq!(
            st.urgent + st.held + st.cached + st.cold,
            planned.len() as u64,
            "seed {seed}: {st:?}"
        );
        for (_, snarfs) in cache.calls.lock().iter() {
            assert!(snarfs.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
            let w = cache.window_snarfs;
            assert_eq!(snarfs[0] / w, snarfs[snarfs.len() - 1] / w, "seed {seed}");
        }
        if still {
            let key = |h: &Handed| (h.vol, h.snarf);
            let cached: Vec<_> = out.iter().filter(|h| h.tier == Tier::Cached).collect();
            let cold: Vec<_> = out.iter().filter(|h| h.tier == Tier::Cold).collect();
            assert!(
                cached.windows(2).all(|w| key(w[0]) < key(w[1])),
                "seed {seed}"
            );
            assert!(
                cold.windows(2).all(|w| key(w[0]) < key(w[1])),
                "seed {seed}"
            );
            let first_cold = out.iter().position(|h| h.tier == Tier::Cold);
            let last_cached = out.iter().rposition(|h| h.tier == Tier::Cached);
            if let (Some(c), Some(m)) = (first_cold, last_cached) {
                assert!(
                    m < c,
                    "seed {seed}: a cold snarf went out before a cached one"
                );
            }
            // Every resident planned snarf not held went out as cached.
            let resident = cache.resident.lock();
            for h in &out {
                if h.tier == Tier::Cold {
                    assert!(
                        !resident.contains(&(ids[h.vol], h.snarf)),
                        "seed {seed}: {h:?}"
                    );
                }
            }
        }
    }
}
