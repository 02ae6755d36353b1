//! Converge backups end to end through the library: a job over the daemon's socket server
//! backs up a volume under a writer thread, and the backup, restored, equals the volume at
//! the job's final freeze (the oracle: the writer's log replayed up to the freeze's epoch).
//! The next backup is an incremental from the freeze.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::base::Source;
use super::client::Client;
use super::pipeline::{self, BackupOptions};
use super::plan::VolumeKind;
use super::progress::{format_summary, NoProgress};
use super::JobServer;
use crate::repo::handle::InitOptions;
use crate::repo::{Handle, Location};
use crate::snapshot::converge_tests::{first_difference, replay_to, Logged};
use crate::snapshot::{Engine, EngineOptions};
use crate::store::{Budgets, Durability, InitOptions as StoreInit, Store};

const SNARF: u64 = 16 << 10;
const SNARFS: u64 = 192;

struct Setup {
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
    repo: Handle,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    Store::init(
        &root,
        &StoreInit {
            snarf_size: SNARF,
            budgets: Budgets {
                memory: 64 << 20,
                disk: 256 << 20,
                break_after_secs: 60.0,
            },
            repository: None,
            snapshots: Durability::Volatile,
        },
    )
    .expect("store");
    let store = Store::open(&root, "converge job test").expect("open");
    let eo = EngineOptions::from_store(&store);
    let engine = Arc::new(Engine::new(store, eo).expect("engine"));
    let repo = Handle::init(
        &Location::Local(dir.path().join("repo")),
        &InitOptions::default(),
    )
    .expect("repo");
    Setup { dir, engine, repo }
}

impl Setup {
    fn dir_path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn restored(repo: &Handle, backup: &str, volume: &str, size: usize) -> Vec<u8> {
    let r = repo.volume_reader(backup, volume).expect("reader");
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let n = r.read_at(at as u64, &mut out[at..]).expect("read");
        assert!(n > 0, "short restore at {at}");
        at += n;
    }
    out
}

#[test]
fn a_converge_backup_under_a_writer_restores_to_the_volume_at_its_final_freeze() {
    let s = setup();
    let size = (SNARFS * SNARF) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut start = vec![0u8; size];
    rng.fill(&mut start[..size / 2]);
    let vol = s
        .engine
        .create_volume("vm.img", size as u64)
        .expect("volume");
    s.engine.write(&vol, 0, &start).expect("fill");
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).expect("server");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, vol, stop) = (s.engine.clone(), vol.clone(), stop.clone());
        thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let mut log = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let len = rng.random_range(1..=2 * SNARF as usize);
                let offset = rng.random_range(0..(size - len) as u64);
                let data: Vec<u8> = (0..len).map(|k| (seq as u8) ^ (k as u8) | 1).collect();
                engine.write(&vol, offset, &data).expect("write");
                // One writer: the stamp of the snarf it just wrote is its write's epoch.
                let epoch = vol.read_state().stamp(offset / SNARF);
                log.push(Logged {
                    offset,
                    data,
                    epoch,
                });
                thread::sleep(Duration::from_micros(300));
            }
            log
        })
    };
    thread::sleep(Duration::from_millis(30));
    let client = Client::connect(server.socket(), "converge job").expect("connect");
    let mut o = BackupOptions::new(crate::jobs::CONVERGE_LABEL);
    o.converge = true;
    o.workers = 2;
    // Small batches: the copy takes long enough for the writer to dirty snarfs behind it.
    o.batch = 2;
    let sum = pipeline::run(&client, &s.repo, &o, &mut NoProgress).expect("converge backup");
    thread::sleep(Duration::from_millis(30));
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().expect("writer");
    drop(client);

    let end = sum.converge.clone().expect("a converge summary");
    // Each snarf counts once in the summary, however many passes sent it.
    let v = &sum.volumes[0];
    assert!(v.read >= SNARFS / 2 && v.read <= SNARFS, "{v:?}");
    assert_eq!(v.read + v.reused, SNARFS, "{v:?}");
    // Every byte sent, again or not, is the first pass's or counted as copied again.
    assert_eq!(
        sum.bytes_read,
        end.first_bytes + end.recopied_bytes,
        "{end:?}"
    );
    assert!(
        end.recopied_bytes > 0,
        "the writer's snarfs came again: {end:?}"
    );
    let text = format_summary(&sum);
    assert!(text.contains("live passes"), "{text}");
    // The backup records the freeze as its source: the next incremental's base point.
    let info = s.repo.backup(sum.backup.as_str()).expect("backup");
    let source = Source::parse(&info.source).expect("source");
    assert_eq!(source.snapshot_epoch, end.desc.epoch);
    assert_eq!(info.snapshot, crate::jobs::CONVERGE_LABEL);
    // The summary's counts are the committed backup's, its last pack included.
    assert_eq!(sum.new_stored_bytes, info.stats.new_stored_bytes);
    assert_eq!(sum.new_chunks, info.stats.new_chunks);
    assert!(s.engine.list().is_empty(), "no snapshot is left behind");

    let oracle = replay_to(start, &log, end.desc.epoch);
    let got = restored(&s.repo, sum.backup.as_str(), "vm.img", size);
    if let Some(bad) = first_difference(&got, &oracle, SNARF as usize) {
        panic!("the backup differs from the volume at its freeze at snarf {bad} ({end:?})");
    }

    // The next backup reads only what changed since the freeze.
    s.engine.write(&vol, 5 * SNARF, &[7u8; 10]).expect("write");
    s.engine.take("after").expect("snapshot");
    let client = Client::connect(server.socket(), "next job").expect("connect");
    let mut o = BackupOptions::new("after");
    o.workers = 2;
    let next = pipeline::run(&client, &s.repo, &o, &mut NoProgress).expect("incremental");
    let v = &next.volumes[0];
    assert!(
        matches!(&v.kind, VolumeKind::Incremental { base, .. } if base == sum.backup.as_str()),
        "{:?}",
        v.kind
    );
    // The writer's last writes after the freeze and this one.
    let since: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|w| w.epoch > end.desc.epoch)
        .flat_map(|w| w.offset / SNARF..=(w.offset + w.data.len() as u64 - 1) / SNARF)
        .chain([5])
        .collect();
    assert_eq!(
        v.read,
        since.len() as u64,
        "read only the snarfs written since the freeze"
    );
}

#[test]
fn a_converge_job_holds_no_snapshot_while_it_opens_its_repository() {
    let s = setup();
    s.engine.create_volume("v", 4 * SNARF).expect("volume");
    let server = JobServer::start(s.engine.clone(), &s.engine.store().run_dir()).expect("server");
    let client = Client::connect(server.socket(), "dies").expect("connect");
    let desc = crate::jobs::Session::begin_converge(&client).expect("begin");
    assert!(desc.name.starts_with(".snarf-converge-"), "{}", desc.name);
    assert_eq!(desc.volumes.len(), 1);
    assert!(
        s.engine.list().is_empty(),
        "no snapshot is held between describe and plan"
    );
    // A second start on the same connection is refused.
    assert!(crate::jobs::Session::begin_converge(&client).is_err());
}

/// A plan request for every volume of a converge job's description, in auto mode.
fn plan_all(desc: &super::plan::SnapshotDesc) -> super::plan::PlanRequest {
    super::plan::PlanRequest {
        snapshot: desc.name.clone(),
        volumes: None,
        mode: super::vocab::Mode::Auto,
        bases: Vec::new(),
    }
}

#[test]
fn a_converge_job_that_ends_during_its_freeze_releases_it() {
    use super::feed::Tier;
    use super::service::{JobService, Session};
    let s = setup();
    let vol = s.engine.create_volume("v", 8 * SNARF).expect("volume");
    s.engine
        .write(&vol, 0, &[1u8; 8 * SNARF as usize])
        .expect("fill");
    let svc = JobService::new(s.engine.clone(), None);
    let desc = svc.begin_converge().expect("begin");
    svc.plan(&plan_all(&desc), s.dir_path()).expect("plan");
    // The first pass; then a write, so the freeze has something to copy.
    let first = svc.next(8).expect("next").expect("the first pass");
    assert_eq!(first.len(), 8);
    assert!(first.iter().all(|d| d.tier == Tier::Cold));
    s.engine.write(&vol, 3 * SNARF, b"late").expect("write");
    let frozen = svc.next(1).expect("next").expect("the frozen pass");
    assert_eq!(frozen[0].tier, Tier::Urgent, "read from the freeze");
    assert_eq!(
        s.engine.list().len(),
        1,
        "the freeze is held while it is read"
    );
    // The job goes away (killed, cancelled) mid-freeze.
    drop(svc);
    assert!(s.engine.list().is_empty(), "the freeze outlived its job");
    assert_eq!(s.engine.stats().cache.held, 0, "its pre-images are freed");
}

#[test]
fn a_volume_that_changes_size_during_a_converge_fails_it_by_name() {
    use super::service::{JobService, Session};
    // Grown (by a part of a snarf, then written past the old end), or shrunk.
    for grow in [true, false] {
        let s = setup();
        let vol = s.engine.create_volume("db", 8 * SNARF).expect("volume");
        s.engine
            .write(&vol, 0, &[2u8; 8 * SNARF as usize])
            .expect("fill");
        let svc = JobService::new(s.engine.clone(), None);
        let desc = svc.begin_converge().expect("begin");
        svc.plan(&plan_all(&desc), s.dir_path()).expect("plan");
        assert!(
            svc.converged().is_err(),
            "no end before every snarf was sent"
        );
        svc.next(2).expect("next");
        if grow {
            s.engine.resize(&vol, 9 * SNARF + 100).expect("grow");
            s.engine
                .write(&vol, 9 * SNARF, b"past the old end")
                .expect("write");
        } else {
            s.engine.resize(&vol, 5 * SNARF).expect("shrink");
        }
        let e = loop {
            match svc.next(64) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the copy ended without noticing"),
                Err(e) => break e,
            }
        };
        let text = e.to_string();
        assert!(
            text.contains("\"db\"")
                && text.contains("changed size")
                && text.contains("nothing was committed"),
            "{text}"
        );
        drop(svc);
        assert!(s.engine.list().is_empty());
    }
}

#[test]
fn a_volume_renamed_over_during_a_converge_fails_it_by_name() {
    use super::service::{JobService, Session};
    let s = setup();
    let vol = s.engine.create_volume("vm.img", 8 * SNARF).expect("volume");
    s.engine
        .write(&vol, 0, &[3u8; 8 * SNARF as usize])
        .expect("fill");
    let other = s
        .engine
        .create_volume("vm.img.bak", 8 * SNARF)
        .expect("other");
    s.engine
        .write(&other, 0, &[4u8; 8 * SNARF as usize])
        .expect("fill");
    let svc = JobService::new(s.engine.clone(), None);
    let desc = svc.begin_converge().expect("begin");
    let mut req = plan_all(&desc);
    req.volumes = Some(vec!["vm.img".into()]);
    svc.plan(&req, s.dir_path()).expect("plan");
    // The first pass, then the same-sized backup copy is renamed over the volume.
    assert_eq!(svc.next(8).expect("next").expect("first pass").len(), 8);
    s.engine
        .rename_volume("vm.img.bak", "vm.img")
        .expect("rename over");
    let e = svc.next(8).expect_err("a replaced volume");
    let text = e.to_string();
    assert!(
        text.contains("\"vm.img\"")
            && text.contains("replaced")
            && text.contains("nothing was committed"),
        "{text}"
    );
    drop(svc);
    assert!(s.engine.list().is_empty());
}
