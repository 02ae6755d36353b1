//! Tests of sizes the engine cannot serve and of damaged state files: every size that
//! enters is checked and refused with EFBIG before anything changes, a volume file found
//! too large still lets the store open, and stamps or a catalogue holding impossible values
//! are never trusted.

use std::path::{Path, PathBuf};

use super::*;
use crate::fuse::FsError;
use crate::store::{InitOptions, Store};

const EIB: u64 = 1 << 60;
/// The largest volume served with 64 KiB snarfs: 2^28 snarfs.
const MAX_64K: u64 = (1 << 28) * (64 << 10);

fn new_store(dir: &Path, snarf_size: u64) -> PathBuf {
    let root = dir.join("s");
    let opts = InitOptions {
        snarf_size,
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

fn errno(e: Error) -> i32 {
    FsError::from(e).errno
}

fn file_len(root: &Path, name: &str) -> u64 {
    std::fs::metadata(root.join("volumes").join(name))
        .unwrap()
        .len()
}

#[test]
fn sizes_past_the_largest_served_are_refused_with_efbig_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let e = engine(&root);
    let v = e.create_volume("v", 1 << 20).unwrap();
    e.write(&v, 0, b"kept").unwrap();
    let max = MAX_64K;

    // truncate -s 1E, and a size just past the largest.
    for size in [EIB, max + 1, u64::MAX] {
        let err = e.resize(&v, size).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("larger than"), "{msg}");
        assert_eq!(errno(err), libc::EFBIG, "{size}");
    }
    // A write whose end is past it.
    for offset in [max - 2, EIB, u64::MAX - 1] {
        assert_eq!(errno(e.write(&v, offset, b"abc").unwrap_err()), libc::EFBIG);
    }
    // A new volume of such a size, which leaves no file behind.
    assert_eq!(
        errno(e.create_volume("huge", EIB).unwrap_err()),
        libc::EFBIG
    );
    assert!(!root.join("volumes/huge").exists());

    // Nothing changed.
    assert_eq!(v.size(), 1 << 20);
    assert_eq!(file_len(&root, "v"), 1 << 20);
    let mut buf = [0u8; 4];
    e.read(&v, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"kept");
    e.close().unwrap();
    drop(e);
    let e = engine(&root);
    assert_eq!(e.volume("v").unwrap().size(), 1 << 20);
}

#[test]
fn a_volume_file_too_large_to_serve_still_opens_the_store_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB snarfs serve up to 1 TiB; a 2 TiB sparse file is past that on any filesystem.
    let root = new_store(dir.path(), 4096);
    {
        let e = engine(&root);
        let v = e.create_volume("big", 1 << 20).unwrap();
        e.write(&v, 0, b"rescue me").unwrap();
        e.create_volume("small", 4096).unwrap();
        e.close().unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("volumes/big"))
        .unwrap();
    f.set_len(2 << 40).unwrap();
    drop(f);

    let e = engine(&root);
    let big = e.volume("big").unwrap();
    let small = e.volume("small").unwrap();
    assert_eq!(big.size(), 2 << 40);
    // Reads work, so the data can be rescued; writes and snapshots are refused, clearly.
    let mut buf = [0u8; 9];
    e.read(&big, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"rescue me");
    let err = e.write(&big, 0, b"x").unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(errno(err), libc::EFBIG);
    let err = e.take("s").unwrap_err();
    assert!(err.to_string().contains("\"big\" is not served"), "{err}");
    assert_eq!(errno(err), libc::EFBIG);
    // The other volume is untouched.
    e.write(&small, 0, b"fine").unwrap();

    // Truncating it to a size that is served serves it again.
    e.resize(&big, 1 << 20).unwrap();
    assert_eq!(file_len(&root, "big"), 1 << 20);
    e.write(&big, 4, b"!").unwrap();
    let s = e.take("s").unwrap();
    e.write(&big, 0, b"changed").unwrap();
    assert_eq!(e.read_snapshot(&s, "big", 0, &mut buf).unwrap(), 9);
    assert_eq!(&buf, b"resc!e me");
    // Its tracking restarted: everything counts as changed.
    match e
        .changed_snarfs(&s, "big", e.store().first_epoch())
        .unwrap()
    {
        Changed::Snarfs(set) => assert_eq!(set.count(), 256),
        Changed::Lost { reason } => panic!("{reason}"),
    }
    e.close().unwrap();
}

/// A store with volume `v` of 8 snarfs, each written, a checkpoint, then snarf 3
/// rewritten, closed cleanly. Returns the checkpoint and the stamps file.
fn store_with_saved_stamps(root: &Path) -> (u64, PathBuf) {
    let e = engine(root);
    let snarf = e.store().snarf_size();
    let v = e.create_volume("v", 8 * snarf).unwrap();
    e.write(&v, 0, &vec![1u8; 8 * snarf as usize]).unwrap();
    let checkpoint = e.take("base").unwrap().epoch();
    e.write(&v, 3 * snarf, &vec![2u8; snarf as usize]).unwrap();
    let stamps = root.join("state/stamps").join(format!("{:016x}", v.id()));
    e.close().unwrap();
    assert!(std::fs::metadata(&stamps).unwrap().len() > 0);
    (checkpoint, stamps)
}

/// Overwrites the stamps file; written after the volume file, so only the damage (not a
/// volume changed behind snarf's back) is what the next open sees.
fn damage(stamps: &Path, bytes: &[u8]) {
    std::fs::write(stamps, bytes).unwrap();
}

#[test]
fn stamps_newer_than_the_store_are_never_trusted_and_copy_on_write_stays_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let (checkpoint, stamps) = store_with_saved_stamps(&root);
    damage(&stamps, &[0xFF; 64]);

    let e = engine(&root);
    let v = e.volume("v").unwrap();
    let snarf = e.store().snarf_size() as usize;
    let s = e.take("s").unwrap();
    e.write(&v, 0, &vec![9u8; 8 * snarf]).unwrap();
    let mut buf = vec![0u8; 8 * snarf];
    assert_eq!(e.read_snapshot(&s, "v", 0, &mut buf).unwrap(), 8 * snarf);
    assert!(buf[..3 * snarf].iter().all(|&b| b == 1));
    assert!(buf[3 * snarf..4 * snarf].iter().all(|&b| b == 2));
    assert!(buf[4 * snarf..].iter().all(|&b| b == 1));
    match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
        Changed::Lost { reason } => assert!(reason.contains("stamps"), "{reason}"),
        Changed::Snarfs(set) => panic!("impossible stamps trusted: {set:?}"),
    }
}

#[test]
fn a_stamps_file_of_the_wrong_length_loses_tracking_instead_of_hiding_changes() {
    for len in [0usize, 8, 56, 72, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let root = new_store(dir.path(), 64 << 10);
        let (checkpoint, stamps) = store_with_saved_stamps(&root);
        let mut bytes = std::fs::read(&stamps).unwrap();
        bytes.resize(len, 0);
        damage(&stamps, &bytes);

        let e = engine(&root);
        let s = e.take("s").unwrap();
        match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
            Changed::Lost { reason } => {
                assert!(reason.contains("stamps"), "{len}: {reason}")
            }
            Changed::Snarfs(set) => panic!("{len} bytes of stamps trusted: {set:?}"),
        }
    }
}

fn edit_meta(root: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = root.join("state/store.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut meta);
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[test]
fn a_catalogue_with_impossible_values_is_repaired_or_refused_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let (checkpoint, _) = store_with_saved_stamps(&root);

    // A session counter whose epochs would not fit: refused, naming the file.
    edit_meta(&root, |m| m["session"] = serde_json::json!(1u64 << 40));
    let msg = Store::open(&root, "test").unwrap_err().to_string();
    assert!(
        msg.contains("store.json") && msg.contains("session counter"),
        "{msg}"
    );

    // A catalogue far larger than any store writes: refused without reading it whole.
    let meta_path = root.join("state/store.json");
    let saved = std::fs::read(&meta_path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&meta_path)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let msg = Store::open(&root, "test").unwrap_err().to_string();
    assert!(msg.contains("more than any store writes"), "{msg}");
    std::fs::write(&meta_path, saved).unwrap();

    // A store id that would become part of a path: refused.
    edit_meta(&root, |m| {
        m["session"] = serde_json::json!(3);
        m["store_id"] = serde_json::json!("../../etc");
    });
    let msg = Store::open(&root, "test").unwrap_err().to_string();
    assert!(msg.contains("store id"), "{msg}");

    // Epochs no earlier session reached, a logical size past the file, a volume listed
    // twice: repaired on open.
    edit_meta(&root, |m| {
        m["store_id"] = serde_json::json!("0123456789abcdef0123456789abcdef");
        m["checkpoints"] = serde_json::json!({ "future": u64::MAX });
        let rec = m["volumes"][0].clone();
        let id = rec["id"].as_u64().unwrap();
        m["volumes"][0]["tracked_since"] = serde_json::json!(u64::MAX);
        m["volumes"].as_array_mut().unwrap().push(rec);
        m["logical_sizes"] = serde_json::json!({ id.to_string(): 1u64 << 40 });
    });
    let e = engine(&root);
    let v = e.volume("v").unwrap();
    assert_eq!(e.store().volume_names(), ["v"]);
    assert_eq!(v.size(), 8 * e.store().snarf_size());
    assert_eq!(file_len(&root, "v"), 8 * e.store().snarf_size());
    assert_eq!(e.store().checkpoint("future"), None);
    assert_eq!(v.tracked_since(), e.store().first_epoch());
    let s = e.take("s").unwrap();
    assert!(matches!(
        e.changed_snarfs(&s, "v", checkpoint).unwrap(),
        Changed::Lost { .. }
    ));
    // Tracking works again from now on.
    let since = s.epoch();
    e.write(&v, 0, b"x").unwrap();
    let s2 = e.take("s2").unwrap();
    assert!(
        matches!(e.changed_snarfs(&s2, "v", since).unwrap(), Changed::Snarfs(set) if set.iter().eq([0]))
    );
    e.close().unwrap();
}

#[test]
fn a_missing_catalogue_starts_a_new_one_with_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    store_with_saved_stamps(&root);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("state/store.json")).unwrap()).unwrap();
    let old_id = meta["store_id"].as_str().unwrap().to_string();
    std::fs::remove_file(root.join("state/store.json")).unwrap();
    // A new identity: no backup of the old one is taken as a base, so nothing is skipped.
    let e = engine(&root);
    assert_ne!(e.store().store_id(), old_id);
    assert_eq!(e.store().volume_names(), ["v"]);
    let v = e.volume("v").unwrap();
    assert_eq!(v.tracked_since(), e.store().first_epoch());
    assert_eq!(v.size(), 8 * e.store().snarf_size());
}

#[test]
fn a_spill_read_error_fails_the_snapshot_reader_with_eio_never_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let store = Store::open(&root, "test").unwrap();
    let mut opts = EngineOptions::from_store(&store);
    opts.budgets.memory = 0;
    let e = Engine::new(store, opts).unwrap();
    let snarf = e.store().snarf_size() as usize;
    let v = e.create_volume("v", 4 * snarf as u64).unwrap();
    e.write(&v, 0, &vec![1u8; 4 * snarf]).unwrap();
    let s = e.take("s").unwrap();
    e.write(&v, 0, &vec![2u8; snarf]).unwrap();
    assert_eq!(e.stats().cache.disk_used, snarf as u64);
    // The pre-image on disk is lost under the engine (a failing disk).
    let spill = root.join("cow/preimages");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&spill)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut buf = vec![0u8; snarf];
    assert_eq!(
        errno(e.read_snapshot(&s, "v", 0, &mut buf).unwrap_err()),
        libc::EIO
    );
    // Writers go on: to that snarf, and to others that spill again.
    e.write(&v, 0, &vec![3u8; snarf]).unwrap();
    e.write(&v, snarf as u64, &vec![3u8; 2 * snarf]).unwrap();
    assert_eq!(
        e.read_snapshot(&s, "v", snarf as u64, &mut buf).unwrap(),
        snarf
    );
    assert!(buf.iter().all(|&b| b == 1));
}

#[test]
fn stamps_of_a_volume_trimmed_at_open_keep_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path(), 64 << 10);
    let (checkpoint, _) = store_with_saved_stamps(&root);
    // A logical size left recorded at a clean close (giving the space back had failed).
    edit_meta(&root, |m| {
        let id = m["volumes"][0]["id"].as_u64().unwrap();
        m["logical_sizes"] = serde_json::json!({ id.to_string(): 6 * (64 << 10) });
    });
    let e = engine(&root);
    let v = e.volume("v").unwrap();
    assert_eq!(v.size(), 6 * (64 << 10));
    let s = e.take("s").unwrap();
    match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
        Changed::Snarfs(set) => assert_eq!(set.iter().collect::<Vec<_>>(), vec![3]),
        Changed::Lost { reason } => panic!("{reason}"),
    }
}
