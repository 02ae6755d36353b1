//! Persistent snapshots under kill -9, at random instants, many times over: a child process
//! runs the engine with two writer threads (large and small writes, group-committed
//! pre-images) and a thread taking and releasing persistent snapshots, and logs each step
//! after it returned; the test kills it with SIGKILL at a random instant, opens the store
//! as the next mount would (recovery), and compares every persistent snapshot with the
//! oracle rebuilt from the log, byte for byte. Then an incremental backup of the volume
//! must read only the regions its write-intent bitmap had marked (the writers of a round
//! write into one or two of its three regions), and restore byte-exact: change tracking survives
//! the kill. Then the next child goes on from there.
//!
//! The child is this test binary itself, run with `SNARF_CRASH_CHILD` set.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snarf::jobs::{BackupOptions, JobService, Mode, NoProgress, Summary};
use snarf::snapshot::{Changed, Engine, EngineOptions, SnapState};
use snarf::store::{Budgets, Durability, InitOptions, Store};

const SNARF: u64 = 4096;
/// Snarfs of a write-intent region.
const REGION: u64 = snarf::store::intent::REGION_SNARFS;
/// Snarfs of the volume: three regions; in round R writer t writes only into region
/// [`hot`]`(R, t)`, so at least one region stays untouched.
const SNARFS: u64 = 3 * REGION;
const SIZE: u64 = SNARF * SNARFS;
const ROUNDS: u64 = 32;
/// Most persistent snapshots alive at once.
const KEEP: usize = 3;
const LOG: &str = "oracle.log";

fn contents(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// The region writer `t` writes into in round `round`.
fn hot(round: u64, t: u64) -> u64 {
    (round + t * (1 + round % 2)) % 3
}

fn open_engine(root: &Path) -> Engine {
    let store = Store::open(root, "crash test").expect("the store opens after kill -9");
    let opts = EngineOptions::from_store(&store);
    Engine::new(store, opts).expect("the engine recovers after kill -9")
}

/// Backs up snapshot `name` (taken now if there is none) into `repo` in this process;
/// returns the summary and the snapshot's epoch.
fn backup(e: &Arc<Engine>, repo: &snarf::repo::Repo, name: &str, mode: Mode) -> (Summary, u64) {
    let snap = match e.snapshot(name) {
        Ok(s) => s,
        Err(_) => e.take_with(name, Durability::Persistent).unwrap(),
    };
    let mut o = BackupOptions::new(name);
    o.mode = mode;
    let svc = JobService::new(e.clone(), None);
    let handle = snarf::repo::Handle::V1(repo.clone());
    let summary = snarf::jobs::pipeline::run(&svc, &handle, &o, &mut NoProgress).unwrap();
    (summary, snap.epoch())
}

/// The child: runs until killed. Every step is logged after it returned (a snapshot also
/// before it starts, so one the kill cut short is known), and writers pause while a
/// snapshot is taken or released, so the log says exactly what each snapshot froze.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SNARF_CRASH_CHILD") else {
        return;
    };
    let round: u64 = std::env::var("SNARF_CRASH_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let root = PathBuf::from(dir);
    let engine = Arc::new(open_engine(&root.join("store")));
    let vol = engine.volume("v").expect("volume v");
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join(LOG))
            .expect("the log"),
    ));
    let note = |log: &Mutex<std::fs::File>, line: String| {
        log.lock()
            .write_all(line.as_bytes())
            .expect("writing the log");
    };
    let pause = Arc::new(RwLock::new(()));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (engine, vol, log, pause) = (engine.clone(), vol.clone(), log.clone(), pause.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(round * 1000 + t);
            let span = REGION * SNARF;
            for n in 0.. {
                let big = rng.random_bool(0.2);
                let len = if big {
                    rng.random_range(SNARF..=16 * SNARF)
                } else {
                    rng.random_range(1..=2 * SNARF)
                };
                let at = rng.random_range(0..span - len);
                let offset = hot(round, t) * span + at;
                let seed = (round << 40) | (t << 32) | n;
                let data = contents(seed, len as usize);
                let _held = pause.read();
                engine.write(&vol, offset, &data).expect("a live write");
                note(&log, format!("W {offset} {len} {seed}\n"));
            }
        }));
    }
    let mut names: Vec<String> = engine
        .list()
        .into_iter()
        .filter(|s| s.state == SnapState::Live)
        .map(|s| s.name)
        .collect();
    let mut next = names.len() as u64 + round * 100;
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let _held = pause.write();
        if names.len() >= KEEP {
            let name = names.remove(0);
            note(&log, format!("r {name}\n"));
            engine.release(&name).expect("release");
            note(&log, format!("R {name}\n"));
        } else {
            let name = format!("s{next}");
            next += 1;
            note(&log, format!("s {name}\n"));
            engine.take(&name).expect("take");
            note(&log, format!("S {name}\n"));
            names.push(name);
        }
    }
}

/// What the log says so far: the volume as the logged writes left it, and each
/// snapshot's frozen contents with whether it must exist (`true`) or may (its take or
/// release was cut short). Read on from where the last round stopped.
#[derive(Default)]
struct Oracle {
    read: usize,
    volume: Vec<u8>,
    snaps: BTreeMap<String, (Vec<u8>, bool)>,
}

impl Oracle {
    fn update(&mut self, root: &Path) {
        if self.volume.is_empty() {
            self.volume = vec![0u8; SIZE as usize];
        }
        let text = std::fs::read(root.join(LOG)).unwrap();
        let new = &text[self.read..];
        // Only whole lines: each is one write(2), so a kill leaves none cut short.
        let upto = new.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        self.read += upto;
        for line in std::str::from_utf8(&new[..upto]).unwrap().lines() {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["W", off, len, seed] => {
                    let (off, len, seed): (usize, usize, u64) = (
                        off.parse().unwrap(),
                        len.parse().unwrap(),
                        seed.parse().unwrap(),
                    );
                    self.volume[off..off + len].copy_from_slice(&contents(seed, len));
                }
                ["s", name] => {
                    self.snaps
                        .insert(name.to_string(), (self.volume.clone(), false));
                }
                ["S", name] => self.snaps.get_mut(*name).unwrap().1 = true,
                ["r", name] => self.snaps.get_mut(*name).unwrap().1 = false,
                ["R", name] => {
                    self.snaps.remove(*name);
                }
                other => panic!("a log line that cannot be: {other:?}"),
            }
        }
    }

    /// After a check: a snapshot found is there from now on, one not found is gone.
    fn settle(&mut self, listed: &[String]) {
        self.snaps.retain(|name, _| listed.contains(name));
        for (_, must) in self.snaps.values_mut() {
            *must = true;
        }
    }
}

#[test]
fn persistent_snapshots_read_what_they_froze_after_kill_9_at_random_instants() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = root.join("store");
    Store::init(
        &store,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets {
                // Little memory, so most snapshot reads come from the pre-image file.
                memory: 16 * SNARF,
                disk: 1 << 30,
                break_after_secs: 60.0,
            },
            ..InitOptions::default()
        },
    )
    .unwrap();
    let repo = snarf::repo::Repo::init(&root.join("repo"), &Default::default()).unwrap();
    let mut base_epoch;
    {
        let e = Arc::new(open_engine(&store));
        let v = e.create_volume("v", SIZE).unwrap();
        drop(v);
        base_epoch = backup(&e, &repo, "base", Mode::Full).1;
        e.release("base").unwrap();
        Arc::into_inner(e).unwrap().close().unwrap();
    }
    let mut read_total = 0;
    std::fs::File::create(root.join(LOG)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut checked = 0;
    let mut oracle = Oracle::default();
    for round in 0..ROUNDS {
        let err = root.join(format!("child-{round}.err"));
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("SNARF_CRASH_CHILD", &root)
            .env("SNARF_CRASH_ROUND", round.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let at = Duration::from_millis(rng.random_range(20..600));
        while start.elapsed() < at {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "round {round}: the child ended by itself ({status}): {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: the pid of the child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();

        oracle.update(&root);
        let want = &oracle.snaps;
        let e = open_engine(&store);
        let listed: Vec<String> = e.list().into_iter().map(|s| s.name).collect();
        for name in &listed {
            assert!(
                want.contains_key(name),
                "round {round}: snapshot {name} is back though its release returned"
            );
        }
        for (name, (frozen, must)) in want {
            let Ok(snap) = e.snapshot(name) else {
                assert!(
                    !must,
                    "round {round}: persistent snapshot {name} is gone after kill -9"
                );
                continue;
            };
            assert_eq!(
                snap.state(),
                SnapState::Live,
                "round {round}: snapshot {name}"
            );
            let mut got = vec![0u8; SIZE as usize];
            assert_eq!(e.read_snapshot(&snap, "v", 0, &mut got).unwrap(), got.len());
            if got != *frozen {
                let first = got.iter().zip(frozen).position(|(a, b)| a != b).unwrap();
                panic!(
                    "round {round}: snapshot {name} reads other bytes than it froze, from byte {first} (snarf {})",
                    first as u64 / SNARF
                );
            }
            checked += 1;
        }
        // A write that returned but was not logged before the kill (or one cut short) is on
        // the live volume all the same, and later snapshots freeze it: go on from what the
        // volume holds.
        let v = e.volume("v").unwrap();
        assert_eq!(e.read(&v, 0, &mut oracle.volume).unwrap(), SIZE as usize);
        // Tracking survived the kill: the regions the bitmap had marked are among those the
        // round wrote into, and an incremental backup reads exactly the snarfs of those
        // regions (none of an untouched one) and restores byte-exact.
        let touched = [hot(round, 0), hot(round, 1)];
        let (dirty, at) = v.intent().expect("a bitmap").recovered();
        // (A kill before the child opened the store leaves it closed cleanly: nothing to
        // recover, and nothing written.)
        assert_eq!(
            at > 0,
            e.store().recovered_unclean(),
            "round {round}: the bitmap was not recovered"
        );
        assert!(
            dirty.iter().all(|r| touched.contains(r)),
            "round {round}: regions {dirty:?} marked, only {touched:?} written"
        );
        assert_eq!(e.recovered().dirty_regions, dirty.len() as u64);
        let dirty = dirty.to_vec();
        drop(v);
        let e = Arc::new(e);
        let name = format!("b{round}");
        let snap = e.take_with(&name, Durability::Persistent).unwrap();
        match e.changed_snarfs(&snap, "v", base_epoch).unwrap() {
            Changed::Snarfs(set) => {
                for i in set.iter() {
                    assert!(
                        dirty.contains(&(i / REGION)),
                        "round {round}: snarf {i} counts as changed outside the marked regions {dirty:?}"
                    );
                }
            }
            Changed::Lost { reason } => {
                panic!(
                    "round {round}: tracking lost after kill -9: {reason} (base {base_epoch:#x}, tracked since {:#x}, bitmap since {:#x}, unclean {})",
                    e.volume("v").unwrap().tracked_since(),
                    e.volume("v").unwrap().intent().unwrap().since(),
                    e.store().recovered_unclean()
                )
            }
        }
        drop(snap);
        let (summary, epoch) = backup(&e, &repo, &name, Mode::Incremental);
        let read = summary.snarfs_read();
        assert!(
            read <= dirty.len() as u64 * REGION,
            "round {round}: {read} snarfs read, {} regions marked",
            dirty.len()
        );
        assert!(read < SNARFS, "round {round}: an untouched region was read");
        read_total += read;
        let dest = tempfile::tempdir().unwrap();
        repo.restore(summary.backup.as_str(), Some("v"), dest.path(), &mut |_| {})
            .unwrap();
        assert!(
            std::fs::read(dest.path().join("v")).unwrap() == oracle.volume,
            "round {round}: the incremental after kill -9 does not restore what the volume holds"
        );
        e.release(&name).unwrap();
        base_epoch = epoch;
        // The next child finds the store as this crash left it (no clean close here).
        drop(e);
        oracle.settle(&listed);
    }
    assert!(
        checked >= ROUNDS,
        "only {checked} snapshot checks in {ROUNDS} rounds"
    );
    assert!(
        read_total < ROUNDS * SNARFS,
        "the incrementals after the kills read {read_total} snarfs, as much as full backups"
    );
    // The pre-image file holds only what the live snapshots need, once they are gone.
    let e = open_engine(&store);
    for s in e.list() {
        e.release(&s.name).unwrap();
    }
    assert_eq!(e.stats().cache.disk_used, 0);
    e.close().unwrap();
    let len = std::fs::metadata(store.join("cow/preimages"))
        .unwrap()
        .len();
    assert_eq!(len, 8192, "only the headers are left");
}
