//! Acknowledgements as the daemon receives them from a peer it does not trust: each check
//! of [`super::service`] refuses what it must (wrong bytes, a pack gc deleted, a job that has
//! died, a wrong length) and leaves the pre-image held, and a good ack still frees it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::plan::PlanRequest;
use super::progress::NoProgress;
use super::proto::{AckItem, StoredChunk};
use super::released::Released;
use super::service::{JobService, Session};
use super::vocab::Mode;
use super::Error;
use crate::repo::{ChunkRef, Durable, NewBackup, Repo, RepoInitOptions};
use crate::snapshot::{Engine, EngineOptions};
use crate::store::{Budgets, InitOptions, Store};

const SNARF: u64 = 16 << 10;
const SNARFS: u64 = 8;

fn contents() -> Vec<u8> {
    (0..SNARF * SNARFS)
        .map(|i| ((i / 5) as u8).wrapping_mul(13) | 1)
        .collect()
}

fn refused(r: super::Result<()>, says: &str) {
    match r {
        Err(Error::Protocol(m)) => assert!(
            m.contains("refused") && m.contains(says),
            "{m:?} should say {says:?}"
        ),
        other => panic!("an ack that should say {says:?} was {other:?}"),
    }
}

#[test]
fn acks_are_verified_before_any_preimage_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets::default(),
            repository: None,
            // The volatile tier is what these tests are about.
            snapshots: crate::store::Durability::Volatile,
        },
    )
    .unwrap();
    let store = Store::open(&root, "ack test").unwrap();
    let opts = EngineOptions::from_store(&store);
    let engine = Arc::new(Engine::new(store, opts).unwrap());
    let repo = Repo::init(&dir.path().join("repo"), &RepoInitOptions::default()).unwrap();
    let orig = contents();
    let vol = engine.create_volume("v", orig.len() as u64).unwrap();
    engine.write(&vol, 0, &orig).unwrap();
    let snap = engine.take("s").unwrap();
    // Snarf 2 is overwritten after the snapshot: its pre-image is held.
    engine
        .write(&vol, 2 * SNARF, &vec![0xee; SNARF as usize])
        .unwrap();
    let held = || engine.preimage_location(&snap, vol.id(), 2).is_some();
    assert!(held());

    let released = Arc::new(Released::open(&engine.store().run_dir(), "test", &engine).unwrap());
    let alive = Arc::new(AtomicBool::new(true));
    let a2 = alive.clone();
    let svc = JobService::new(engine.clone(), Some(released.clone()))
        .with_peer(Arc::new(move || a2.load(Ordering::SeqCst)));
    svc.describe("s").unwrap();
    svc.plan(
        &PlanRequest {
            snapshot: "s".into(),
            volumes: None,
            mode: Mode::Full,
            bases: vec![],
        },
        repo.path(),
    )
    .unwrap();
    let handed = svc.next(64).unwrap().unwrap();
    assert_eq!(handed.len(), SNARFS as usize);

    // What a real job would store: the handed bytes, in a sealed pack.
    let durable: Arc<Mutex<Vec<Durable>>> = Arc::default();
    let d2 = durable.clone();
    let mut new = NewBackup::new("s", serde_json::json!({}));
    new.on_durable = Some(Arc::new(move |d| d2.lock().push(d)));
    let writer = repo.begin_backup(new).unwrap();
    let slot = writer
        .add_volume("v", orig.len() as u64, SNARF as u32)
        .unwrap();
    let p = writer.preparer();
    for d in &handed {
        let bytes = d.data.clone().unwrap_or_else(|| vec![0; d.len as usize]);
        writer
            .put(slot, d.snarf, p.prepare(&bytes).unwrap())
            .unwrap();
    }
    writer.flush().unwrap();
    let chunk_of = |snarf: u64| -> ChunkRef {
        durable
            .lock()
            .iter()
            .find(|d| d.snarf == snarf)
            .map(|d| d.chunk)
            .unwrap()
    };
    let ack = |snarf: u64, chunk: ChunkRef| {
        svc.ack(&[AckItem {
            vol: 0,
            snarf,
            chunk: StoredChunk::V1(chunk),
        }])
    };
    let good = chunk_of(2);
    assert!(!good.is_zero());

    // Another snarf's chunk: real, sealed, the right length, the wrong bytes.
    refused(ack(2, chunk_of(3)), "does not hold the snapshot's bytes");
    // A zero chunk for bytes that are not zeros.
    refused(ack(2, ChunkRef::zero(SNARF as u32)), "does not hold");
    // The right chunk with another length.
    refused(
        ack(
            2,
            ChunkRef {
                raw_len: 1000,
                ..good
            },
        ),
        "for a snarf of 16384",
    );
    // Past the volume, and at an offset the pack does not list.
    refused(ack(SNARFS, good), "which has 8 snarfs");
    refused(
        ack(
            2,
            ChunkRef {
                offset: good.offset + 1,
                ..good
            },
        ),
        "does not list",
    );
    assert!(held(), "a refused ack freed the pre-image");

    // The job has died (kill -9, its ack left unread in the socket): nothing it said is
    // trusted, since its repository lock is gone and a gc may run.
    alive.store(false, Ordering::SeqCst);
    refused(ack(2, good), "process has ended");
    assert!(held(), "an ack of a dead job freed the pre-image");
    alive.store(true, Ordering::SeqCst);

    // The real ack frees the pre-image, and the snapshot reads it back from the repository.
    ack(2, good).unwrap();
    assert!(!held(), "a verified ack did not free the pre-image");
    let mut buf = vec![0u8; orig.len()];
    let n = engine
        .read_snapshot_through(&snap, "v", 0, &mut buf, Some(&*released))
        .unwrap();
    assert_eq!(n, orig.len());
    assert!(buf == orig, "the snapshot reads other bytes after the ack");
    // A second ack of a stored snarf, even a wrong one, changes nothing.
    ack(2, chunk_of(3)).unwrap();
    engine
        .read_snapshot_through(&snap, "v", 0, &mut buf, Some(&*released))
        .unwrap();
    assert!(buf == orig);
    drop(writer);
}

#[test]
fn an_ack_whose_pack_was_deleted_is_refused_and_frees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets::default(),
            repository: None,
            // The volatile tier is what these tests are about.
            snapshots: crate::store::Durability::Volatile,
        },
    )
    .unwrap();
    let store = Store::open(&root, "ack test").unwrap();
    let opts = EngineOptions::from_store(&store);
    let engine = Arc::new(Engine::new(store, opts).unwrap());
    let repo = Repo::init(&dir.path().join("repo"), &RepoInitOptions::default()).unwrap();
    let orig = contents();
    let vol = engine.create_volume("v", orig.len() as u64).unwrap();
    engine.write(&vol, 0, &orig).unwrap();
    let snap = engine.take("s").unwrap();
    engine.write(&vol, 0, &vec![0xee; SNARF as usize]).unwrap();
    let released = Arc::new(Released::open(&engine.store().run_dir(), "test", &engine).unwrap());
    let svc = JobService::new(engine.clone(), Some(released)).with_peer(Arc::new(|| true));
    svc.describe("s").unwrap();
    svc.plan(
        &PlanRequest {
            snapshot: "s".into(),
            volumes: None,
            mode: Mode::Full,
            bases: vec![],
        },
        repo.path(),
    )
    .unwrap();
    let handed = svc.next(64).unwrap().unwrap();
    let durable: Arc<Mutex<Vec<Durable>>> = Arc::default();
    let d2 = durable.clone();
    let mut new = NewBackup::new("s", serde_json::json!({}));
    new.on_durable = Some(Arc::new(move |d| d2.lock().push(d)));
    let writer = repo.begin_backup(new).unwrap();
    let slot = writer
        .add_volume("v", orig.len() as u64, SNARF as u32)
        .unwrap();
    let p = writer.preparer();
    for d in &handed {
        let bytes = d.data.clone().unwrap_or_else(|| vec![0; d.len as usize]);
        writer
            .put(slot, d.snarf, p.prepare(&bytes).unwrap())
            .unwrap();
    }
    writer.flush().unwrap();
    let good = durable
        .lock()
        .iter()
        .find(|d| d.snarf == 0)
        .map(|d| d.chunk)
        .unwrap();
    // What another process's gc does to an uncommitted backup's pack once the job that
    // wrote it died with its ack unread: the pack is deleted.
    std::fs::remove_file(
        repo.path()
            .join("packs")
            .join(format!("{}.pack", good.pack)),
    )
    .unwrap();
    refused(
        svc.ack(&[AckItem {
            vol: 0,
            snarf: 0,
            chunk: StoredChunk::V1(good),
        }]),
        "not sealed in the repository",
    );
    assert!(
        engine.preimage_location(&snap, vol.id(), 0).is_some(),
        "the pre-image of a chunk that no longer exists was freed"
    );
    let mut buf = vec![0u8; SNARF as usize];
    engine.read_snapshot(&snap, "v", 0, &mut buf).unwrap();
    assert!(buf[..] == orig[..SNARF as usize]);
    drop(writer);
}

#[test]
fn reused_snarfs_must_be_acknowledged_with_the_base_backups_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets::default(),
            repository: None,
            // The volatile tier is what these tests are about.
            snapshots: crate::store::Durability::Volatile,
        },
    )
    .unwrap();
    let store = Store::open(&root, "ack test").unwrap();
    let opts = EngineOptions::from_store(&store);
    let engine = Arc::new(Engine::new(store, opts).unwrap());
    let repo = Repo::init(&dir.path().join("repo"), &RepoInitOptions::default()).unwrap();
    let orig = contents();
    let vol = engine.create_volume("v", orig.len() as u64).unwrap();
    engine.write(&vol, 0, &orig).unwrap();
    let a = engine.take("a").unwrap();
    let direct = JobService::new(engine.clone(), None);
    let base = super::pipeline::run(
        &direct,
        &crate::repo::Handle::V1(repo.clone()),
        &super::pipeline::BackupOptions::new("a"),
        &mut NoProgress,
    )
    .unwrap()
    .backup;
    drop(direct);
    // Snarf 1 changes; a snapshot after it backed up incrementally reuses the rest.
    engine
        .write(&vol, SNARF, &vec![0x77; SNARF as usize])
        .unwrap();
    engine.take("b").unwrap();
    let released = Arc::new(Released::open(&engine.store().run_dir(), "test", &engine).unwrap());
    let svc = JobService::new(engine.clone(), Some(released)).with_peer(Arc::new(|| true));
    let plan = svc
        .plan(
            &PlanRequest {
                snapshot: "b".into(),
                volumes: None,
                mode: Mode::Incremental,
                bases: vec![super::plan::Base {
                    volume_id: vol.id(),
                    backup: base.to_string(),
                    name: "v".into(),
                    epoch: a.epoch(),
                    session_id: Some(engine.store().session_id().to_string()),
                    size: orig.len() as u64,
                    snarf_size: SNARF as u32,
                }],
            },
            repo.path(),
        )
        .unwrap();
    assert_eq!(plan.volumes[0].to_send, 1);
    let reader = repo.volume_reader(base.as_str(), "v").unwrap();
    let rec = |i: u64| reader.chunk_ref(i).unwrap();
    let ack = |snarf: u64, chunk: ChunkRef| {
        svc.ack(&[AckItem {
            vol: 0,
            snarf,
            chunk: StoredChunk::V1(chunk),
        }])
    };
    // A reused snarf acknowledged with another snarf's record of the base.
    refused(ack(3, rec(4)), "holds another chunk there");
    // The changed snarf is to be sent, so it cannot be "reused" before it is handed out.
    refused(ack(1, rec(1)), "never handed to this job");
    // The base's own records are accepted, a run of them at once.
    let run: Vec<AckItem> = [0, 2, 3, 4]
        .into_iter()
        .map(|snarf| AckItem {
            vol: 0,
            snarf,
            chunk: StoredChunk::V1(rec(snarf)),
        })
        .collect();
    svc.ack(&run).unwrap();
}
