//! `snarf backup STORE SNAPSHOT` with no mount running (direct mode): the job opens the
//! store itself, backs it up, and a restore gives the volumes back byte for byte; the next
//! backup is incremental; the errors a person meets are worded clearly.

mod common;

use std::path::Path;

use common::{backup_id, snarf, volume_data};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn direct_backup_restores_equal_and_the_next_one_is_incremental() {
    direct_backup_and_incremental("1");
}

#[test]
fn direct_backup_into_format_2_restores_equal_and_the_next_one_is_incremental() {
    direct_backup_and_incremental("2");
}

fn direct_backup_and_incremental(format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let repo = dir.path().join("repo");
    let (code, out, err) = snarf(&[
        "repo",
        "init",
        s(&repo),
        "--pack-size",
        "1M",
        "--format",
        format,
    ]);
    assert!(out.contains(&format!("format {format}")), "{out}");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = snarf(&["init", s(&store), "--repo", s(&repo)]);
    assert_eq!(code, 0, "{err}");
    // Volume files placed in volumes/ are adopted when the store is opened.
    let a = volume_data(11, 5 << 20);
    let b = volume_data(12, (3 << 20) + 4097);
    std::fs::write(store.join("volumes/a.img"), &a).expect("write a");
    std::fs::write(store.join("volumes/b.img"), &b).expect("write b");

    // --repo defaults to the store's repository.
    let (code, out, err) = snarf(&["backup", s(&store), "first"]);
    assert_eq!(code, 0, "{err}");
    let id = backup_id(&out);
    assert!(
        out.contains("volume a.img") && out.contains("full (first backup"),
        "{out}"
    );
    assert!(
        out.contains("dedup ratio") && out.contains("compression ratio") && out.contains("time "),
        "{out}"
    );
    assert!(
        err.contains("backup first:"),
        "plain progress lines on a non-terminal: {err}"
    );

    let dest = dir.path().join("out");
    let (code, _, err) = snarf(&["restore", s(&repo), &id, s(&dest)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(dest.join("a.img")).expect("a") == a,
        "a.img differs"
    );
    assert!(
        std::fs::read(dest.join("b.img")).expect("b") == b,
        "b.img differs"
    );

    // Closed cleanly, so the next backup reads nothing and reuses everything.
    let (code, out, err) = snarf(&[
        "backup",
        s(&store),
        "second",
        "--repo",
        s(&repo),
        "--volume",
        "b.img",
    ]);
    assert_eq!(code, 0, "{err}");
    let out_second = out.clone();
    assert!(
        out.contains(&format!(
            "incremental from {id}: read 0 of 49 snarfs, reused 49"
        )),
        "{out}"
    );
    assert!(!out.contains("a.img"), "{out}");
    // No process is left registered.
    assert!(!store.join("run/pids").exists(), "registry left behind");
    let (code, out, _) = snarf(&["check", s(&repo), "--read-data"]);
    assert_eq!(code, 0, "{out}");
    // The incremental holds b.img byte for byte.
    let id2 = backup_id(&out_second);
    let dest2 = dir.path().join("out2");
    let (code, _, err) = snarf(&["restore", s(&repo), &id2, s(&dest2)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(dest2.join("b.img")).expect("b") == b,
        "b.img of the incremental differs"
    );
}

#[test]
fn direct_backup_errors_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let repo = dir.path().join("repo");
    assert_eq!(snarf(&["init", s(&store)]).0, 0);
    std::fs::write(store.join("volumes/v"), volume_data(1, 1 << 20)).expect("write");

    let (code, _, err) = snarf(&["backup", s(&store), "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no --repo given") && err.contains("snarf repo init"),
        "{err}"
    );
    let (code, _, err) = snarf(&["backup", s(&store), "x", "--repo", s(&repo)]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a snarf repository"), "{err}");
    assert_eq!(snarf(&["repo", "init", s(&repo)]).0, 0);
    let (code, _, err) = snarf(&[
        "backup",
        s(&dir.path().join("nope")),
        "x",
        "--repo",
        s(&repo),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no such mount point or store"), "{err}");
    let (code, _, err) = snarf(&["backup", s(dir.path()), "x", "--repo", s(&repo)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("neither a snarf mount point nor a store"),
        "{err}"
    );
    let (code, _, err) = snarf(&[
        "backup",
        s(&store),
        "x",
        "--repo",
        s(&repo),
        "--volume",
        "w",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no volume named \"w\""), "{err}");

    // A store held by someone else (a mount, another job) is named.
    {
        let _held = snarf::store::Store::open(&store, "snarf mount at /mnt/test").expect("open");
        let (code, _, err) = snarf(&["backup", s(&store), "x", "--repo", s(&repo)]);
        assert_eq!(code, 1);
        assert!(
            err.contains("in use by") && err.contains("/mnt/test"),
            "{err}"
        );
    }
    // A locked repository names its holder.
    let snarf::repo::Handle::V2(held) = snarf::repo::Handle::open_path(&repo).expect("open repo")
    else {
        panic!("`snarf repo init` made a format 1 repository");
    };
    let _lock = held.lock("snarf prune (test)", None).expect("lock");
    let (code, _, err) = snarf(&["backup", s(&store), "x", "--repo", s(&repo)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("locked by") && err.contains("snarf prune (test)"),
        "{err}"
    );
    assert_eq!(
        snarf(&["backups", s(&repo)]).1.lines().count(),
        1,
        "nothing committed"
    );
}

/// A tmpfs mounted by this test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_repository_disk_is_reported_and_nothing_is_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3M", "tmpfs"])
        .arg(&small)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _guard = Tmpfs(small.clone());
    let store = dir.path().join("store");
    let repo = small.join("repo");
    assert_eq!(snarf(&["init", s(&store)]).0, 0);
    assert_eq!(snarf(&["repo", "init", s(&repo), "--pack-size", "1M"]).0, 0);
    let mut random = vec![0u8; 8 << 20];
    rand::RngCore::fill_bytes(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5),
        &mut random,
    );
    std::fs::write(store.join("volumes/v"), &random).expect("write");
    let (code, _, err) = snarf(&["backup", s(&store), "x", "--repo", s(&repo)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("disk is full") && err.contains("nothing was committed"),
        "{err}"
    );
    // (Listed without settling: recovering the abandoned transfer needs room it lacks.)
    let listed = snarf::repo::Handle::open_quiet(&snarf::repo::Location::local(&repo))
        .expect("open")
        .list_backups()
        .expect("list");
    assert!(listed.is_empty(), "nothing committed: {listed:?}");
    // The store was closed cleanly: a backup elsewhere works and the one after is incremental.
    let big = dir.path().join("big");
    assert_eq!(snarf(&["repo", "init", s(&big)]).0, 0);
    let (code, out, err) = snarf(&["backup", s(&store), "y", "--repo", s(&big)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("full (first backup"), "{out}");
}

/// `--keep-*` on a backup prunes the repository once the backup is committed, with the
/// rules of `snarf prune` (what the packaged timer example does for a store not mounted);
/// a policy that keeps nothing is refused before anything is backed up.
#[test]
fn a_backup_with_keep_options_prunes_after_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let repo = dir.path().join("repo");
    let (code, _, err) = snarf(&["repo", "init", s(&repo), "--format", "2"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = snarf(&["init", s(&store), "--repo", s(&repo)]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(store.join("volumes/a.img"), volume_data(3, 1 << 20)).unwrap();
    let (code, out, err) = snarf(&["backup", s(&store), "one"]);
    assert_eq!(code, 0, "{err}");
    let first = backup_id(&out);

    let (code, _, err) = snarf(&["backup", "--keep-last=0", s(&store), "none"]);
    assert_ne!(code, 0);
    assert!(err.contains("keeps no backup"), "{err}");
    let (_, listed, _) = snarf(&["backups", s(&repo)]);
    assert_eq!(
        listed.lines().count(),
        2,
        "the refused run backed up nothing: {listed}"
    );

    let (code, out, err) = snarf(&["backup", "--keep-last=1", "--", s(&store), "two"]);
    assert_eq!(code, 0, "{err}");
    let second = backup_id(&out);
    assert!(
        out.contains("pruned with keep-last=1: 1 backup(s) kept, 1 removed"),
        "{out}"
    );
    let (_, listed, _) = snarf(&["backups", s(&repo)]);
    assert!(
        listed.contains(&second) && !listed.contains(&first),
        "{listed}"
    );
}
