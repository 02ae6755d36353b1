//! Acknowledgements of a job into a format 2 repository, as the daemon receives them from a
//! peer it does not trust: each check of [`super::service`] refuses what it must (wrong
//! bytes, a wrong length, a tree page, a format 1 reference, a blob of another repository, a
//! place in a frame the pack does not list, a pack gc deleted, a job that has died) and
//! leaves the pre-image held; a good ack frees it, the snapshot reads the snarf back from
//! the repository (also after the daemon restarts), and the pack is pinned until release.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::plan::PlanRequest;
use super::proto::{AckItem, StoredChunk};
use super::released::{Released, RECORD_LEN};
use super::service::{JobService, Session, SnarfData, IDS_KEPT};
use super::vocab::Mode;
use super::Error;
use crate::repo::backend::{Backend, LocalDir};
use crate::repo::v2::{self, chunk::BlobKind, chunk::ChunkRef};
use crate::snapshot::{Engine, EngineOptions, Snapshot};
use crate::store::{Budgets, Durability, InitOptions, Store, Volume};

const SNARF: u64 = 16 << 10;
const SNARFS: u64 = 8;
/// A snarf of zeros in the snapshot.
const ZERO_SNARF: u64 = 5;

/// Incompressible contents (so each snarf's frame fills a 4 KiB pack: it is sealed, hence
/// durable, as soon as the next frame is written), with one all-zero snarf.
fn contents() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v: Vec<u8> = (0..SNARF * SNARFS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let z = (ZERO_SNARF * SNARF) as usize;
    v[z..z + SNARF as usize].fill(0);
    v
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

fn engine_at(root: &Path) -> Arc<Engine> {
    let store = Store::open(root, "ack test").unwrap();
    let opts = EngineOptions::from_store(&store);
    Arc::new(Engine::new(store, opts).unwrap())
}

fn new_engine(root: &Path, snapshots: Durability) -> Arc<Engine> {
    Store::init(
        root,
        &InitOptions {
            snarf_size: SNARF,
            budgets: Budgets::default(),
            repository: None,
            snapshots,
        },
    )
    .unwrap();
    engine_at(root)
}

/// A format 2 repository whose packs seal after every frame of one snarf.
fn small_packs(dir: &Path) -> v2::Repository {
    let b = LocalDir::new(dir);
    b.create_layout().unwrap();
    let b: Arc<dyn Backend> = Arc::new(b);
    v2::Repository::init(
        b,
        &v2::InitOptions {
            pack_target: 4096,
            frame_bytes: SNARF,
            ..v2::InitOptions::default()
        },
    )
    .unwrap()
}

/// Stores the handed snarfs as a job does, without committing; returns the writer and
/// what became durable.
fn store(repo: &v2::Repository, handed: &[SnarfData]) -> (v2::Writer, Vec<v2::Durable>) {
    let mut new = v2::NewBackup::new("s", serde_json::json!({}));
    new.report_durable = true;
    let writer = repo.begin_backup(new).unwrap();
    let slot = writer
        .add_volume("v", SNARF * SNARFS, SNARF as u32, None)
        .unwrap();
    for d in handed {
        let bytes = d.data.clone().unwrap_or_else(|| vec![0; d.len as usize]);
        writer.put(slot, d.snarf, &bytes).unwrap();
    }
    // Frames are compressed on other threads: wait for them, as a job's next batches do.
    writer.flush_frames().unwrap();
    let durable = writer.wait_durable().unwrap();
    (writer, durable)
}

struct Job {
    engine: Arc<Engine>,
    snap: Arc<Snapshot>,
    vol: Arc<Volume>,
    released: Arc<Released>,
    svc: JobService,
    alive: Arc<AtomicBool>,
    handed: Vec<SnarfData>,
}

/// A snapshot `s` of volume `v` with snarfs 2 and [`ZERO_SNARF`] overwritten after it
/// (their pre-images held), and a job planned into `repo` that was handed every snarf.
fn job(engine: Arc<Engine>, repo: &Path) -> Job {
    job_keeping(engine, repo, IDS_KEPT)
}

/// [`job`], with the daemon keeping the content ids of at most `kept` handed snarfs.
fn job_keeping(engine: Arc<Engine>, repo: &Path, kept: usize) -> Job {
    let orig = contents();
    let vol = engine.create_volume("v", orig.len() as u64).unwrap();
    engine.write(&vol, 0, &orig).unwrap();
    let snap = engine.take("s").unwrap();
    for s in [2, ZERO_SNARF] {
        engine
            .write(&vol, s * SNARF, &vec![0xee; SNARF as usize])
            .unwrap();
    }
    let released = Arc::new(Released::open(&engine.store().run_dir(), "test", &engine).unwrap());
    let alive = Arc::new(AtomicBool::new(true));
    let a2 = alive.clone();
    let svc = JobService::new(engine.clone(), Some(released.clone()))
        .with_peer(Arc::new(move || a2.load(Ordering::SeqCst)))
        .with_ids_kept(kept);
    svc.describe("s").unwrap();
    svc.plan(
        &PlanRequest {
            snapshot: "s".into(),
            volumes: None,
            mode: Mode::Full,
            bases: vec![],
        },
        repo,
    )
    .unwrap();
    let handed = svc.next(64).unwrap().unwrap();
    assert_eq!(handed.len(), SNARFS as usize);
    assert_eq!(svc.snarfs_read(), SNARFS, "each handed snarf is read once");
    Job {
        engine,
        snap,
        vol,
        released,
        svc,
        alive,
        handed,
    }
}

impl Job {
    fn held(&self, snarf: u64) -> bool {
        self.engine
            .preimage_location(&self.snap, self.vol.id(), snarf)
            .is_some()
    }

    fn ack(&self, snarf: u64, chunk: StoredChunk) -> super::Result<()> {
        self.svc.ack(&[AckItem {
            vol: 0,
            snarf,
            chunk,
        }])
    }

    fn reads_back(&self) -> Vec<u8> {
        let mut buf = vec![0u8; (SNARF * SNARFS) as usize];
        let n = self
            .engine
            .read_snapshot_through(&self.snap, "v", 0, &mut buf, Some(&*self.released))
            .unwrap();
        assert_eq!(n, buf.len());
        buf
    }
}

fn chunk_of(durable: &[v2::Durable], snarf: u64) -> ChunkRef {
    durable
        .iter()
        .find(|d| d.snarf == snarf)
        .map(|d| d.chunk)
        .unwrap_or_else(|| panic!("snarf {snarf} is not durable: {durable:?}"))
}

#[test]
fn format_2_acks_are_verified_before_any_preimage_is_freed() {
    verified_before_freed(IDS_KEPT);
}

#[test]
fn format_2_acks_past_the_kept_ids_are_verified_by_reading_back() {
    verified_before_freed(0);
}

/// Every check refuses what it must, with the daemon keeping the ids of `kept` handed
/// snarfs (0: each ack reads its snarf back).
fn verified_before_freed(kept: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = new_engine(&dir.path().join("store"), Durability::Volatile);
    let repo_dir = dir.path().join("repo");
    let repo = small_packs(&repo_dir);
    let j = job_keeping(engine, &repo_dir, kept);
    let (writer, durable) = store(&repo, &j.handed);
    // Each frame sealed its pack when the next was written: all but the last snarf is
    // durable, and the last one is not reported before its pack is sealed.
    assert!(durable.iter().all(|d| d.snarf != SNARFS - 1), "{durable:?}");
    let good = chunk_of(&durable, 2);
    assert!(!good.is_zero() && good.kind == BlobKind::Data);
    let v2c = StoredChunk::V2;

    // Another snarf's blob: real, sealed, the right length, the wrong bytes.
    refused(
        j.ack(2, v2c(chunk_of(&durable, 3))),
        "does not hold the snapshot's bytes",
    );
    // A zero marker for bytes that are not zeros.
    refused(j.ack(2, v2c(ChunkRef::zero(SNARF as u32))), "does not hold");
    // The right blob with another length.
    refused(
        j.ack(
            2,
            v2c(ChunkRef {
                raw_len: 1000,
                ..good
            }),
        ),
        "for a snarf of 16384",
    );
    // A tree page is no snarf's data.
    refused(
        j.ack(
            2,
            v2c(ChunkRef {
                kind: BlobKind::Page,
                ..good
            }),
        ),
        "tree page",
    );
    // Past the volume.
    refused(j.ack(SNARFS, v2c(good)), "which has 8 snarfs");
    // The right id at a place in the frame, or a frame, that the pack does not list.
    for wrong in [
        ChunkRef {
            within: good.within + 1,
            ..good
        },
        ChunkRef {
            stored_len: good.stored_len - 1,
            ..good
        },
    ] {
        refused(j.ack(2, v2c(wrong)), "does not list");
    }
    // A format 1 reference to a format 2 repository.
    refused(
        j.ack(
            2,
            StoredChunk::V1(crate::repo::ChunkRef {
                id: good.id,
                pack: good.pack,
                offset: good.offset,
                stored_len: good.stored_len,
                raw_len: good.raw_len,
            }),
        ),
        "format 1 chunk reference",
    );
    // The same bytes stored in another repository: its pack is not in the job's.
    let other = small_packs(&dir.path().join("other"));
    let (other_writer, other_durable) = store(&other, &j.handed);
    refused(
        j.ack(2, v2c(chunk_of(&other_durable, 2))),
        "not sealed in the repository",
    );
    drop(other_writer);
    assert!(j.held(2), "a refused ack freed the pre-image");

    // The job has died (kill -9, its ack left unread in the socket): nothing it said is
    // trusted, since its repository lock is gone and a gc may run.
    j.alive.store(false, Ordering::SeqCst);
    refused(j.ack(2, v2c(good)), "process has ended");
    assert!(j.held(2), "an ack of a dead job freed the pre-image");
    j.alive.store(true, Ordering::SeqCst);

    // The real acks free the pre-images (a zero snarf by its marker), the snapshot reads
    // them back from the repository, and the pack is pinned for the snapshot.
    let zero = chunk_of(&durable, ZERO_SNARF);
    assert!(zero.is_zero());
    j.svc
        .ack(&[
            AckItem {
                vol: 0,
                snarf: 2,
                chunk: v2c(good),
            },
            AckItem {
                vol: 0,
                snarf: ZERO_SNARF,
                chunk: v2c(zero),
            },
        ])
        .unwrap();
    assert!(!j.held(2), "a verified ack did not free the pre-image");
    assert!(
        !j.held(ZERO_SNARF),
        "a verified zero ack did not free the pre-image"
    );
    assert!(
        j.reads_back() == contents(),
        "the snapshot reads other bytes after the ack"
    );
    if kept == 0 {
        assert!(j.svc.snarfs_read() > SNARFS, "no ack read its snarf back");
    }
    let pins: Vec<_> = std::fs::read_dir(repo_dir.join("pins"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    let pinned = std::fs::read_to_string(&pins[0]).unwrap();
    assert!(pinned.contains(&good.pack.to_string()), "{pinned}");
    assert!(v2::gc::referenced(&repo).unwrap().contains(&good.pack));
    // A second ack of a stored snarf, even a wrong one, changes nothing.
    j.ack(2, v2c(chunk_of(&durable, 3))).unwrap();
    assert!(j.reads_back() == contents());
    // Releasing the snapshot lets go of the pin.
    j.engine.release("s").unwrap();
    assert_eq!(j.released.sweep(), 1);
    assert_eq!(std::fs::read_dir(repo_dir.join("pins")).unwrap().count(), 0);
    drop(writer);
}

#[test]
fn the_daemon_checks_format_2_acks_without_reading_the_snarfs_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = new_engine(&dir.path().join("store"), Durability::Volatile);
    let repo_dir = dir.path().join("repo");
    let repo = small_packs(&repo_dir);
    let j = job(engine, &repo_dir);
    let (writer, durable) = store(&repo, &j.handed);
    let served = j.svc.snarfs_read();
    // A wrong ack is still refused from the id kept when the snarf was served.
    refused(
        j.ack(2, StoredChunk::V2(chunk_of(&durable, 3))),
        "does not hold the snapshot's bytes",
    );
    refused(
        j.ack(3, StoredChunk::V2(ChunkRef::zero(SNARF as u32))),
        "does not hold",
    );
    assert!(j.held(2));
    // Every durable snarf acknowledged at once (the zero one by its marker): all verified,
    // all freed, none read again.
    let acks: Vec<AckItem> = durable
        .iter()
        .map(|d| AckItem {
            vol: 0,
            snarf: d.snarf,
            chunk: StoredChunk::V2(d.chunk),
        })
        .collect();
    assert_eq!(acks.len(), SNARFS as usize - 1);
    j.svc.ack(&acks).unwrap();
    assert_eq!(
        j.svc.snarfs_read(),
        served,
        "the daemon read snarfs again to check their acks"
    );
    assert!(!j.held(2) && !j.held(ZERO_SNARF));
    assert!(j.reads_back() == contents());
    // The last snarf, durable once the commit seals its pack, is checked the same way.
    let (_, last) = writer.commit_reporting().unwrap();
    let last: Vec<AckItem> = last
        .iter()
        .map(|d| AckItem {
            vol: 0,
            snarf: d.snarf,
            chunk: StoredChunk::V2(d.chunk),
        })
        .collect();
    assert!(last.iter().any(|a| a.snarf == SNARFS - 1), "{last:?}");
    j.svc.ack(&last).unwrap();
    assert_eq!(j.svc.snarfs_read(), served);
    assert!(j.reads_back() == contents());
}

#[test]
fn a_format_2_ack_whose_pack_was_deleted_is_refused_and_frees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = new_engine(&dir.path().join("store"), Durability::Volatile);
    let repo_dir = dir.path().join("repo");
    let repo = small_packs(&repo_dir);
    let j = job(engine, &repo_dir);
    let (writer, durable) = store(&repo, &j.handed);
    let good = chunk_of(&durable, 2);
    // What a gc does to an uncommitted backup's pack once the job that wrote it died.
    let key = v2::pack::pack_key(&good);
    assert!(repo.backend().delete(&key).unwrap());
    refused(
        j.ack(2, StoredChunk::V2(good)),
        "not sealed in the repository",
    );
    assert!(
        j.held(2),
        "the pre-image of a blob that no longer exists was freed"
    );
    let mut buf = vec![0u8; SNARF as usize];
    j.engine
        .read_snapshot(&j.snap, "v", 2 * SNARF, &mut buf)
        .unwrap();
    assert!(buf[..] == contents()[2 * SNARF as usize..3 * SNARF as usize]);
    drop(writer);
}

/// The table file of volume `vol` of the only snapshot with one.
fn table_file(run: &Path) -> PathBuf {
    let dir = std::fs::read_dir(run.join(super::released::DIR))
        .unwrap()
        .next()
        .expect("a table folder")
        .unwrap()
        .path();
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "tbl"))
        .expect("a table file")
}

#[test]
fn a_persistent_snapshot_reads_its_format_2_snarfs_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let engine = new_engine(&root, Durability::Persistent);
    let repo_dir = dir.path().join("repo");
    let repo = small_packs(&repo_dir);
    let j = job(engine, &repo_dir);
    let (writer, durable) = store(&repo, &j.handed);
    let good = chunk_of(&durable, 2);
    j.ack(2, StoredChunk::V2(good)).unwrap();
    assert!(!j.held(2));
    // The record says format 2 (byte 68), beside the repository number.
    let tbl = table_file(&root.join("run"));
    let bytes = std::fs::read(&tbl).unwrap();
    let rec = &bytes[(2 * RECORD_LEN) as usize..(3 * RECORD_LEN) as usize];
    assert_eq!(rec[..64], good.encode()[..]);
    assert_eq!(rec[68], 2);
    // The job is abandoned and the daemon stops (the persistent snapshot stays).
    drop(writer);
    let Job {
        engine,
        snap,
        released,
        svc,
        ..
    } = j;
    drop(svc);
    drop(released);
    drop(snap);
    drop(engine);
    // The next daemon adopts the table: snarf 2 comes back from the format 2 repository,
    // whose pin it keeps.
    let engine = engine_at(&root);
    let snap = engine.snapshot("s").unwrap();
    let released = Released::open(&engine.store().run_dir(), "test", &engine).unwrap();
    let mut buf = vec![0u8; (SNARF * SNARFS) as usize];
    engine
        .read_snapshot_through(&snap, "v", 0, &mut buf, Some(&released))
        .unwrap();
    assert!(
        buf == contents(),
        "the snapshot reads other bytes after a restart"
    );
    assert!(v2::gc::referenced(&repo).unwrap().contains(&good.pack));
    // A record of a format this snarf does not know is refused by name, never misread.
    let mut patched = std::fs::read(&tbl).unwrap();
    patched[(2 * RECORD_LEN) as usize + 68] = 9;
    std::fs::write(&tbl, &patched).unwrap();
    let e = engine
        .read_snapshot_through(&snap, "v", 0, &mut buf, Some(&released))
        .unwrap_err();
    assert!(e.to_string().contains("format 9"), "{e}");
}

/// A direct-mode session that holds the job's first acknowledgement until the job has asked
/// for another batch, which a job that asks only after storing the last one never does.
struct Overlapping {
    inner: JobService,
    nexts: parking_lot::Mutex<usize>,
    asked: parking_lot::Condvar,
    acked: AtomicBool,
    overlapped: AtomicBool,
}

impl Session for Overlapping {
    fn describe(&self, snapshot: &str) -> super::Result<super::plan::SnapshotDesc> {
        self.inner.describe(snapshot)
    }
    fn plan(&self, req: &PlanRequest, repo: &Path) -> super::Result<super::plan::Plan> {
        self.inner.plan(req, repo)
    }
    fn next(&self, max: usize) -> super::Result<Option<Vec<SnarfData>>> {
        *self.nexts.lock() += 1;
        self.asked.notify_all();
        self.inner.next(max)
    }
    fn ack(&self, items: &[AckItem]) -> super::Result<()> {
        if !self.acked.swap(true, Ordering::SeqCst) {
            let mut nexts = self.nexts.lock();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while *nexts < 2 && !self.asked.wait_until(&mut nexts, until).timed_out() {}
            self.overlapped.store(*nexts >= 2, Ordering::SeqCst);
        }
        self.inner.ack(items)
    }
    fn done(&self, backup: &str) -> super::Result<()> {
        self.inner.done(backup)
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
}

#[test]
fn a_format_2_job_asks_for_the_next_batch_while_it_stores_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let engine = new_engine(&dir.path().join("store"), Durability::Volatile);
    let repo_dir = dir.path().join("repo");
    let repo = small_packs(&repo_dir);
    // Snarf 0 is zeros, so it is durable as soon as it is put and acknowledged at once.
    let mut orig = contents();
    orig[..SNARF as usize].fill(0);
    let vol = engine.create_volume("v", orig.len() as u64).unwrap();
    engine.write(&vol, 0, &orig).unwrap();
    engine.take("s").unwrap();
    let session = Overlapping {
        inner: JobService::new(engine.clone(), None),
        nexts: parking_lot::Mutex::new(0),
        asked: parking_lot::Condvar::new(),
        acked: AtomicBool::new(false),
        overlapped: AtomicBool::new(false),
    };
    let mut o = super::pipeline::BackupOptions::new("s");
    o.batch = 1;
    o.ack_batch = 1;
    o.mode = Mode::Full;
    let handle = crate::repo::Handle::V2(repo);
    let sum =
        super::pipeline::run(&session, &handle, &o, &mut super::progress::NoProgress).unwrap();
    assert!(
        session.overlapped.load(Ordering::SeqCst),
        "the job asked for no batch while it stored the one before"
    );
    assert_eq!(sum.snarfs_read(), SNARFS);
    let dest = tempfile::tempdir().unwrap();
    handle
        .restore(sum.backup.as_str(), Some("v"), dest.path(), &mut |_| {})
        .unwrap();
    assert!(std::fs::read(dest.path().join("v")).unwrap() == orig);
}
