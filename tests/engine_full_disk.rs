//! The engine over a store whose filesystem is really full (a small tmpfs filled to the
//! last byte): pre-images that cannot be spilled make the spill act as a full budget, so
//! writers are throttled and then a snapshot is broken with the reason, and never see the
//! error; a logical size that cannot be recorded is reported by the next fsync instead of
//! failing the truncate.

mod disks;

use std::path::Path;

use snarf::snapshot::{Durability, Engine, EngineOptions, SnapState};
use snarf::store::{Budgets, InitOptions, Store};

const SNARF: usize = 64 << 10;

fn engine_on(root: &Path, budgets: Budgets) -> Engine {
    let opts = InitOptions {
        budgets,
        ..InitOptions::default()
    };
    Store::init(root, &opts).expect("init");
    let store = Store::open(root, "test").expect("open");
    let opts = EngineOptions::from_store(&store);
    Engine::new(store, opts).expect("engine")
}

fn errno(e: snarf::snapshot::Error) -> i32 {
    snarf::fuse::FsError::from(e).errno
}

#[test]
fn a_full_spill_disk_throttles_then_breaks_the_snapshot_and_writers_never_fail() {
    if !disks::root_available() {
        return;
    }
    // Durable pre-images (persistent) and spilled ones (volatile) alike.
    full_disk_breaks(Durability::Persistent);
    full_disk_breaks(Durability::Volatile);
}

fn full_disk_breaks(durability: Durability) {
    let fs = disks::Tmpfs::new("8M");
    let e = engine_on(
        &fs.path.join("store"),
        Budgets {
            memory: SNARF as u64,
            disk: 4 << 30,
            break_after_secs: 1.0,
        },
    );
    let v = e.create_volume("v", (32 * SNARF) as u64).expect("create");
    e.write(&v, 0, &vec![1u8; 32 * SNARF]).expect("first data");
    e.take_with("keep", durability).expect("snapshot");
    fs.fill("filler");

    // A pre-image cannot be written to the disk, which is full (a volatile snapshot's
    // first one fits in memory).
    let start = std::time::Instant::now();
    for i in 0..32 {
        e.write(&v, (i * SNARF) as u64, &vec![2u8; SNARF])
            .unwrap_or_else(|err| panic!("write of snarf {i} failed: {err}"));
    }
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(900),
        "{durability:?}: writers were not throttled before the break"
    );
    let snap = e.snapshot("keep").expect("listed");
    match snap.state() {
        SnapState::Broken(reason) => assert!(
            reason.contains("could not be written to") && reason.contains("No space left"),
            "{durability:?}: {reason}"
        ),
        other => panic!("{durability:?}: snapshot not broken: {other:?}"),
    }
    let mut buf = vec![0u8; SNARF];
    let err = e.read_snapshot(&snap, "v", 0, &mut buf).unwrap_err();
    assert_eq!(errno(err), libc::EIO);
    assert_eq!(e.stats().broken, 1);
    let mut all = vec![0u8; 32 * SNARF];
    e.read(&v, 0, &mut all).expect("read");
    assert!(all.iter().all(|&b| b == 2));

    // Once there is room again, new snapshots spill as before.
    std::fs::remove_file(fs.path.join("filler")).expect("rm filler");
    e.release("keep").expect("release");
    let s2 = e.take_with("again", durability).expect("snapshot");
    for i in 0..4 {
        e.write(&v, (i * SNARF) as u64, &vec![3u8; SNARF])
            .expect("write");
    }
    assert_eq!(s2.state(), SnapState::Live);
    assert!(e.stats().cache.disk_used >= 3 * SNARF as u64);
    e.read_snapshot(&s2, "v", 0, &mut all)
        .expect("read snapshot");
    assert!(all.iter().all(|&b| b == 2));
    e.close().expect("close");
}

#[test]
fn a_reserve_takes_first_writes_on_a_full_disk_then_the_snapshot_breaks_not_a_writer() {
    if !disks::root_available() {
        return;
    }
    // Room for the volume, the reserve of empty pre-image slots and the margin it leaves.
    let fs = disks::Tmpfs::new("96M");
    let root = fs.path.join("store");
    let e = engine_on(
        &root,
        Budgets {
            memory: SNARF as u64,
            disk: 4 << 30,
            break_after_secs: 1.0,
        },
    );
    let reserve = (snarf::snapshot::cow::RESERVE_BYTES / SNARF as u64) as usize;
    let n = 2 * reserve;
    let v = e.create_volume("v", (n * SNARF) as u64).expect("create");
    e.write(&v, 0, &vec![1u8; n * SNARF]).expect("first data");
    e.take_with("keep", Durability::Persistent)
        .expect("snapshot");
    let file = root.join("cow").join(snarf::snapshot::cow::FILE);
    let len = std::fs::metadata(&file).expect("pre-image store").len();
    assert!(
        len >= snarf::snapshot::cow::RESERVE_BYTES,
        "the snapshot wrote its reserve first: {len} bytes"
    );
    fs.fill("filler");

    // The reserve's slots are written already: pre-images go there though the disk is full.
    let start = std::time::Instant::now();
    let within = reserve - 8;
    for i in 0..within {
        e.write(&v, (i * SNARF) as u64, &vec![2u8; SNARF])
            .unwrap_or_else(|err| panic!("write of snarf {i} failed: {err}"));
    }
    let snap = e.snapshot("keep").expect("listed");
    assert_eq!(snap.state(), SnapState::Live, "the reserve held them");
    assert_eq!(e.stats().cache.disk_used, (within * SNARF) as u64);
    let mut buf = vec![0u8; SNARF];
    e.read_snapshot(&snap, "v", ((within - 1) * SNARF) as u64, &mut buf)
        .expect("read snapshot");
    assert!(buf.iter().all(|&b| b == 1));
    // Past it the disk is full: writers are throttled, then the snapshot breaks; no writer
    // sees the error.
    for i in within..n {
        e.write(&v, (i * SNARF) as u64, &vec![2u8; SNARF])
            .unwrap_or_else(|err| panic!("write of snarf {i} failed: {err}"));
    }
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(900),
        "writers were not throttled before the break"
    );
    match snap.state() {
        SnapState::Broken(reason) => assert!(
            reason.contains("could not be written to") && reason.contains("No space left"),
            "{reason}"
        ),
        other => panic!("snapshot not broken: {other:?}"),
    }
    let mut all = vec![0u8; n * SNARF];
    e.read(&v, 0, &mut all).expect("read");
    assert!(all.iter().all(|&b| b == 2));
    std::fs::remove_file(fs.path.join("filler")).expect("rm filler");
    e.close().expect("close");
}

#[test]
fn a_shrink_under_a_snapshot_on_a_full_disk_succeeds_and_fsync_reports_what_is_not_durable() {
    if !disks::root_available() {
        return;
    }
    let fs = disks::Tmpfs::new("8M");
    let root = fs.path.join("store");
    {
        let e = engine_on(&root, Budgets::default());
        let v = e.create_volume("v", (16 * SNARF) as u64).expect("create");
        e.write(&v, 0, &vec![7u8; 16 * SNARF]).expect("data");
        let snap = e.take("s").expect("snapshot");
        fs.fill("filler");
        // The data past the new end stays for the snapshot; recording that on a full
        // disk fails, which the truncate must not.
        e.resize(&v, 1000).expect("shrink");
        assert_eq!(v.size(), 1000);
        let err = e.fsync(&v).unwrap_err();
        assert_eq!(errno(err), libc::ENOSPC);
        let mut buf = vec![0u8; 16 * SNARF];
        e.read_snapshot(&snap, "v", 0, &mut buf)
            .expect("snapshot read");
        assert!(buf.iter().all(|&b| b == 7));
        // With room again the next fsync makes it durable...
        std::fs::remove_file(fs.path.join("filler")).expect("rm filler");
        e.fsync(&v).expect("fsync");
        // ...so a crash now (no close) still trims the data past the end.
    }
    let store = Store::open(&root, "test").expect("reopen");
    assert_eq!(store.volume("v").expect("v").size(), 1000);
}
