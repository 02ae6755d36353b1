//! Lifecycle tests of the engine over a real store: the catalogue across reopen,
//! changed-snarf tracking after clean and unclean stops, shrink and delete under a
//! snapshot, and the per-snarf memory bound.

use std::path::{Path, PathBuf};

use super::*;
use crate::store::{Error as StoreError, InitOptions, Store};

fn new_store(dir: &Path) -> PathBuf {
    let root = dir.join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    root
}

fn engine(root: &Path) -> Engine {
    let store = Store::open(root, "test").unwrap();
    let opts = EngineOptions::from_store(&store);
    Engine::new(store, opts).unwrap()
}

#[test]
fn volumes_survive_reopen_with_ids_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let (id_a, id_c);
    {
        let e = engine(&root);
        let a = e.create_volume("a", 100_000).unwrap();
        e.write(&a, 5, b"hello").unwrap();
        id_a = a.id();
        e.create_volume("b", 10).unwrap();
        id_c = e.create_volume("c", 0).unwrap().id();
        e.rename_volume("c", "d").unwrap();
        e.delete_volume("b").unwrap();
        assert!(matches!(
            e.create_volume("a", 1),
            Err(Error::Store(StoreError::VolumeExists(_)))
        ));
        e.close().unwrap();
    }
    let e = engine(&root);
    assert_eq!(e.store().volume_names(), vec!["a", "d"]);
    let a = e.volume("a").unwrap();
    assert_eq!(a.id(), id_a);
    assert_eq!(e.volume("d").unwrap().id(), id_c);
    assert_eq!(a.size(), 100_000);
    let mut buf = [0u8; 5];
    e.read(&a, 5, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert!(std::fs::read_dir(root.join("retired"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn bad_names_say_which_rule() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let err = e.create_volume("a/b", 1).unwrap_err().to_string();
    assert!(err.contains("'/'"), "{err}");
    let err = e.take("..").unwrap_err().to_string();
    assert!(
        err.contains("snapshot name") && err.contains("reserved"),
        "{err}"
    );
}

#[test]
fn tracking_survives_a_clean_close_and_an_unclean_one_through_the_write_intent_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let snarf = 64 * 1024;
    let checkpoint;
    {
        let e = engine(&root);
        let v = e.create_volume("v", 16 * snarf).unwrap();
        e.write(&v, 0, &vec![1u8; 16 * snarf as usize]).unwrap();
        let s = e.take("base").unwrap();
        checkpoint = s.epoch();
        e.store().set_checkpoint("repo-x", checkpoint).unwrap();
        e.write(&v, 3 * snarf + 10, b"x").unwrap();
        e.close().unwrap();
    }
    {
        // Clean close: tracking is trusted in the next session.
        let e = engine(&root);
        assert_eq!(e.store().checkpoint("repo-x"), Some(checkpoint));
        let v = e.volume("v").unwrap();
        e.write(&v, 9 * snarf, b"y").unwrap();
        let s = e.take("now").unwrap();
        match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
            Changed::Snarfs(set) => assert_eq!(set.iter().collect::<Vec<_>>(), vec![3, 9]),
            Changed::Lost { reason } => panic!("lost after a clean close: {reason}"),
        }
        // Dropped without close: an unclean stop.
    }
    let e = engine(&root);
    assert!(e.store().recovered_unclean());
    assert_eq!(e.recovered().dirty_regions, 1);
    let s = e.take("after-crash").unwrap();
    // The one region (16 snarfs of a 1024-snarf region) was marked: every snarf of it
    // counts as changed, a superset of what was written.
    match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
        Changed::Snarfs(set) => {
            assert_eq!(set.iter().collect::<Vec<_>>(), (0..16).collect::<Vec<_>>())
        }
        Changed::Lost { reason } => panic!("tracking lost after an unclean stop: {reason}"),
    }
    // A checkpoint taken in this session is answered by the stamps alone.
    let since = s.epoch();
    let v = e.volume("v").unwrap();
    e.write(&v, 0, b"z").unwrap();
    let s2 = e.take("later").unwrap();
    assert!(
        matches!(e.changed_snarfs(&s2, "v", since).unwrap(), Changed::Snarfs(set) if set.iter().eq([0]))
    );
}

/// The store's bitmap file of the only volume.
fn intent_file(root: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(root.join("state/intent"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

#[test]
fn tracking_is_lost_after_an_unclean_stop_when_the_bitmap_cannot_be_trusted() {
    type Spoil = fn(&std::path::Path, &std::path::Path);
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "missing",
            |b, _| std::fs::remove_file(b).unwrap(),
            "is missing",
        ),
        (
            "truncated",
            |b, _| {
                let f = std::fs::OpenOptions::new().write(true).open(b).unwrap();
                f.set_len(4096).unwrap();
            },
            "truncated",
        ),
        (
            "corrupt",
            |b, _| {
                let mut d = std::fs::read(b).unwrap();
                d[4096 + 64] ^= 0x10;
                std::fs::write(b, d).unwrap();
            },
            "damaged page",
        ),
        (
            "volume grown behind snarf's back",
            |_, v| {
                let f = std::fs::OpenOptions::new().write(true).open(v).unwrap();
                f.set_len(20 * 64 * 1024).unwrap();
            },
            "changed while the store was not open",
        ),
    ];
    for (what, spoil, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = new_store(dir.path());
        let snarf = 64 * 1024;
        let checkpoint;
        {
            let e = engine(&root);
            let v = e.create_volume("v", 16 * snarf).unwrap();
            e.write(&v, 0, &vec![1u8; 16 * snarf as usize]).unwrap();
            checkpoint = e.take("base").unwrap().epoch();
            e.write(&v, 3 * snarf, b"x").unwrap();
            // Dropped without close: an unclean stop.
        }
        let bitmap = intent_file(&root);
        spoil(&bitmap, &root.join("volumes/v"));
        let e = engine(&root);
        assert_eq!(e.recovered().dirty_regions, 0, "{what}");
        let s = e.take("after").unwrap();
        match e.changed_snarfs(&s, "v", checkpoint).unwrap() {
            Changed::Lost { reason } => assert!(
                reason.contains(want)
                    && (what.starts_with("volume")
                        || reason.contains(&bitmap.display().to_string())),
                "{what}: {reason}"
            ),
            Changed::Snarfs(set) => panic!("{what}: a bitmap that cannot be trusted was: {set:?}"),
        }
    }
}

#[test]
fn data_kept_past_a_shrink_is_trimmed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    {
        let e = engine(&root);
        let v = e.create_volume("v", 300_000).unwrap();
        e.write(&v, 0, &vec![9u8; 300_000]).unwrap();
        // A volatile snapshot ends with the process.
        e.take_with("s", Durability::Volatile).unwrap();
        e.resize(&v, 1000).unwrap();
        // The backing file keeps the snapshot's data...
        assert_eq!(
            std::fs::metadata(root.join("volumes/v")).unwrap().len(),
            300_000
        );
        // ...and the process dies here.
    }
    let e = engine(&root);
    assert_eq!(e.volume("v").unwrap().size(), 1000);
    assert_eq!(
        std::fs::metadata(root.join("volumes/v")).unwrap().len(),
        1000
    );
}

#[test]
fn a_shrunk_volume_is_trimmed_when_its_snapshot_goes() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let v = e.create_volume("v", 300_000).unwrap();
    e.write(&v, 0, &vec![9u8; 300_000]).unwrap();
    let s = e.take("s").unwrap();
    e.resize(&v, 1000).unwrap();
    e.resize(&v, 200_000).unwrap();
    let mut buf = vec![1u8; 300_000];
    assert_eq!(e.read(&v, 0, &mut buf).unwrap(), 200_000);
    assert!(buf[..1000].iter().all(|&b| b == 9) && buf[1000..200_000].iter().all(|&b| b == 0));
    assert_eq!(e.read_snapshot(&s, "v", 0, &mut buf).unwrap(), 300_000);
    assert!(buf.iter().all(|&b| b == 9));
    e.resize(&v, 1000).unwrap();
    e.release("s").unwrap();
    assert_eq!(
        std::fs::metadata(root.join("volumes/v")).unwrap().len(),
        1000
    );
    e.close().unwrap();
}

#[test]
fn deleted_volume_stays_readable_through_its_snapshot_then_goes() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let v = e.create_volume("v", 0).unwrap();
    e.write(&v, 0, b"keep me").unwrap();
    drop(v);
    let s = e.take("s").unwrap();
    e.delete_volume("v").unwrap();
    e.create_volume("v", 3).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(e.read_snapshot(&s, "v", 0, &mut buf).unwrap(), 7);
    assert_eq!(&buf[..7], b"keep me");
    assert_eq!(std::fs::read_dir(root.join("retired")).unwrap().count(), 1);
    drop(s);
    e.release("s").unwrap();
    assert_eq!(std::fs::read_dir(root.join("retired")).unwrap().count(), 0);
}

#[test]
fn bookkeeping_is_at_most_16_bytes_per_snarf() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let e = engine(&root);
    let tib = 1u64 << 40;
    let v = e.create_volume("big", tib).unwrap();
    let snarfs = tib / e.store().snarf_size();
    let bytes = v.metadata_bytes() as u64;
    assert!(
        bytes <= 16 * snarfs,
        "{bytes} bytes of bookkeeping for {snarfs} snarfs"
    );
    e.write(&v, tib - 10, b"end").unwrap();
    let mut buf = [0u8; 3];
    e.read(&v, tib - 10, &mut buf).unwrap();
    assert_eq!(&buf, b"end");
}

#[test]
fn a_volume_file_changed_while_closed_loses_its_tracking() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let snarf = 64 * 1024;
    let checkpoint;
    {
        let e = engine(&root);
        for name in ["touched", "kept"] {
            let v = e.create_volume(name, 8 * snarf).unwrap();
            e.write(&v, 0, &vec![1u8; 8 * snarf as usize]).unwrap();
        }
        checkpoint = e.take("base").unwrap().epoch();
        e.close().unwrap();
    }
    // Something other than snarf writes the backing file while the store is closed.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("volumes/touched"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"behind snarf's back", 5 * snarf).unwrap();
    drop(f);
    let e = engine(&root);
    let s = e.take("now").unwrap();
    match e.changed_snarfs(&s, "touched", checkpoint).unwrap() {
        Changed::Lost { reason } => assert!(reason.contains("outside snarf"), "{reason}"),
        Changed::Snarfs(set) => panic!("stale tracking trusted: {set:?}"),
    }
    match e.changed_snarfs(&s, "kept", checkpoint).unwrap() {
        Changed::Snarfs(set) => assert_eq!(set.count(), 0),
        Changed::Lost { reason } => panic!("untouched volume lost tracking: {reason}"),
    }
}

#[test]
fn data_kept_past_a_shrink_stays_for_a_persistent_snapshot_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    {
        let e = engine(&root);
        let v = e.create_volume("v", 300_000).unwrap();
        e.write(&v, 0, &vec![9u8; 300_000]).unwrap();
        e.take("s").unwrap();
        e.resize(&v, 1000).unwrap();
        // ...and the process dies here.
    }
    let e = engine(&root);
    let v = e.volume("v").unwrap();
    assert_eq!(
        v.size(),
        1000,
        "the live volume never shows the old bytes again"
    );
    let mut buf = vec![0u8; 300_000];
    let s = e.snapshot("s").unwrap();
    assert_eq!(e.read_snapshot(&s, "v", 0, &mut buf).unwrap(), 300_000);
    assert!(
        buf.iter().all(|&b| b == 9),
        "the snapshot still reads what it froze"
    );
    let mut live = vec![1u8; 4096];
    assert_eq!(e.read(&v, 0, &mut live).unwrap(), 1000);
    // Released, the space goes back.
    e.release("s").unwrap();
    assert_eq!(
        std::fs::metadata(root.join("volumes/v")).unwrap().len(),
        1000
    );
}
