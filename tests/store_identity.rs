//! A store directory restored from an older copy is not the store its last backup was taken
//! from: it reuses session numbers and epochs, and its stamps know nothing of what the
//! other copy wrote. The next backup finds that out from the session recorded in the base
//! and reads the volume in full, so a restore still equals the volume.

mod common;

use std::path::Path;
use std::process::Command;

use common::{snarf, volume_data};
use snarf::snapshot::{Engine, EngineOptions};
use snarf::store::Store;

const SNARF: usize = 64 << 10;
const SIZE: usize = 32 * SNARF;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Writes `data` at snarf `index` of volume `v` through the engine, closing cleanly.
fn write_snarfs(store: &Path, at: &[usize], byte: u8) {
    let st = Store::open(store, "test writer").expect("open store");
    let opts = EngineOptions::from_store(&st);
    let e = Engine::new(st, opts).expect("engine");
    let v = e.volume("v").expect("volume v");
    for &i in at {
        e.write(&v, (i * SNARF) as u64, &vec![byte; SNARF])
            .expect("write");
    }
    e.close().expect("close");
}

/// `snarf backup STORE NAME` in direct mode; returns (backup id, summary).
fn backup(store: &Path, repo: &Path, name: &str) -> (String, String) {
    let (code, out, err) = snarf(&["backup", s(store), name, "--repo", s(repo)]);
    assert_eq!(code, 0, "{err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_string();
    (id, out)
}

fn restored(repo: &Path, id: &str, dest: &Path) -> Vec<u8> {
    let (code, _, err) = snarf(&["restore", s(repo), id, s(dest)]);
    assert_eq!(code, 0, "{err}");
    std::fs::read(dest.join("v")).expect("restored v")
}

/// Copies a directory tree keeping modification times (as an administrator's `cp -a`).
fn cp_a(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|st| st.success());
    assert!(ok, "cp -a failed");
}

#[test]
fn a_store_restored_from_an_old_copy_gets_a_full_backup_and_restores_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let repo = dir.path().join("repo");
    assert_eq!(snarf(&["repo", "init", s(&repo)]).0, 0);
    assert_eq!(snarf(&["init", s(&store)]).0, 0);
    std::fs::write(store.join("volumes/v"), volume_data(3, SIZE)).expect("write v");
    write_snarfs(&store, &[], 0);

    let (first, _) = backup(&store, &repo, "one");
    let old = dir.path().join("old-copy");
    cp_a(&store, &old);

    // The store goes on: snarfs 2 and 3 change, and are backed up incrementally.
    write_snarfs(&store, &[2, 3], 0xbb);
    let (second, out) = backup(&store, &repo, "two");
    assert!(out.contains(&format!("incremental from {first}")), "{out}");

    // The administrator puts the old copy back, and different snarfs are written.
    std::fs::remove_dir_all(&store).expect("rm store");
    std::fs::rename(&old, &store).expect("restore the old copy");
    write_snarfs(&store, &[10, 11], 0xcc);
    let expected = std::fs::read(store.join("volumes/v")).expect("read v");

    let (third, out) = backup(&store, &repo, "three");
    assert!(
        !out.contains(&format!("incremental from {second}")),
        "the rolled-back store was trusted: {out}"
    );
    assert!(out.contains("did not live through"), "{out}");
    let got = restored(&repo, &third, &dir.path().join("out"));
    assert!(got == expected, "the restore differs from the volume");

    // From then on the store's own backups are bases again.
    write_snarfs(&store, &[20], 0xdd);
    let expected = std::fs::read(store.join("volumes/v")).expect("read v");
    let (fourth, out) = backup(&store, &repo, "four");
    assert!(out.contains(&format!("incremental from {third}")), "{out}");
    let got = restored(&repo, &fourth, &dir.path().join("out4"));
    assert!(got == expected, "the restore differs from the volume");
}
