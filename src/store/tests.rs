//! Store tests: creating and opening a store, and its lock.

use super::*;

fn new_store(dir: &Path) -> PathBuf {
    let root = dir.join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    root
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), b"x").unwrap();
    let e = Store::init(dir.path(), &InitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
}

#[test]
fn second_open_is_refused_with_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_store(dir.path());
    let first = Store::open(&root, "mount at /mnt/x").unwrap();
    let e = Store::open(&root, "other").unwrap_err().to_string();
    assert!(
        e.contains("already in use") && e.contains("mount at /mnt/x"),
        "{e}"
    );
    first.close().unwrap();
    drop(first);
    Store::open(&root, "other").unwrap().close().unwrap();
}
