//! Tests of live restore at the engine: a volume served from a backup before its snarfs are
//! here. Reads fetch once, writes keep their bytes, the background copy fills the rest, a
//! snapshot reads what the backup had, a reopen resumes, and an unreachable repository fails
//! reads of missing snarfs only. The backup is an in-memory source that counts its fetches;
//! the oracle is the backup's bytes with every write applied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::chain::ErrorChain;
use crate::store::restored::{FetchError, Origin, Source};
use crate::store::{InitOptions, Store};

const SNARF: u64 = 4096;

/// A backup in memory: its bytes, a fetch count per snarf, and a switch that makes the
/// repository unreachable.
struct Backup {
    bytes: Vec<u8>,
    fetches: Vec<AtomicU32>,
    down: AtomicBool,
}

impl Backup {
    fn new(len: usize, seed: u64) -> Arc<Backup> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        // Some zero snarfs, as a sparse backup has.
        for k in (0..len / SNARF as usize).step_by(7) {
            bytes[k * SNARF as usize..(k + 1) * SNARF as usize].fill(0);
        }
        let count = len.div_ceil(SNARF as usize);
        Arc::new(Backup {
            bytes,
            fetches: (0..count).map(|_| AtomicU32::new(0)).collect(),
            down: AtomicBool::new(false),
        })
    }

    fn fetched(&self) -> u32 {
        self.fetches.iter().map(|f| f.load(Ordering::SeqCst)).sum()
    }

    fn max_fetches(&self) -> u32 {
        self.fetches
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .max()
            .unwrap_or(0)
    }
}

impl Source for Backup {
    fn fetch(&self, index: u64, buf: &mut [u8]) -> std::result::Result<(), FetchError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Box::new(std::io::Error::other(
                "the test repository is down",
            )));
        }
        self.fetches[index as usize].fetch_add(1, Ordering::SeqCst);
        let at = (index * SNARF) as usize;
        let end = (at + buf.len()).min(self.bytes.len());
        buf[..end - at].copy_from_slice(&self.bytes[at..end]);
        buf[end - at..].fill(0);
        // A repository takes a while: concurrent readers overlap.
        std::thread::sleep(std::time::Duration::from_micros(200));
        Ok(())
    }
}

fn new_store(dir: &Path) -> PathBuf {
    let root = dir.join("s");
    let opts = InitOptions {
        snarf_size: SNARF,
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

fn origin(size: u64) -> Origin {
    Origin {
        repository: "/nowhere/repo".into(),
        backup: "b-test".into(),
        volume: "vm.img".into(),
        size,
    }
}

fn restoring(e: &Engine, backup: &Arc<Backup>) -> Arc<Volume> {
    let v = e
        .create_restoring("vm.img", origin(backup.bytes.len() as u64))
        .unwrap();
    v.restore().unwrap().set_source(backup.clone());
    v
}

fn read_all(e: &Engine, v: &Volume) -> Vec<u8> {
    let mut out = vec![0u8; v.size() as usize];
    assert_eq!(e.read(v, 0, &mut out).unwrap(), out.len());
    out
}

#[test]
fn reads_fetch_each_missing_snarf_once_and_writes_keep_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let backup = Backup::new(64 * SNARF as usize + 100, 1);
    let v = restoring(&e, &backup);
    assert_eq!(v.size(), backup.bytes.len() as u64);
    let mut oracle = backup.bytes.clone();

    // A read of one byte fetches one snarf.
    let mut one = [0u8; 1];
    e.read(&v, 5 * SNARF + 3, &mut one).unwrap();
    assert_eq!(one[0], oracle[(5 * SNARF + 3) as usize]);
    assert_eq!(backup.fetched(), 1);

    // A whole-snarf write fetches nothing; a partial one fetches its snarf first.
    let whole = vec![0xabu8; SNARF as usize];
    e.write(&v, 9 * SNARF, &whole).unwrap();
    oracle[(9 * SNARF) as usize..(10 * SNARF) as usize].copy_from_slice(&whole);
    assert_eq!(backup.fetched(), 1);
    e.write(&v, 12 * SNARF + 10, b"partial").unwrap();
    oracle[(12 * SNARF + 10) as usize..(12 * SNARF + 17) as usize].copy_from_slice(b"partial");
    assert_eq!(backup.fetched(), 2);
    // A write across two missing snarfs, partial at both ends.
    let across = vec![0x5au8; SNARF as usize];
    e.write(&v, 20 * SNARF + SNARF / 2, &across).unwrap();
    oracle[(20 * SNARF + SNARF / 2) as usize..(21 * SNARF + SNARF / 2) as usize]
        .copy_from_slice(&across);
    assert_eq!(backup.fetched(), 4);

    assert_eq!(read_all(&e, &v), oracle);
    let count = backup.fetches.len() as u32;
    // Every snarf fetched once, but the one written whole: never.
    assert_eq!(backup.fetched(), count - 1);
    assert_eq!(backup.max_fetches(), 1);
    assert_eq!(backup.fetches[9].load(Ordering::SeqCst), 0);
    assert_eq!(read_all(&e, &v), oracle);
    assert_eq!(backup.fetched(), count - 1);
    // All local: the restore ends and its bitmap goes.
    let r = v.restore().unwrap();
    let path = r.path().to_path_buf();
    assert!(r.finish().unwrap());
    assert!(!path.exists());
    assert!(v.restore().is_none());
    assert_eq!(read_all(&e, &v), oracle);
}

#[test]
fn the_background_copy_fills_the_rest_in_order_and_skips_what_is_local() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let backup = Backup::new(300 * SNARF as usize, 2);
    let v = restoring(&e, &backup);
    let mut oracle = backup.bytes.clone();
    let whole = vec![0x11u8; 3 * SNARF as usize];
    e.write(&v, 100 * SNARF, &whole).unwrap();
    oracle[(100 * SNARF) as usize..(103 * SNARF) as usize].copy_from_slice(&whole);
    let r = v.restore().unwrap();
    let mut at = Some(0);
    let mut steps = 0;
    while let Some(from) = at {
        at = r.copy_next(&v, from, 16).unwrap();
        steps += 1;
    }
    assert!(steps <= 300 / 16 + 3, "{steps} steps");
    assert_eq!(r.missing(), 0);
    assert_eq!(backup.max_fetches(), 1);
    assert_eq!(backup.fetched(), 297);
    assert!(r.finish().unwrap());
    assert_eq!(read_all(&e, &v), oracle);
}

#[test]
fn concurrent_readers_writers_and_the_copy_match_the_oracle_and_fetch_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let count = 256u64;
    let backup = Backup::new((count * SNARF) as usize, 3);
    let v = restoring(&e, &backup);
    // Each writer owns its own snarfs (so the oracle is exact); readers and the copy go
    // everywhere at once.
    let writers = 3u64;
    let oracle = parking_lot::Mutex::new(backup.bytes.clone());
    std::thread::scope(|s| {
        for w in 0..writers {
            let (e, v, oracle) = (&e, &v, &oracle);
            s.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(10 + w);
                for _ in 0..150 {
                    let k = rng.random_range(0..count / writers) * writers + w;
                    let (at, len) = if rng.random_bool(0.5) {
                        (k * SNARF, SNARF as usize)
                    } else {
                        let off = rng.random_range(0..SNARF - 64);
                        (k * SNARF + off, rng.random_range(1..64usize))
                    };
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    let mut o = oracle.lock();
                    e.write(v, at, &data).unwrap();
                    o[at as usize..at as usize + len].copy_from_slice(&data);
                }
            });
        }
        for t in 0..4u64 {
            let (e, v, oracle) = (&e, &v, &oracle);
            s.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(20 + t);
                for _ in 0..300 {
                    let k = rng.random_range(0..count);
                    let mut buf = vec![0u8; SNARF as usize];
                    // Reads of snarfs no writer touches are exact at any time.
                    let o = oracle.lock();
                    e.read(v, k * SNARF, &mut buf).unwrap();
                    assert_eq!(buf, o[(k * SNARF) as usize..((k + 1) * SNARF) as usize]);
                }
            });
        }
        let (v, r) = (&v, v.restore().unwrap());
        s.spawn(move || {
            let mut at = Some(0);
            while let Some(from) = at {
                at = r.copy_next(v, from, 8).unwrap();
            }
        });
    });
    assert_eq!(read_all(&e, &v), *oracle.lock());
    assert_eq!(backup.max_fetches(), 1, "a snarf was fetched twice");
}

#[test]
fn a_snapshot_reads_the_backup_for_snarfs_not_restored_and_written_since() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let backup = Backup::new(32 * SNARF as usize, 4);
    let v = restoring(&e, &backup);
    let snap = e.take("before").unwrap();
    // Written whole after the snapshot, while not restored: the pre-image is the backup's.
    e.write(&v, 3 * SNARF, &vec![0xeeu8; SNARF as usize])
        .unwrap();
    e.write(&v, 4 * SNARF + 1, b"x").unwrap();
    let mut out = vec![0u8; backup.bytes.len()];
    e.read_snapshot(&snap, "vm.img", 0, &mut out).unwrap();
    assert_eq!(out, backup.bytes);
    // A backup job asks which snarfs hold data: missing ones are never taken for holes.
    let sv = snap.volume("vm.img").unwrap();
    let data = e.data_snarfs(&snap, sv);
    for k in 0..32u64 {
        let zero = backup.bytes[(k * SNARF) as usize..((k + 1) * SNARF) as usize]
            .iter()
            .all(|&b| b == 0);
        assert!(zero || data.contains(k), "snarf {k} taken for a hole");
    }
}

#[test]
fn an_unreachable_repository_fails_reads_of_missing_snarfs_only_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let backup = Backup::new(16 * SNARF as usize, 5);
    let v = restoring(&e, &backup);
    let mut buf = vec![0u8; SNARF as usize];
    e.read(&v, 0, &mut buf).unwrap();
    backup.down.store(true, Ordering::SeqCst);
    // Local snarfs read; a missing one fails with the reason, naming backup and repository.
    e.read(&v, 0, &mut buf).unwrap();
    let err = e.read(&v, SNARF, &mut buf).unwrap_err();
    let why = err.chain().to_string();
    assert!(
        why.contains("b-test") && why.contains("/nowhere/repo"),
        "{why}"
    );
    assert!(why.contains("the test repository is down"), "{why}");
    assert!(matches!(
        err,
        Error::Store(store::Error::Fetch { snarf: 1, .. })
    ));
    assert!(v.restore().unwrap().progress().failure.is_some());
    // Whole-snarf writes work; partial ones into a missing snarf cannot.
    e.write(&v, 2 * SNARF, &vec![1u8; SNARF as usize]).unwrap();
    assert!(e.write(&v, 3 * SNARF + 1, b"y").is_err());
    assert!(v.restore().unwrap().copy_next(&v, 0, 4).is_err());
    backup.down.store(false, Ordering::SeqCst);
    e.read(&v, SNARF, &mut buf).unwrap();
    assert_eq!(buf, backup.bytes[SNARF as usize..2 * SNARF as usize]);
    assert!(v.restore().unwrap().progress().failure.is_none());
    let mut at = Some(0);
    while let Some(from) = at {
        at = v.restore().unwrap().copy_next(&v, from, 4).unwrap();
    }
    let mut oracle = backup.bytes.clone();
    oracle[2 * SNARF as usize..3 * SNARF as usize].fill(1);
    assert_eq!(read_all(&e, &v), oracle);
}

#[test]
fn a_reopen_after_a_crash_resumes_keeps_writes_and_fetches_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let backup = Backup::new(40 * SNARF as usize, 6);
    let mut oracle = backup.bytes.clone();
    {
        let e = engine(&root);
        let v = restoring(&e, &backup);
        let mut buf = vec![0u8; 10 * SNARF as usize];
        e.read(&v, 0, &mut buf).unwrap();
        e.write(&v, 15 * SNARF, &vec![7u8; SNARF as usize]).unwrap();
        e.write(&v, 17 * SNARF + 5, b"kept").unwrap();
        oracle[15 * SNARF as usize..16 * SNARF as usize].fill(7);
        oracle[17 * SNARF as usize + 5..17 * SNARF as usize + 9].copy_from_slice(b"kept");
        // No close: the engine is dropped as a kill -9 leaves it (page cache kept).
        std::mem::forget(e);
    }
    let before = backup.fetched();
    assert_eq!(before, 11);
    // The store lock went with the process in real life; here a forgotten engine keeps it,
    // so the test reopens after taking the lock file away as the kernel would.
    std::fs::remove_file(root.join("run/store.lock")).unwrap();
    let e = engine(&root);
    let v = e.volume("vm.img").unwrap();
    let r = v.restore().expect("the restore resumes");
    assert_eq!(r.missing(), 40 - 12);
    r.set_source(backup.clone());
    assert_eq!(read_all(&e, &v), oracle);
    assert_eq!(backup.max_fetches(), 1, "a snarf was fetched twice");
    assert_eq!(backup.fetched(), 40 - 1);
}

#[test]
fn a_damaged_bitmap_page_blocks_only_its_volume_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let backup = Backup::new(8 * SNARF as usize, 7);
    let other = vec![0x42u8; 3 * SNARF as usize];
    let path = {
        let e = engine(&root);
        let v = restoring(&e, &backup);
        let o = e.create_volume("other.img", 0).unwrap();
        e.write(&o, 0, &other).unwrap();
        let path = v.restore().unwrap().path().to_path_buf();
        e.close().unwrap();
        path
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[crate::store::restored::PAGE + 100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    // The store opens; the other volume is served, read and written as usual.
    let e = engine(&root);
    let o = e.volume("other.img").unwrap();
    assert_eq!(read_all(&e, &o), other);
    e.write(&o, 0, b"still writable").unwrap();
    // The damaged one fails every read, write and truncate, naming the file and page.
    let v = e.volume("vm.img").unwrap();
    let named = |err: &Error| {
        let why = err.chain().to_string();
        assert!(
            why.contains(&path.display().to_string()) && why.contains("page 0"),
            "{why}"
        );
    };
    let mut buf = [0u8; 16];
    named(&e.read(&v, 0, &mut buf).unwrap_err());
    named(&e.write(&v, 0, &[1u8; SNARF as usize]).unwrap_err());
    named(&e.write(&v, SNARF + 3, b"partial").unwrap_err());
    named(&e.resize(&v, 0).unwrap_err());
    assert!(v.restore().is_none() && v.blocked().is_some());
    // A snapshot leaves it out and takes the others.
    let snap = e.take("s").unwrap();
    assert!(snap.volume("vm.img").is_none());
    let mut out = vec![0u8; other.len()];
    e.read_snapshot(&snap, "other.img", 0, &mut out).unwrap();
    assert_eq!(&out[..14], b"still writable");
    drop(snap);
    // Nothing was written over the file: the damage is still there for the user to see.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Deleting the volume is the way out: its bitmap goes with it.
    drop(v);
    e.delete_volume("vm.img").unwrap();
    e.close().unwrap();
    drop(e);
    assert!(!path.exists(), "the deleted volume's bitmap is left behind");
    let e = engine(&root);
    assert_eq!(e.store().volume_names(), vec!["other.img".to_string()]);
}

#[test]
fn a_volume_under_restore_refuses_to_shrink_and_may_grow() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let backup = Backup::new(8 * SNARF as usize, 8);
    let v = restoring(&e, &backup);
    let err = e.resize(&v, SNARF).unwrap_err();
    assert!(
        matches!(err, Error::Store(store::Error::Restoring { .. })),
        "{err}"
    );
    e.resize(&v, 10 * SNARF).unwrap();
    let all = read_all(&e, &v);
    assert_eq!(all[..8 * SNARF as usize], backup.bytes[..]);
    assert!(all[8 * SNARF as usize..].iter().all(|&b| b == 0));
}

/// Reads `len` bytes at `at` and returns whether the read fetched anything.
fn read_counting(e: &Engine, v: &Volume, backup: &Backup, at: u64, len: usize) -> bool {
    let before = backup.fetched();
    let mut buf = vec![0u8; len];
    assert_eq!(e.read(v, at, &mut buf).unwrap(), len);
    assert!(
        buf[..] == backup.bytes[at as usize..at as usize + len],
        "read at {at} differs from the backup"
    );
    backup.fetched() > before
}

#[test]
fn a_sequential_reader_gets_bounded_readahead_and_fetches_in_few_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let count = 4096u64;
    let backup = Backup::new((count * SNARF) as usize, 11);
    let v = restoring(&e, &backup);
    let r = v.restore().unwrap();
    let ahead = crate::store::restored::READAHEAD_BYTES / SNARF;
    let step = 2 * SNARF as usize;
    let mut batches = 0;
    let mut at = 0u64;
    while at < count * SNARF {
        if read_counting(&e, &v, &backup, at, step) {
            batches += 1;
        }
        let last = (at + step as u64 - 1) / SNARF;
        // Never more than the window past the reader.
        let bound = last + 1 + ahead;
        if bound < count {
            assert_eq!(
                r.next_missing(bound),
                Some(bound),
                "snarf {bound} was fetched more than {ahead} snarfs ahead of a reader at {last}"
            );
        }
        at += step as u64;
    }
    // 2048 reads; without readahead each would fetch.
    assert!(batches <= 24, "{batches} reads fetched");
    assert_eq!(backup.fetched() as u64, count, "each snarf fetched once");
    assert_eq!(backup.max_fetches(), 1);
    assert!(r.progress().read_ahead > count / 2, "{:?}", r.progress());
    assert_eq!(read_all(&e, &v), backup.bytes);
}

#[test]
fn random_and_repeated_reads_fetch_only_what_they_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let count = 1024u64;
    let backup = Backup::new((count * SNARF) as usize, 12);
    let v = restoring(&e, &backup);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut asked = std::collections::BTreeSet::new();
    for _ in 0..200 {
        // Never the snarf after one read before: a read that follows another is sequential.
        let k = 3 * rng.random_range(0..count / 3);
        let off = rng.random_range(0..SNARF - 16);
        read_counting(&e, &v, &backup, k * SNARF + off, 16);
        asked.insert(k);
    }
    // One snarf read over and over, in small pieces, never grows a window.
    for i in 0..64 {
        read_counting(&e, &v, &backup, 3 * SNARF + i * 16, 16);
    }
    asked.insert(3);
    assert_eq!(backup.fetched() as usize, asked.len());
    assert_eq!(v.restore().unwrap().progress().read_ahead, 0);
}

#[test]
fn interleaved_sequential_readers_each_keep_their_readahead() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let count = 2048u64;
    let backup = Backup::new((count * SNARF) as usize, 13);
    let v = restoring(&e, &backup);
    let half = count / 2 * SNARF;
    let mut batches = 0;
    let mut at = 0u64;
    while at < half {
        for base in [0, half] {
            if read_counting(&e, &v, &backup, base + at, SNARF as usize) {
                batches += 1;
            }
        }
        at += SNARF;
    }
    assert!(batches <= 40, "{batches} of {count} reads fetched");
    assert_eq!(backup.fetched() as u64, count);
}
