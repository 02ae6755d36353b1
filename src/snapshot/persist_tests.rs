//! Tests of persistent snapshots: they read what they froze after a clean close and after
//! the process dies (its pre-images were durable before the writes they protect), keep a
//! broken state and the snarfs a backup stored, hold deleted volumes, and are broken, not
//! trusted, when their volume changed behind snarf's back. Volatile ones end with the mount.
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::store::{InitOptions, Store};

const SNARF: u64 = 4096;

fn new_store(dir: &Path, disk: u64) -> PathBuf {
    let root = dir.join("s");
    let opts = InitOptions {
        snarf_size: SNARF,
        budgets: Budgets {
            memory: 8 * SNARF,
            disk,
            break_after_secs: 0.2,
        },
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

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn read_all(e: &Engine, snap: &str, vol: &str) -> Vec<u8> {
    let s = e.snapshot(snap).unwrap();
    let size = s.volume(vol).unwrap().attr.size as usize;
    let mut out = vec![0u8; size];
    assert_eq!(e.read_snapshot(&s, vol, 0, &mut out).unwrap(), size);
    out
}

/// A volume of 64 snarfs, a snapshot of it, and half its snarfs overwritten since.
fn setup(root: &Path) -> (Engine, Vec<u8>) {
    let e = engine(root);
    let v = e.create_volume("v", 64 * SNARF).unwrap();
    let frozen = pattern(1, 64 * SNARF as usize);
    e.write(&v, 0, &frozen).unwrap();
    e.take("s").unwrap();
    for i in (0..64).step_by(2) {
        e.write(&v, i * SNARF + 100, &pattern(2, 3000)).unwrap();
    }
    assert_eq!(read_all(&e, "s", "v"), frozen);
    (e, frozen)
}

#[test]
fn a_persistent_snapshot_reads_what_it_froze_after_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, frozen) = setup(&root);
    e.close().unwrap();
    drop(e);
    let e = engine(&root);
    assert!(!e.recovered().unclean);
    assert_eq!((e.recovered().snapshots, e.recovered().preimages), (1, 32));
    assert_eq!(read_all(&e, "s", "v"), frozen);
    // Written again after the restart: captured for the snarfs not captured before, never
    // again for those that were.
    let v = e.volume("v").unwrap();
    e.write(&v, 0, &vec![7u8; 64 * SNARF as usize]).unwrap();
    assert_eq!(read_all(&e, "s", "v"), frozen);
    assert_eq!(e.preimages_needed_by(&e.snapshot("s").unwrap()), 64);
    e.release("s").unwrap();
    assert_eq!(e.stats().cache.disk_used, 0);
    assert!(e.list().is_empty());
}

#[test]
fn a_persistent_snapshot_reads_what_it_froze_after_the_process_dies() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, frozen) = setup(&root);
    // No close: as after kill -9, only what reached the files is there.
    drop(e);
    let e = engine(&root);
    let r = e.recovered();
    assert!(r.unclean);
    assert_eq!((r.snapshots, r.preimages, r.torn), (1, 32, 0));
    assert_eq!(read_all(&e, "s", "v"), frozen);
    // The stamps were lost; the pre-images say those snarfs were written since.
    let v = e.volume("v").unwrap();
    e.write(&v, 0, &vec![7u8; 64 * SNARF as usize]).unwrap();
    assert_eq!(read_all(&e, "s", "v"), frozen);
    // A second death and restart changes nothing.
    drop(e);
    let e = engine(&root);
    assert_eq!(read_all(&e, "s", "v"), frozen);
}

#[test]
fn all_zero_pre_images_at_the_end_of_the_pre_image_file_come_back_after_the_process_dies() {
    // Their records are all a group of slots holds, so the file ends inside that group's
    // record page; an open must still find every one of them.
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let e = engine(&root);
    let v = e.create_volume("v", 74 * SNARF).unwrap();
    let mut frozen = vec![0u8; 74 * SNARF as usize];
    frozen[..64 * SNARF as usize].copy_from_slice(&pattern(1, 64 * SNARF as usize));
    e.write(&v, 0, &frozen[..64 * SNARF as usize]).unwrap();
    e.take("s").unwrap();
    // Snarfs 0..64 take the data slots of the first group, 64..74 (never written) only
    // records in the second.
    for i in 0..74 {
        e.write(&v, i * SNARF + 7, &pattern(2, 100)).unwrap();
    }
    assert_eq!(read_all(&e, "s", "v"), frozen);
    drop(e);
    let e = engine(&root);
    assert_eq!(e.recovered().preimages, 74);
    assert_eq!(read_all(&e, "s", "v"), frozen);
}

#[test]
fn a_volatile_snapshots_backup_frees_no_pre_image_a_persistent_one_needs_across_deaths() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let e = engine(&root);
    let v = e.create_volume("v", 32 * SNARF).unwrap();
    let mut live = pattern(1, 32 * SNARF as usize);
    e.write(&v, 0, &live).unwrap();
    e.take_with("p", Durability::Persistent).unwrap();
    let p_frozen = live.clone();
    // Half the snarfs written between P and V: their pre-images serve P only; the others
    // written after V are shared by both.
    for i in (0..32).step_by(2) {
        let at = (i * SNARF) as usize;
        live[at..at + 500].copy_from_slice(&pattern(2, 500));
        e.write(&v, i * SNARF, &pattern(2, 500)).unwrap();
    }
    let vs = e.take_with("v", Durability::Volatile).unwrap();
    let v_frozen = live.clone();
    for i in 0..32 {
        let at = (i * SNARF) as usize + 1000;
        live[at..at + 300].copy_from_slice(&pattern(3, 300));
        e.write(&v, i * SNARF + 1000, &pattern(3, 300)).unwrap();
    }
    assert_eq!(read_all(&e, "v", "v"), v_frozen);
    // V's backup stored every snarf: its acknowledgements free what only it needed.
    e.release_snarfs(&vs, v.id(), &(0..32).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(read_all(&e, "p", "v"), p_frozen);
    drop(vs);
    e.release("v").unwrap();
    assert_eq!(read_all(&e, "p", "v"), p_frozen);
    drop(v);
    drop(e);
    let e = engine(&root);
    assert_eq!(read_all(&e, "p", "v"), p_frozen);
}

#[test]
fn volatile_snapshots_end_with_the_mount_and_take_no_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let e = engine(&root);
    let v = e.create_volume("v", 4 * SNARF).unwrap();
    e.write(&v, 0, &pattern(1, 4 * SNARF as usize)).unwrap();
    e.take_with("tmp", Durability::Volatile).unwrap();
    e.write(&v, 0, &pattern(2, 4 * SNARF as usize)).unwrap();
    assert_eq!(e.stats().cache.disk_used, 0, "memory first");
    assert_eq!(read_all(&e, "tmp", "v"), pattern(1, 4 * SNARF as usize));
    drop(e);
    let e = engine(&root);
    assert!(e.list().is_empty());
    assert_eq!(e.recovered().discarded, 0);
}

#[test]
fn a_snapshot_broken_for_room_stays_broken_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Room on disk for four pre-images only.
    let root = new_store(dir.path(), 4 * SNARF);
    let e = engine(&root);
    let v = e.create_volume("v", 16 * SNARF).unwrap();
    e.write(&v, 0, &pattern(1, 16 * SNARF as usize)).unwrap();
    e.take("s").unwrap();
    // The writes never fail; the snapshot is broken instead.
    e.write(&v, 0, &pattern(2, 16 * SNARF as usize)).unwrap();
    let reason = match e.snapshot("s").unwrap().state() {
        SnapState::Broken(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("pre-image room"), "{reason}");
    assert_eq!(e.stats().cache.disk_used, 0, "its pre-images were freed");
    drop(e);
    let e = engine(&root);
    match e.snapshot("s").unwrap().state() {
        SnapState::Broken(r) => assert_eq!(r, reason),
        other => panic!("broken for room came back {other:?}"),
    }
    let err = e
        .read_snapshot(&e.snapshot("s").unwrap(), "v", 0, &mut [0u8; 10])
        .unwrap_err();
    assert!(matches!(err, Error::Broken { .. }), "{err}");
    e.release("s").unwrap();
    drop(e);
    assert!(engine(&root).list().is_empty());
}

#[test]
fn snarfs_a_backup_stored_stay_stored_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, _) = setup(&root);
    let s = e.snapshot("s").unwrap();
    let id = e.volume("v").unwrap().id();
    e.release_snarfs(&s, id, &[0, 1, 2]).unwrap();
    assert_eq!(e.preimages_needed_by(&s), 30);
    drop(s);
    drop(e);
    let e = engine(&root);
    let s = e.snapshot("s").unwrap();
    assert_eq!(e.preimages_needed_by(&s), 30);
    // Those snarfs are read from where the backup put them, even after this crash lost
    // the stamps that would say whether they changed.
    for i in 0..3u64 {
        let err = e
            .read_snapshot(&s, "v", i * SNARF, &mut [0u8; 16])
            .unwrap_err();
        assert!(
            matches!(err, Error::StoredInBackup { snarf, .. } if snarf == i),
            "{err}"
        );
    }
    let mut buf = vec![0u8; SNARF as usize];
    e.read_snapshot(&s, "v", 3 * SNARF, &mut buf).unwrap();
    assert_eq!(
        buf,
        pattern(1, 64 * SNARF as usize)[3 * SNARF as usize..4 * SNARF as usize]
    );
}

#[test]
fn a_deleted_volume_stays_readable_through_a_persistent_snapshot_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, frozen) = setup(&root);
    e.delete_volume("v").unwrap();
    e.close().unwrap();
    drop(e);
    let e = engine(&root);
    assert!(e.volume("v").is_err());
    assert_eq!(read_all(&e, "s", "v"), frozen);
    e.release("s").unwrap();
    drop(e);
    // With the snapshot gone, so is the deleted volume's file.
    let e = engine(&root);
    drop(e);
    assert_eq!(std::fs::read_dir(root.join("retired")).unwrap().count(), 0);
}

#[test]
fn a_store_opened_without_the_engine_keeps_the_deleted_volumes_a_snapshot_holds() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, frozen) = setup(&root);
    e.delete_volume("v").unwrap();
    e.close().unwrap();
    drop(e);
    // A tool opens and closes the store on its own: it cannot know what snapshots hold.
    let store = Store::open(&root, "tool").unwrap();
    store.close().unwrap();
    drop(store);
    let e = engine(&root);
    assert_eq!(read_all(&e, "s", "v"), frozen);
    assert_eq!(e.snapshot("s").unwrap().state(), SnapState::Live);
}

#[test]
fn a_volume_changed_behind_snarfs_back_breaks_its_persistent_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let (e, _) = setup(&root);
    e.close().unwrap();
    drop(e);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("volumes/v"))
        .unwrap()
        .write_all_at(b"behind your back", SNARF)
        .unwrap();
    let e = engine(&root);
    match e.snapshot("s").unwrap().state() {
        SnapState::Broken(r) => assert!(r.contains("changed outside snarf"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.recovered().broken_now.len(), 1);
    assert_eq!(e.stats().cache.disk_used, 0);
}

#[test]
fn a_pre_image_of_a_write_whose_region_was_never_marked_is_dropped_after_a_death() {
    // A capture's pre-image commit and its region's write-intent mark run side by side, and
    // the write waits for both: a death between them leaves a durable record of a write
    // that never happened, which must not count the snarf as written since the backup.
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 1 << 20);
    let e = engine(&root);
    let v = e.create_volume("v", 64 * SNARF).unwrap();
    let frozen = pattern(1, 64 * SNARF as usize);
    e.write(&v, 0, &frozen).unwrap();
    let base = e.take("base").unwrap();
    let since = base.epoch();
    e.backup_committed(&base);
    v.intent().unwrap().flush().unwrap();
    drop(base);
    e.release("base").unwrap();
    let s = e.take("s").unwrap();
    // What a capture for a write into snarf 5 writes, the write and its mark never issued.
    let w = v.read_state().stamp(5);
    let mut old = vec![0u8; SNARF as usize];
    e.read(&v, 5 * SNARF, &mut old).unwrap();
    let file = e.cache.file();
    let slot = file.alloc(true).unwrap();
    let record = cow::Record {
        vol: v.id(),
        snarf: 5,
        first: w,
        last: s.epoch(),
        zero: false,
    };
    let t = file.write_durable(slot, &record, &old).unwrap();
    file.wait(t).unwrap();
    drop((s, v));
    drop(e);
    let e = engine(&root);
    assert_eq!(e.recovered().torn, 1, "the record is dropped");
    assert_eq!(e.recovered().preimages, 0);
    assert_eq!(read_all(&e, "s", "v"), frozen);
    let now = e.take("now").unwrap();
    match e.changed_snarfs(&now, "v", since).unwrap() {
        Changed::Snarfs(set) => assert_eq!(set.count(), 0, "nothing was written since the backup"),
        Changed::Lost { reason } => panic!("tracking lost: {reason}"),
    }
}
