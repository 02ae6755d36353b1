//! Backup jobs end to end through the library, with the engine in-process and no mount:
//! over the daemon's socket server and in direct mode, under concurrent writes, incremental,
//! deduplicated, with bounded pre-image memory, and a job that dies mid-transfer.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::client::Client;
use super::pipeline::{self, BackupOptions, Summary};
use super::plan::{FullReason, Plan, PlanRequest, SnapshotDesc, VolumeKind};
use super::progress::{NoProgress, Progress};
use super::proto::AckItem;
use super::service::{JobService, Session, SnarfData};
use super::vocab::Mode;
use super::{JobServer, Result};
use crate::repo::{Handle, Repo, RepoInitOptions};
use crate::snapshot::{Engine, EngineOptions, Snapshot};
use crate::store::{Budgets, InitOptions, Store};

const SNARF: u64 = 16 << 10;

struct Setup {
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
    repo: Repo,
}

fn open_engine(root: &Path) -> Arc<Engine> {
    let store = Store::open(root, "jobs test").unwrap();
    let mut opts = EngineOptions::from_store(&store);
    opts.pace_from = 1.0;
    Arc::new(Engine::new(store, opts).unwrap())
}

fn setup(mem: u64, disk: u64, pack_target: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets {
                memory: mem,
                disk,
                break_after_secs: 60.0,
            },
            repository: None,
            // The volatile tier is what these tests are about.
            snapshots: crate::store::Durability::Volatile,
        },
    )
    .unwrap();
    let repo = Repo::init(
        &dir.path().join("repo"),
        &RepoInitOptions {
            compression: 1,
            pack_target,
        },
    )
    .unwrap();
    Setup {
        engine: open_engine(&root),
        dir,
        repo,
    }
}

/// Zeros, repeated words and random bytes, from a seed.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = rng.random_range(1000..60_000).min(len - pos);
        match rng.random_range(0..3) {
            0 => {}
            1 => v[pos..pos + n].fill(rng.random()),
            _ => rng.fill(&mut v[pos..pos + n]),
        }
        pos += n;
    }
    v
}

fn make_volume(e: &Engine, name: &str, contents: &[u8]) {
    let v = e.create_volume(name, contents.len() as u64).unwrap();
    e.write(&v, 0, contents).unwrap();
}

fn restore(repo: &Repo, backup: &str, volume: &str) -> Vec<u8> {
    let dest = tempfile::tempdir().unwrap();
    repo.restore(backup, Some(volume), dest.path(), &mut |_| {})
        .unwrap();
    std::fs::read(dest.path().join(volume)).unwrap()
}

fn opts(snapshot: &str) -> BackupOptions {
    let mut o = BackupOptions::new(snapshot);
    o.workers = 2;
    o
}

fn direct(s: &Setup, o: &BackupOptions) -> Result<Summary> {
    let svc = JobService::new(s.engine.clone(), None);
    pipeline::run(&svc, &Handle::V1(s.repo.clone()), o, &mut NoProgress)
}

fn read_all(e: &Engine, server: Option<&JobServer>, snap: &Snapshot, vol: &str) -> Vec<u8> {
    let size = snap.volume(vol).unwrap().attr.size as usize;
    let mut out = vec![0u8; size];
    // Odd-sized reads, so pieces straddle snarfs of both kinds.
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(100_000);
        let got = e
            .read_snapshot_through(
                snap,
                vol,
                pos as u64,
                &mut out[pos..pos + n],
                server.map(|s| s.released().as_ref()),
            )
            .unwrap();
        assert_eq!(got, n);
        pos += n;
    }
    out
}

/// Writes random bytes at random places until told to stop, pausing `pause` between writes.
fn writer(
    e: Arc<Engine>,
    name: &str,
    stop: Arc<AtomicBool>,
    pause: Duration,
    seed: u64,
) -> std::thread::JoinHandle<u64> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v = e.volume(&name).unwrap();
        let size = v.attr().size;
        let mut writes = 0;
        while !stop.load(Ordering::Relaxed) {
            let len = rng.random_range(1..3 * SNARF) as usize;
            let off = rng.random_range(0..size - len as u64);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            e.write(&v, off, &buf).unwrap();
            writes += 1;
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        writes
    })
}

#[test]
fn backup_over_the_socket_under_writes_restores_the_frozen_contents() {
    let s = setup(8 << 20, 64 << 20, 256 << 10);
    let frozen = data(1, 6 << 20);
    make_volume(&s.engine, "vm.img", &frozen);
    let snap = s.engine.take("s1").unwrap();
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        s.engine.clone(),
        "vm.img",
        stop.clone(),
        Duration::from_micros(300),
        7,
    );

    let client = Client::connect(server.socket(), "test job").unwrap();
    assert_eq!(client.welcome().pid, std::process::id());
    let mut calls = 0;
    let sum = pipeline::run(
        &client,
        &Handle::V1(s.repo.clone()),
        &opts("s1"),
        &mut |_: &Progress| calls += 1,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(w.join().unwrap() > 0, "the writer wrote during the backup");
    assert!(calls > 0, "progress was reported");
    drop(client);

    assert_eq!(sum.volumes.len(), 1);
    assert_eq!(
        sum.volumes[0].kind,
        VolumeKind::Full {
            reason: FullReason::FirstBackup
        }
    );
    assert_eq!(sum.bytes_read, frozen.len() as u64);
    assert!(
        restore(&s.repo, sum.backup.as_str(), "vm.img") == frozen,
        "restore differs from the snapshot"
    );
    // Every snarf was acknowledged: the snapshot holds no pre-image any more, and reads of
    // it come back from the repository.
    assert_eq!(s.engine.preimages_needed_by(&snap), 0);
    let e = s
        .engine
        .read_snapshot(&snap, "vm.img", 0, &mut vec![0u8; 1 << 20])
        .unwrap_err();
    assert!(
        matches!(e, crate::snapshot::Error::StoredInBackup { .. }),
        "{e}"
    );
    assert!(
        read_all(&s.engine, Some(&server), &snap, "vm.img") == frozen,
        "snapshot reads differ after the backup"
    );
    // The packs are pinned until the snapshot is released.
    let pins = s.repo.path().join("pins");
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 1);
    s.engine.release("s1").unwrap();
    server.sweep();
    assert_eq!(
        std::fs::read_dir(&pins).unwrap().count(),
        0,
        "pin removed with the snapshot"
    );
    assert!(server.released().is_empty());
}

#[test]
fn incremental_reads_only_changed_snarfs_across_a_clean_reopen() {
    let s = setup(8 << 20, 0, 1 << 20);
    let mut vol = data(2, 100 * SNARF as usize);
    make_volume(&s.engine, "db", &vol);
    s.engine.take("a").unwrap();
    let first = direct(&s, &opts("a")).unwrap();
    assert_eq!(first.snarfs_read(), 100);
    s.engine.release("a").unwrap();

    // A clean close keeps the tracking for the next session (the direct mode's case).
    s.engine.close().unwrap();
    let root = s.dir.path().join("store");
    let Setup { dir, engine, repo } = s;
    drop(engine);
    let s = Setup {
        engine: open_engine(&root),
        dir,
        repo,
    };
    let v = s.engine.volume("db").unwrap();
    for (i, snarf) in [3u64, 17, 18, 60, 99].iter().enumerate() {
        let at = snarf * SNARF + 100 * i as u64;
        s.engine.write(&v, at, b"changed bytes").unwrap();
        vol[at as usize..at as usize + 13].copy_from_slice(b"changed bytes");
    }
    // Grown by one and a half snarfs: snarfs 100 and 101 are new.
    let grown = vol.len() + SNARF as usize * 3 / 2;
    s.engine.resize(&v, grown as u64).unwrap();
    vol.resize(grown, 0);
    s.engine.write(&v, 100 * SNARF + 5, b"tail").unwrap();
    vol[100 * SNARF as usize + 5..100 * SNARF as usize + 9].copy_from_slice(b"tail");
    s.engine.take("b").unwrap();

    let second = direct(&s, &opts("b")).unwrap();
    let v0 = &second.volumes[0];
    assert_eq!(
        v0.kind,
        VolumeKind::Incremental {
            base: first.backup.to_string(),
            old_size: Some(100 * SNARF)
        }
    );
    assert_eq!((v0.read, v0.reused, v0.snarfs), (7, 95, 102), "{second:?}");
    assert_eq!(second.new_chunks, 6, "five changed snarfs and the new tail");
    assert!(restore(&s.repo, second.backup.as_str(), "db") == vol);
    assert!(restore(&s.repo, first.backup.as_str(), "db") == data(2, 100 * SNARF as usize));

    // mode=full reads everything and says so; dedup stores nothing new.
    let mut o = opts("b");
    o.mode = Mode::Full;
    let full = direct(&s, &o).unwrap();
    assert_eq!(
        full.volumes[0].kind,
        VolumeKind::Full {
            reason: FullReason::ModeFull
        }
    );
    // Every snarf that may hold data is read; the last one, grown into but never written,
    // is a hole and is recorded as zeros without being read.
    assert_eq!((full.snarfs_read(), full.volumes[0].reused), (101, 1));
    assert_eq!(full.new_chunks, 0);
}

#[test]
fn lost_tracking_reads_everything_and_dedup_keeps_it_small() {
    let s = setup(8 << 20, 0, 1 << 20);
    let mut vol = data(3, 64 * SNARF as usize);
    make_volume(&s.engine, "v", &vol);
    s.engine.take("a").unwrap();
    let first = direct(&s, &opts("a")).unwrap();
    // Dropped without a clean close, and the write-intent bitmap gone: the next session
    // cannot tell what changed.
    let root = s.dir.path().join("store");
    let Setup { dir, engine, repo } = s;
    drop(engine);
    for f in std::fs::read_dir(root.join("state/intent")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let s = Setup {
        engine: open_engine(&root),
        dir,
        repo,
    };
    let v = s.engine.volume("v").unwrap();
    s.engine.write(&v, 5 * SNARF, b"x").unwrap();
    vol[5 * SNARF as usize] = b'x';
    s.engine.take("b").unwrap();
    let mut o = opts("b");
    o.mode = Mode::Incremental;
    let e = direct(&s, &o).unwrap_err().to_string();
    assert!(
        e.contains("cannot be backed up incrementally") && e.contains("tracking"),
        "{e}"
    );
    assert!(
        s.repo.list_backups().unwrap().len() == 1,
        "a refused plan commits nothing"
    );
    let second = direct(&s, &opts("b")).unwrap();
    match &second.volumes[0].kind {
        VolumeKind::Full {
            reason: FullReason::TrackingLost { .. },
        } => {}
        k => panic!("expected a full backup for lost tracking, got {k:?}"),
    }
    assert_eq!(second.snarfs_read(), 64);
    assert_eq!(second.new_chunks, 1, "only the changed snarf is new");
    assert!(restore(&s.repo, second.backup.as_str(), "v") == vol);
    assert!(first.new_chunks > 1);
}

#[test]
fn after_an_unclean_stop_an_incremental_reads_only_the_regions_marked_dirty() {
    let s = setup(8 << 20, 0, 1 << 20);
    let region = crate::store::intent::REGION_SNARFS * SNARF;
    let v = s.engine.create_volume("v", 3 * region).unwrap();
    let mut vol = vec![0u8; (3 * region) as usize];
    let mut put = |e: &Engine, v: &crate::store::Volume, at: u64, d: &[u8]| {
        e.write(v, at, d).unwrap();
        vol[at as usize..at as usize + d.len()].copy_from_slice(d);
    };
    for r in 0..3 {
        put(
            &s.engine,
            &v,
            r * region + 5 * SNARF,
            &data(r + 1, 4 * SNARF as usize),
        );
    }
    s.engine.take("a").unwrap();
    let first = direct(&s, &opts("a")).unwrap();
    assert_eq!(first.snarfs_read(), 12);
    // After the backup, one write into region 1, then kill: the stamps are gone.
    put(&s.engine, &v, region + 700 * SNARF, b"after the backup");
    let root = s.dir.path().join("store");
    let Setup { dir, engine, repo } = s;
    drop(v);
    drop(engine);
    let s = Setup {
        engine: open_engine(&root),
        dir,
        repo,
    };
    assert_eq!(s.engine.recovered().dirty_regions, 1);
    let v = s.engine.volume("v").unwrap();
    put(&s.engine, &v, 2 * region + 9 * SNARF, b"in the new session");
    s.engine.take("b").unwrap();
    let mut o = opts("b");
    o.mode = Mode::Incremental;
    let second = direct(&s, &o).unwrap();
    assert!(
        matches!(second.volumes[0].kind, VolumeKind::Incremental { .. }),
        "{:?}",
        second.volumes[0].kind
    );
    // Region 1 whole (the region the bitmap had marked) and the one snarf the new session
    // wrote; region 0 and the rest of region 2 not at all.
    assert_eq!(
        second.snarfs_read(),
        crate::store::intent::REGION_SNARFS + 1
    );
    assert!(restore(&s.repo, second.backup.as_str(), "v") == vol);
    // The backup moved the checkpoint: once more after a kill, nothing is dirty.
    let Setup { dir, engine, repo } = s;
    drop(v);
    drop(engine);
    let s = Setup {
        engine: open_engine(&root),
        dir,
        repo,
    };
    assert_eq!(s.engine.recovered().dirty_regions, 0);
    s.engine.take("c").unwrap();
    o.snapshot = "c".into();
    let third = direct(&s, &o).unwrap();
    assert!(matches!(
        third.volumes[0].kind,
        VolumeKind::Incremental { .. }
    ));
    assert_eq!(third.snarfs_read(), 0);
    assert!(restore(&s.repo, third.backup.as_str(), "v") == vol);
}

#[test]
fn identical_volumes_are_stored_once() {
    let s = setup(8 << 20, 0, 1 << 20);
    // Random through and through, so only the second volume deduplicates.
    let mut contents = vec![0u8; 2 << 20];
    ChaCha8Rng::seed_from_u64(4).fill(&mut contents[..]);
    make_volume(&s.engine, "a.img", &contents);
    make_volume(&s.engine, "b.img", &contents);
    s.engine.take("s").unwrap();
    let sum = direct(&s, &opts("s")).unwrap();
    assert_eq!(sum.zero_bytes_read, 0);
    assert_eq!(sum.new_raw_bytes, contents.len() as u64, "{sum:?}");
    let ratio = sum.dedup_ratio().unwrap();
    assert!((ratio - 2.0).abs() < 0.01, "dedup ratio {ratio}");
    for v in ["a.img", "b.img"] {
        assert!(restore(&s.repo, sum.backup.as_str(), v) == contents);
    }
    let text = super::progress::format_summary(&sum);
    assert!(
        text.contains("dedup ratio 2.00") && text.contains("first backup"),
        "{text}"
    );
    // Every snarf read was sent from some tier of the feed, and the summary says which.
    assert_eq!(sum.sent.total(), sum.snarfs_read(), "{sum:?}");
    let line = format!(
        "sent {} snarfs: {} already in memory (page cache), 0 held pre-images, 0 captured \
         during the backup, {} read from disk",
        sum.sent.total(),
        sum.sent.cached,
        sum.sent.cold
    );
    assert!(text.contains(&line), "{text}");
}

#[test]
fn preimage_memory_stays_low_while_a_volume_under_write_load_is_backed_up() {
    let budget = 1 << 20;
    let s = setup(budget, 256 << 20, 128 << 10);
    let frozen = data(5, 16 << 20);
    let snarfs = frozen.len() as u64 / SNARF;
    make_volume(&s.engine, "busy", &frozen);
    let snap = s.engine.take("s").unwrap();
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        s.engine.clone(),
        "busy",
        stop.clone(),
        Duration::from_micros(500),
        9,
    );
    let peak_mem = Arc::new(AtomicU64::new(0));
    let peak_held = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (e, stop, pm, ph, snap) = (
            s.engine.clone(),
            stop.clone(),
            peak_mem.clone(),
            peak_held.clone(),
            snap.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let st = e.stats();
                pm.fetch_max(st.cache.mem_used, Ordering::Relaxed);
                ph.fetch_max(e.preimages_needed_by(&snap), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let client = Client::connect(server.socket(), "load").unwrap();
    let sum = pipeline::run(
        &client,
        &Handle::V1(s.repo.clone()),
        &opts("s"),
        &mut NoProgress,
    )
    .unwrap();
    // Keep writing a little after the job: nothing more is captured for the snapshot.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    sampler.join().unwrap();
    let (pm, ph) = (
        peak_mem.load(Ordering::Relaxed),
        peak_held.load(Ordering::Relaxed),
    );
    eprintln!("{writes} writes; peak pre-image memory {pm} of {budget}; peak pre-images held for the snapshot {ph} of {snarfs} snarfs");
    assert!(pm <= budget);
    assert!(ph < snarfs / 2, "pre-images piled up: {ph} of {snarfs}");
    assert_eq!(
        s.engine.preimages_needed_by(&snap),
        0,
        "every pre-image freed once stored"
    );
    assert_eq!(s.engine.stats().cache.held, 0);
    assert_eq!(s.engine.stats().broken, 0);
    assert!(restore(&s.repo, sum.backup.as_str(), "busy") == frozen);
    assert!(read_all(&s.engine, Some(&server), &snap, "busy") == frozen);
}

/// A session that cuts its connection (as a killed job would) after some batches.
struct Dying {
    inner: Client,
    stream: UnixStream,
    batches_left: AtomicUsize,
}

impl Session for Dying {
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
        self.inner.describe(snapshot)
    }
    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
        self.inner.plan(req, repo)
    }
    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        if self.batches_left.fetch_sub(1, Ordering::Relaxed) == 0 {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.inner.next(max)
    }
    fn ack(&self, items: &[AckItem]) -> Result<()> {
        self.inner.ack(items)
    }
    fn done(&self, backup: &str) -> Result<()> {
        self.inner.done(backup)
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
}

#[test]
fn a_job_that_dies_mid_transfer_leaves_the_snapshot_readable_and_no_backup() {
    let s = setup(8 << 20, 64 << 20, 64 << 10);
    let frozen = data(6, 4 << 20);
    make_volume(&s.engine, "v", &frozen);
    let snap = s.engine.take("s").unwrap();
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        s.engine.clone(),
        "v",
        stop.clone(),
        Duration::from_micros(200),
        11,
    );

    let stream = UnixStream::connect(server.socket()).unwrap();
    let inner = Client::over(
        Box::new(stream.try_clone().unwrap()),
        Box::new(stream.try_clone().unwrap()),
        "dying",
    )
    .unwrap();
    let dying = Dying {
        inner,
        stream,
        batches_left: AtomicUsize::new(8),
    };
    let mut o = opts("s");
    o.batch = 4;
    let e = pipeline::run(&dying, &Handle::V1(s.repo.clone()), &o, &mut NoProgress).unwrap_err();
    assert!(matches!(e, super::Error::DaemonGone(_)), "{e}");
    assert!(e.to_string().contains("nothing was committed"), "{e}");
    assert!(
        s.repo.list_backups().unwrap().is_empty(),
        "no backup is visible"
    );
    for _ in 0..100 {
        if server.running() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.running(), 0, "the daemon dropped the dead job");
    let listed = server.jobs();
    assert_eq!(listed.len(), 1);
    assert!(
        matches!(&listed[0].phase, super::JobPhase::Failed(why) if why.contains("without committing")),
        "{listed:?}"
    );
    assert_eq!(listed[0].snapshot, "s");
    assert!(
        read_all(&s.engine, Some(&server), &snap, "v") == frozen,
        "the snapshot still reads correctly"
    );

    // A new job backs it up from where things are.
    let client = Client::connect(server.socket(), "again").unwrap();
    let sum = pipeline::run(
        &client,
        &Handle::V1(s.repo.clone()),
        &opts("s"),
        &mut NoProgress,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(restore(&s.repo, sum.backup.as_str(), "v") == frozen);
    assert!(read_all(&s.engine, Some(&server), &snap, "v") == frozen);
}

#[test]
fn refusals_are_clear() {
    let s = setup(8 << 20, 0, 1 << 20);
    make_volume(&s.engine, "v", &data(7, 64 << 10));
    s.engine.take("s").unwrap();
    let e = direct(&s, &opts("nope")).unwrap_err().to_string();
    assert!(e.contains("no snapshot named \"nope\""), "{e}");
    let mut o = opts("s");
    o.volumes = Some(vec!["w".into()]);
    let e = direct(&s, &o).unwrap_err().to_string();
    assert!(
        e.contains("no volume named \"w\"") && e.contains("it has: v"),
        "{e}"
    );
    // The repository lock names its holder.
    let _held = s.repo.lock("snarf prune (test)", None).unwrap();
    let e = direct(&s, &opts("s")).unwrap_err().to_string();
    assert!(
        e.contains("locked by") && e.contains("snarf prune (test)"),
        "{e}"
    );
}

#[test]
fn a_daemon_that_stops_mid_job_fails_it_cleanly() {
    let s = setup(8 << 20, 0, 64 << 10);
    make_volume(&s.engine, "v", &data(8, 4 << 20));
    s.engine.take("s").unwrap();
    let server = Arc::new(parking_lot::Mutex::new(Some(
        JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap(),
    )));
    let socket = server.lock().as_ref().unwrap().socket().to_path_buf();
    /// Stops the daemon's job server after some batches, as an unmount would.
    struct Unmounting {
        inner: Client,
        server: Arc<parking_lot::Mutex<Option<JobServer>>>,
        left: AtomicUsize,
    }
    impl Session for Unmounting {
        fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
            self.inner.describe(snapshot)
        }
        fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
            self.inner.plan(req, repo)
        }
        fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
            if self.left.fetch_sub(1, Ordering::Relaxed) == 0 {
                if let Some(mut srv) = self.server.lock().take() {
                    srv.stop();
                }
            }
            self.inner.next(max)
        }
        fn ack(&self, items: &[AckItem]) -> Result<()> {
            self.inner.ack(items)
        }
        fn done(&self, backup: &str) -> Result<()> {
            self.inner.done(backup)
        }
        fn abort(&self, reason: &str) {
            self.inner.abort(reason)
        }
    }
    let job = Unmounting {
        inner: Client::connect(&socket, "t").unwrap(),
        server: server.clone(),
        left: AtomicUsize::new(5),
    };
    let mut o = opts("s");
    o.batch = 2;
    let e = pipeline::run(&job, &Handle::V1(s.repo.clone()), &o, &mut NoProgress).unwrap_err();
    assert!(matches!(e, super::Error::DaemonGone(_)), "{e}");
    assert!(s.repo.list_backups().unwrap().is_empty());
    assert!(!socket.exists(), "the socket goes with the server");
    // A later job finds the repository clean and usable.
    let sum = direct(&s, &opts("s")).unwrap();
    assert!(restore(&s.repo, sum.backup.as_str(), "v") == data(8, 4 << 20));
    let report = s.repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn the_socket_works_under_a_store_path_too_long_for_a_socket_address() {
    let s = setup(8 << 20, 0, 1 << 20);
    let deep = s.dir.path().join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    assert!(deep.join(super::server::SOCKET).as_os_str().len() > 108);
    make_volume(&s.engine, "v", &data(9, 256 << 10));
    s.engine.take("s").unwrap();
    let server = JobServer::start(s.engine.clone(), &deep).unwrap();
    assert!(server.socket().exists());
    let client = Client::connect(server.socket(), "deep").unwrap();
    let sum = pipeline::run(
        &client,
        &Handle::V1(s.repo.clone()),
        &opts("s"),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(sum.bytes_read, 256 << 10);
}

#[test]
fn a_cancelled_job_commits_nothing_and_is_listed_as_cancelled() {
    let s = setup(8 << 20, 0, 64 << 10);
    make_volume(&s.engine, "v", &data(10, 4 << 20));
    s.engine.take("s").unwrap();
    let server = Arc::new(JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap());
    /// Cancels itself through the server after some batches, as `cancel J1` would.
    struct Cancelling {
        inner: Client,
        server: Arc<JobServer>,
        left: AtomicUsize,
    }
    impl Session for Cancelling {
        fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
            self.inner.describe(snapshot)
        }
        fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
            self.inner.plan(req, repo)
        }
        fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
            if self.left.fetch_sub(1, Ordering::Relaxed) == 0 {
                let id = self.server.jobs()[0].id.clone();
                self.server.cancel(&id, "test says stop").unwrap();
                assert!(self
                    .server
                    .cancel("J999", "x")
                    .unwrap_err()
                    .to_string()
                    .contains("no job J999"));
            }
            self.inner.next(max)
        }
        fn ack(&self, items: &[AckItem]) -> Result<()> {
            self.inner.ack(items)
        }
        fn done(&self, backup: &str) -> Result<()> {
            self.inner.done(backup)
        }
        fn abort(&self, reason: &str) {
            self.inner.abort(reason)
        }
    }
    let job = Cancelling {
        inner: Client::connect(server.socket(), "to be cancelled").unwrap(),
        server: server.clone(),
        left: AtomicUsize::new(3),
    };
    let mut o = opts("s");
    o.batch = 2;
    let e = pipeline::run(&job, &Handle::V1(s.repo.clone()), &o, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cancelled: test says stop") && e.contains("nothing was committed"),
        "{e}"
    );
    assert!(s.repo.list_backups().unwrap().is_empty());
    let listed = server.jobs();
    assert_eq!(
        listed[0].phase,
        super::JobPhase::Cancelled("test says stop".into())
    );
    assert_eq!(listed[0].job, "to be cancelled");
    assert!(listed[0].sent_bytes > 0 && listed[0].total_bytes == Some(4 << 20));
    // A finished job cannot be cancelled.
    let id = listed[0].id.clone();
    assert!(server
        .cancel(&id, "again")
        .unwrap_err()
        .to_string()
        .contains("already ended"));
}

#[test]
fn a_full_backup_of_a_sparse_volume_reads_only_its_data() {
    let s = setup(8 << 20, 0, 1 << 20);
    let size = 1u64 << 30;
    let v = s.engine.create_volume("thin.img", size).unwrap();
    // Three extents of 256 KiB: aligned at the start, unaligned in the middle (17 snarfs),
    // and the volume's last bytes.
    let extents = [
        (0u64, 256u64 << 10),
        (size / 2 + 4096, 256 << 10),
        (size - (256 << 10), 256 << 10),
    ];
    let mut want = Vec::new();
    for (n, &(at, len)) in extents.iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(7) | 1 | n as u8)
            .collect();
        s.engine.write(&v, at, &bytes).unwrap();
        want.push((at, bytes));
    }
    s.engine.take("t").unwrap();
    let sum = direct(&s, &opts("t")).unwrap();
    let v0 = &sum.volumes[0];
    let data_snarfs = 16 + 17 + 16;
    // Today every snarf of the volume was read and hashed: 1 GiB of zeros.
    assert_eq!(
        (v0.read, v0.reused),
        (data_snarfs, size / SNARF - data_snarfs),
        "{sum:?}"
    );
    assert_eq!(sum.bytes_read, data_snarfs * SNARF);

    let dest = tempfile::tempdir().unwrap();
    s.repo
        .restore(
            sum.backup.as_str(),
            Some("thin.img"),
            dest.path(),
            &mut |_| {},
        )
        .unwrap();
    let f = std::fs::File::open(dest.path().join("thin.img")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at).unwrap();
        let mut expect = vec![0u8; buf.len()];
        let end = at + buf.len() as u64;
        for (start, bytes) in &want {
            let (a, b) = ((*start).max(at), (start + bytes.len() as u64).min(end));
            if a < b {
                expect[(a - at) as usize..(b - at) as usize]
                    .copy_from_slice(&bytes[(a - start) as usize..(b - start) as usize]);
            }
        }
        assert!(buf == expect, "restored bytes {at}..{end} differ");
        at += buf.len() as u64;
    }
}

/// Bytes allocated on disk under `dir`, recursively.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn released_snarf_tables_grow_with_the_data_a_backup_stored_not_with_the_volume() {
    let s = setup(8 << 20, 0, 1 << 20);
    let size = 256u64 << 20;
    let v = s.engine.create_volume("thin.img", size).unwrap();
    for n in 0..4u64 {
        s.engine
            .write(&v, n * (size / 4), &vec![n as u8 + 1; 64 << 10])
            .unwrap();
    }
    let snap = s.engine.take("t").unwrap();
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).unwrap();
    let client = Client::connect(server.socket(), "test job").unwrap();
    let sum = pipeline::run(
        &client,
        &Handle::V1(s.repo.clone()),
        &opts("t"),
        &mut NoProgress,
    )
    .unwrap();
    drop(client);
    assert_eq!(sum.snarfs_read(), 16);
    let tables = allocated(&s.engine.store().run_dir().join(crate::jobs::released::DIR));
    // Today every snarf, holes included, had a 72-byte record: over 1 MiB here.
    assert!(tables < 64 << 10, "{tables} bytes of released-snarf tables");
    // The snapshot still reads what it froze, from the repository where it was freed.
    let frozen = read_all(&s.engine, Some(&server), &snap, "thin.img");
    for n in 0..4usize {
        let at = n * (size as usize / 4);
        assert!(frozen[at..at + (64 << 10)]
            .iter()
            .all(|&b| b == n as u8 + 1));
        assert!(frozen[at + (64 << 10)..at + (128 << 10)]
            .iter()
            .all(|&b| b == 0));
    }
}

#[test]
fn a_repository_gone_mid_job_is_named_whoever_met_it_first() {
    use super::Error;
    let s = setup(1 << 20, 1 << 20, 1 << 20);
    let moved = s.dir.path().join("repo.moved");
    std::fs::rename(s.repo.path(), &moved).unwrap();
    // The daemon meets the missing folder first when it writes a pin for the job, and its
    // refusal is what the job hears.
    let refusal = Error::Refused(format!(
        "renaming {0}/pins/.x.tmp to {0}/pins/x: No such file or directory (os error 2)",
        s.repo.path().display()
    ));
    let io = Error::Io {
        context: "creating folder pins".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOENT),
    };
    for e in [refusal, io, Error::Protocol("cut short".into())] {
        match pipeline::explain_missing_repo(e, &Handle::V1(s.repo.clone())) {
            Error::RepoGone { repo, .. } => assert_eq!(repo, s.repo.path()),
            other => panic!("not named as a missing repository: {other}"),
        }
    }
    // A stop is a stop, whatever happened to the repository meanwhile.
    let stop = pipeline::explain_missing_repo(
        Error::Stopped("SIGTERM".into()),
        &Handle::V1(s.repo.clone()),
    );
    assert!(matches!(stop, Error::Stopped(_)), "{stop}");
    // With the repository in place, errors stay what they are.
    std::fs::rename(&moved, s.repo.path()).unwrap();
    let kept =
        pipeline::explain_missing_repo(Error::Refused("no".into()), &Handle::V1(s.repo.clone()));
    assert!(matches!(kept, Error::Refused(_)), "{kept}");
}
