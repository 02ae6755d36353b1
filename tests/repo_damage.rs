//! A damaged file never wedges the whole repository: a garbage manifest is reported by
//! backup and gone around by gc (whose packs it keeps, so a copy of the manifest brings the
//! backup back whole); a damaged index or `repo.json` is rebuilt by `snarf repair index`,
//! which every message about them names.

mod common;

use std::path::Path;

use common::*;
use snarf::repo::{Repo, RepoInitOptions};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn init(path: &Path) -> Repo {
    Repo::init(
        path,
        &RepoInitOptions {
            compression: 3,
            pack_target: 96 << 10,
        },
    )
    .expect("init")
}

/// Restores backup `id` with the CLI and compares it with what its seed generated.
fn restores_exactly(repo: &Path, id: &str, seed: u64, own: usize, into: &Path) {
    let (code, out, err) = snarf(&["restore", s(repo), id, s(into)]);
    assert_eq!(code, 0, "restore of {id}:\n{out}\n{err}");
    for (name, data) in volumes_for(seed, own) {
        assert!(
            std::fs::read(into.join(&name)).expect("restored") == data,
            "{id}/{name} differs"
        );
    }
}

#[test]
fn a_garbage_manifest_is_reported_and_gone_around_and_its_packs_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let repo = init(&r);
    let ids: Vec<_> = (1..=3)
        .map(|seed| write_backup(&repo, seed, 400_000, None))
        .collect();
    drop(repo);
    let manifest = r
        .join("backups")
        .join(ids[1].as_str())
        .join("manifest.json");
    let saved = std::fs::read(&manifest).expect("manifest");
    std::fs::write(&manifest, b"\x00\xffnot json at all").expect("garbage");

    let (code, out, err) = snarf(&["prune", s(&r), "--keep-last", "1"]);
    assert_eq!(code, 0, "prune failed:\n{out}\n{err}");
    assert!(
        out.contains(ids[1].as_str()) && out.contains("damaged") && out.contains("kept"),
        "the prune does not name the damaged backup:\n{out}"
    );
    assert!(out.contains(&format!("remove  {}", ids[0])), "{out}");

    // Nothing is wedged: listing, restoring, checking, finishing, a new backup.
    let (code, out, err) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(ids[2].as_str()), "{out}");
    restores_exactly(&r, ids[2].as_str(), 3, 400_000, &dir.path().join("third"));
    let (code, out, _) = snarf(&["check", s(&r)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("DAMAGED  backup {}", ids[1])),
        "check does not name the damaged backup:\n{out}"
    );
    let (code, out, _) = snarf(&["finishing", s(&r)]);
    assert_eq!(code, 0);
    assert!(out.contains("idle"), "{out}");
    let repo = Repo::open(&r).expect("open");
    write_backup(&repo, 4, 200_000, None);

    // The damaged backup's packs were kept: its manifest from a copy brings it back whole.
    std::fs::write(&manifest, &saved).expect("put back");
    restores_exactly(&r, ids[1].as_str(), 2, 400_000, &dir.path().join("second"));
    let (code, out, _) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_backup_with_an_unreadable_table_and_no_manifest_stops_gc_from_deleting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let repo = init(&r);
    let ids: Vec<_> = (1..=3)
        .map(|seed| write_backup(&repo, seed, 400_000, None))
        .collect();
    let folder = r.join("backups").join(ids[1].as_str());
    let manifest = folder.join("manifest.json");
    let table = folder.join("v0001.tbl");
    let (saved_m, saved_t) = (
        std::fs::read(&manifest).expect("m"),
        std::fs::read(&table).expect("t"),
    );
    std::fs::remove_file(&manifest).expect("rm");
    std::fs::write(&table, b"garbage").expect("garbage");
    let packs_before = std::fs::read_dir(r.join("packs")).expect("packs").count();

    let (code, out, err) = snarf(&["prune", s(&r), "--keep-last", "1"]);
    assert_eq!(code, 0, "prune failed:\n{out}\n{err}");
    assert!(
        out.contains(ids[1].as_str()) && out.contains("gc deletes no pack"),
        "{out}"
    );
    assert!(out.contains("0 pack(s)"), "{out}");
    assert_eq!(
        std::fs::read_dir(r.join("packs")).expect("packs").count(),
        packs_before
    );
    // Repaired from a copy, the backup is whole, and the next prune frees what it may.
    std::fs::write(&manifest, &saved_m).expect("m");
    std::fs::write(&table, &saved_t).expect("t");
    restores_exactly(&r, ids[1].as_str(), 2, 400_000, &dir.path().join("second"));
    let (code, out, _) = snarf(&["prune", s(&r), "--keep-last", "2"]);
    assert_eq!(code, 0, "{out}");
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert!(rep.unreferenced_packs.is_empty());
    assert_eq!(verify_all_backups(&repo), 2);
}

#[test]
fn a_damaged_index_is_rebuilt_by_repair_index_which_its_messages_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let repo = init(&r);
    let first = write_backup(&repo, 1, 400_000, None);
    write_backup(&repo, 2, 400_000, None);
    let run = std::fs::read_dir(r.join("index"))
        .expect("index")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .expect("a run");
    std::fs::write(&run, b"SNARFIX1 and then garbage").expect("garbage");

    // A new backup is refused, naming the command that fixes it; reading still works.
    let err = repo
        .begin_backup(snarf::repo::NewBackup::new("s", serde_json::Value::Null))
        .err()
        .expect("a backup over a damaged index")
        .to_string();
    assert!(
        err.contains(&format!("snarf repair index {}", r.display())),
        "{err}"
    );
    let (code, out, _) = snarf(&["check", s(&r)]);
    assert_eq!(code, 1);
    assert!(out.contains("snarf repair index"), "{out}");
    restores_exactly(&r, first.as_str(), 1, 400_000, &dir.path().join("a"));

    let (code, out, err) = snarf(&["repair", "index", s(&r)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rebuilt the index"), "{out}");
    let (code, out, _) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 0, "{out}");
    // The rebuilt index deduplicates: the same data again stores nothing new.
    let again = write_backup(&repo, 1, 400_000, None);
    let m = repo.backup(again.as_str()).expect("manifest");
    assert_eq!(m.stats.new_chunks, 0, "{:?}", m.stats);
    assert_eq!(verify_all_backups(&repo), 3);

    // A lost index folder is the same damage, with the same way back.
    std::fs::remove_dir_all(r.join("index")).expect("rm index");
    let err = repo
        .begin_backup(snarf::repo::NewBackup::new("s", serde_json::Value::Null))
        .err()
        .expect("a backup without an index folder")
        .to_string();
    assert!(err.contains("snarf repair index"), "{err}");
    let (code, out, _) = snarf(&["check", s(&r)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("index folder is missing") && out.contains("snarf repair index"),
        "{out}"
    );
    let (code, out, err) = snarf(&["repair", "index", s(&r)]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_damaged_repo_json_is_rebuilt_by_repair_index_which_its_messages_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let repo = init(&r);
    let ids: Vec<_> = (1..=2)
        .map(|seed| write_backup(&repo, seed, 300_000, None))
        .collect();
    let created = repo.backup(ids[0].as_str()).expect("m").created;
    drop(repo);
    for garbage in [&b"{\"format\": 1, \"compr"[..], b""] {
        std::fs::write(r.join("repo.json"), garbage).expect("garbage");
        for cmd in [&["backups"][..], &["check"], &["prune", "--keep-last", "1"]] {
            let mut args = cmd.to_vec();
            args.insert(1, s(&r));
            let (code, _, err) = snarf(&args);
            assert_eq!(code, 1, "{cmd:?}");
            assert!(
                err.contains("repo.json is damaged")
                    && err.contains(&format!("snarf repair index {}", r.display())),
                "{cmd:?}: {err}"
            );
        }
    }
    std::fs::remove_file(r.join("repo.json")).expect("rm");
    let (code, _, err) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 1);
    assert!(err.contains("snarf repair index"), "{err}");

    let (code, out, err) = snarf(&["repair", "index", s(&r)]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("repo.json could not be used") && out.contains("defaults"),
        "the repair does not say what it guessed:\n{out}"
    );
    let repo = Repo::open(&r).expect("open after repair");
    assert_eq!(repo.config().created, created);
    assert_eq!(verify_all_backups(&repo), 2);
    write_backup(&repo, 3, 300_000, None);
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(rep.is_ok(), "{:?}", rep.problems);

    // A format file of another version is not damage: repair leaves it alone.
    std::fs::write(r.join("repo.json"), b"{\"format\": 9}").expect("write");
    let (code, _, err) = snarf(&["repair", "index", s(&r)]);
    assert_eq!(code, 1);
    assert!(err.contains("format version 9"), "{err}");
    assert_eq!(
        std::fs::read(r.join("repo.json")).expect("read"),
        b"{\"format\": 9}"
    );
    // And a folder that is no repository gets no format file.
    let (code, _, err) = snarf(&["repair", "index", s(dir.path())]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a snarf repository"), "{err}");
    assert!(!dir.path().join("repo.json").exists());
}
