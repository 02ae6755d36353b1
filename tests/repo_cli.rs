//! The repository commands of the `snarf` binary: output shape, exit codes and messages.

mod common;

use common::*;
use snarf::repo::{Repo, RepoInitOptions};

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn repo_init_creates_once_and_validates_its_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let (code, out, err) = snarf(&[
        "repo",
        "init",
        s(&r),
        "--compression",
        "5",
        "--pack-size",
        "1M",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("created repository") && out.contains("zstd level 5"),
        "{out}"
    );
    // Format 2 unless told otherwise.
    assert!(out.contains("format 2"), "{out}");
    match snarf::repo::Handle::open_path(&r).expect("open") {
        snarf::repo::Handle::V2(repo) => assert_eq!(repo.config().pack_target, 1 << 20),
        snarf::repo::Handle::V1(_) => panic!("`snarf repo init` made a format 1 repository"),
    }
    let v1 = dir.path().join("v1");
    let (code, out, err) = snarf(&["repo", "init", s(&v1), "--format", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("format 1"), "{out}");
    assert!(
        Repo::open(&v1).is_ok(),
        "--format 1 made no format 1 repository"
    );
    let (code, _, err) = snarf(&["repo", "init", s(&r)]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, err) = snarf(&[
        "repo",
        "init",
        s(&dir.path().join("x")),
        "--compression",
        "40",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("compression level 40"), "{err}");
    let (code, _, err) = snarf(&["backups", s(&dir.path().join("nothing"))]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a snarf repository"), "{err}");
}

#[test]
fn backups_restore_check_prune_and_finishing_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let repo = Repo::init(
        &r,
        &RepoInitOptions {
            compression: 3,
            pack_target: 128 << 10,
        },
    )
    .expect("init");
    let (code, out, _) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    let id1 = write_backup(&repo, 1, 400_000, None);
    let id2 = write_backup(&repo, 2, 400_000, None);

    let (code, out, _) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SNAPSHOT") && lines[0].contains("STORED")
    );
    assert!(lines[1].starts_with(id1.as_str()) && lines[2].starts_with(id2.as_str()));
    let (code, json, _) = snarf(&["backups", s(&r), "--json"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed[1]["id"], id2.as_str());
    assert_eq!(parsed[1]["source"]["seed"], 2);
    // Each volume names its table file in the backup's folder.
    let table = parsed[1]["volumes"][0]["table"]
        .as_str()
        .unwrap_or_else(|| panic!("no table in {json}"));
    assert!(
        r.join("backups").join(id2.as_str()).join(table).is_file(),
        "{table}"
    );
    assert!(parsed[1]["volumes"][0].get("root").is_none(), "{json}");
    let col = lines[0].find("SNAPSHOT").expect("column");
    assert_eq!(
        &lines[1][col..col + 4],
        "snap",
        "columns are aligned:\n{out}"
    );

    let dest = dir.path().join("out");
    let (code, out, err) = snarf(&["restore", s(&r), id1.as_str(), s(&dest)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 2 volume(s)"), "{out}");
    for (name, data) in volumes_for(1, 400_000) {
        assert!(
            std::fs::read(dest.join(&name)).expect("restored") == data,
            "{name}"
        );
    }
    let (code, _, err) = snarf(&["restore", s(&r), id1.as_str(), s(&dest)]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let one = dir.path().join("one");
    let (code, _, err) = snarf(&[
        "restore",
        s(&r),
        id2.as_str(),
        "--volume",
        "own.img",
        s(&one),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(&one).expect("dir").count(), 1);
    let (code, _, err) = snarf(&["restore", s(&r), "20990101-000000-0000", s(&one)]);
    assert_eq!(code, 1);
    assert!(err.contains("has no backup 20990101-000000-0000"), "{err}");

    let (code, out, _) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no problems found") && out.contains("read and verified"),
        "{out}"
    );

    let (code, out, _) = snarf(&["finishing", s(&r)]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY") && lines[0].contains("RESUMED"),
        "{out}"
    );
    assert!(lines[1].contains("idle"), "{out}");

    let (code, out, _) = snarf(&["prune", s(&r), "--keep-last", "1", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("would remove") && out.contains(id1.as_str()) && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(repo.list_backups().expect("list").len(), 2);
    let (code, out, _) = snarf(&["prune", s(&r), "--keep-last", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 backup(s) kept, 1 removed"), "{out}");
    assert_eq!(repo.list_backups().expect("list").len(), 1);
    let (code, _, err) = snarf(&["prune", s(&r), "--keep-last", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("keeps no backup"), "{err}");

    // Damage one stored chunk of the remaining backup: check names the place and fails.
    let reader = repo.volume_reader(id2.as_str(), "own.img").expect("reader");
    let snarf_no = (0..reader.snarf_count())
        .find(|&i| !reader.is_zero(i).expect("record"))
        .expect("a data snarf");
    let c = reader.chunk_ref(snarf_no).expect("chunk");
    let pack = r.join("packs").join(format!("{}.pack", c.pack));
    let mut bytes = std::fs::read(&pack).expect("pack");
    bytes[c.offset as usize + 1] ^= 0x40;
    std::fs::write(&pack, &bytes).expect("write");
    let (code, out, err) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 1, "{out}");
    let offset = snarf_no * SNARF as u64;
    assert!(
        out.contains(&format!(
            "DAMAGED  backup {id2}, volume \"own.img\", byte offset {offset}"
        )),
        "{out}"
    );
    assert!(err.contains("problem(s) found"), "{err}");
    let (code, _, _) = snarf(&["check", s(&r)]);
    assert_eq!(code, 0, "a structural check does not read data");
}

#[test]
fn format_2_backups_restore_check_prune_and_finishing_from_the_command_line() {
    use snarf::repo::Handle;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let (code, out, err) = snarf(&["repo", "init", s(&r), "--format", "2", "--pack-size", "1M"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("format 2"), "{out}");
    let Handle::V2(repo) = Handle::open_path(&r).expect("open") else {
        panic!("repo init --format 2 made a format 1 repository");
    };
    // Repository files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.join("config"))
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "config has mode {mode:o}");
    let id1 = write_backup_v2(&repo, 1, 400_000);
    let id2 = write_backup_v2(&repo, 2, 400_000);
    let (code, out, _) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].starts_with(id1.as_str()) && lines[2].starts_with(id2.as_str()));
    let (code, json, _) = snarf(&["backups", s(&r), "--json"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed[1]["id"], id2.as_str());
    assert_eq!(parsed[1]["format"], 2);
    assert_eq!(parsed[1]["source"]["seed"], 2);
    // Each volume names its tree's root (the hex of its 64-byte reference) instead.
    let root = parsed[1]["volumes"][0]["root"]
        .as_str()
        .unwrap_or_else(|| panic!("no root in {json}"));
    assert_eq!(root.len(), 128, "{root}");
    assert!(parsed[1]["volumes"][0].get("table").is_none(), "{json}");

    let dest = dir.path().join("out");
    let (code, out, err) = snarf(&["restore", s(&r), id1.as_str(), s(&dest)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored 2 volume(s)"), "{out}");
    for (name, data) in volumes_for(1, 400_000) {
        assert!(
            std::fs::read(dest.join(&name)).expect("restored") == data,
            "{name}"
        );
    }
    let (code, out, _) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no problems found"), "{out}");
    let (code, out, _) = snarf(&["finishing", s(&r)]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.contains("idle") && l.contains("nothing pending")),
        "{out}"
    );
    let (code, out, err) = snarf(&["repair", "index", s(&r)]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("format 2"), "{err}");

    let (code, out, _) = snarf(&["prune", s(&r), "--keep-last", "1", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("would remove") && out.contains(id1.as_str()),
        "{out}"
    );
    assert_eq!(repo.list_backups().expect("list").len(), 2);
    let (code, out, _) = snarf(&["prune", s(&r), "--keep-last", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 backup(s) kept, 1 removed"), "{out}");
    assert_eq!(repo.list_backups().expect("list").len(), 1);

    // One flipped byte in a frame the kept backup uses (chosen from its tree, not by
    // chance: after the prune some packs hold only chunks no backup references until gc's
    // grace period ends): check --read-data fails and says so.
    let reader = repo.volume_reader(id2.as_str(), "own.img").expect("reader");
    let c = (0..reader.snarf_count())
        .find_map(|n| match reader.entry(n).expect("entry") {
            snarf::repo::v2::tree::Entry::Chunk(c) => Some(c),
            snarf::repo::v2::tree::Entry::Zero => None,
        })
        .expect("a stored snarf");
    let pack = walk_files(&r.join("packs"))
        .into_iter()
        .find(|p| p.file_stem().and_then(|n| n.to_str()) == Some(c.pack.to_string().as_str()))
        .expect("the pack of a kept chunk");
    let mut bytes = std::fs::read(&pack).expect("pack");
    bytes[(c.offset + u64::from(c.stored_len) / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &bytes).expect("write");
    let (code, out, err) = snarf(&["check", s(&r), "--read-data"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(err.contains("problem(s) found"), "{err}");

    // A format 2 repository is not created over anything, and unknown schemes are named.
    let (code, _, err) = snarf(&["repo", "init", s(&r), "--format", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, err) = snarf(&["backups", "ftp://host/r"]);
    assert_eq!(code, 1);
    assert!(err.contains("ftp://"), "{err}");
    let (code, _, err) = snarf(&["repo", "init", s(&dir.path().join("n")), "--format", "3"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn finishing_of_a_format_2_repository_says_what_a_cut_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let (code, _, err) = snarf(&["repo", "init", s(&r), "--pack-size", "1M"]);
    assert_eq!(code, 0, "{err}");
    let snarf::repo::Handle::V2(repo) = snarf::repo::Handle::open_path(&r).expect("open") else {
        panic!("`snarf repo init` made a format 1 repository");
    };
    write_backup_v2(&repo, 1, 400_000);
    let (code, out, _) = snarf(&["finishing", s(&r)]);
    assert_eq!(code, 0);
    assert!(
        out.contains("idle") && out.contains("nothing pending"),
        "{out}"
    );
    // What a cut leaves is said: the packs of a backup killed before its commit, and a
    // gc cut short.
    {
        let mut new = snarf::repo::v2::NewBackup::new("killed", serde_json::json!({}));
        new.lock_wait = Some(std::time::Duration::from_secs(60));
        let w = repo.begin_backup(new).expect("begin");
        let slot = w.add_volume("v", 4 << 20, 64 << 10, None).expect("volume");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(99);
        for i in 0..64 {
            let mut data = vec![0u8; 64 << 10];
            rand::RngCore::fill_bytes(&mut rng, &mut data);
            w.put(slot, i, &data).expect("put");
        }
        // Dropped uncommitted, as by kill -9 after some packs were sealed.
    }
    std::fs::write(r.join("state/gc-pending"), b"").expect("marker");
    let (code, out, _) = snarf(&["finishing", s(&r)]);
    assert_eq!(code, 0);
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("interrupted")
            && row.contains("gc was cut short")
            && row.contains("not indexed yet"),
        "{out}"
    );
    let (code, json, _) = snarf(&["finishing", s(&r), "--json"]);
    assert_eq!(code, 0);
    assert!(json.contains("pack(s) of interrupted backups"), "{json}");
    // The next writer completes both.
    write_backup_v2(&repo, 3, 400_000);
    let (_, out, _) = snarf(&["finishing", s(&r)]);
    assert!(out.contains("nothing pending"), "{out}");
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_repository_command_has_help() {
    for cmd in [
        &["repo", "init"][..],
        &["backups"],
        &["restore"],
        &["check"],
        &["prune"],
        &["finishing"],
        &["repair", "index"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (code, out, _) = snarf(&args);
        assert_eq!(code, 0, "{cmd:?}");
        assert!(out.contains("Usage:"), "{cmd:?}: {out}");
    }
    let (_, out, _) = snarf(&["prune", "--help"]);
    assert!(
        out.contains("--keep-last") && out.contains("--dry-run"),
        "{out}"
    );
}
