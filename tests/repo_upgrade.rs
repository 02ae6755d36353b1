//! `snarf repo upgrade`: a format 1 repository becomes format 2 in place, every backup
//! byte-exact under its own id, and the next backup deduplicates against the kept packs.
//! Killed (SIGKILL) at every step it takes, census first, then run again, it completes
//! with the same result; while it is cut short, opens refuse and name the command to run.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use common::{copy_tree, volumes_for, write_backup, write_backup_v2};
use snarf::repo::{Handle, Repo, RepoInitOptions};

fn upgrade(repo: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snarf"));
    c.args(["repo", "upgrade", repo.to_str().expect("utf8")]);
    c.env_remove("SNARF_FAULT_POINT")
        .env_remove("SNARF_FAULT_CENSUS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run snarf repo upgrade")
}

/// A format 1 repository with three backups (sharing a volume) and a pin.
fn template(dir: &Path) -> (Vec<(String, u64)>, usize) {
    let repo = Repo::init(
        dir,
        &RepoInitOptions {
            compression: 3,
            pack_target: 256 << 10,
        },
    )
    .expect("init");
    let mut ids = Vec::new();
    for seed in 1..=3 {
        ids.push((write_backup(&repo, seed, 700_000, None).to_string(), seed));
    }
    repo.pin("snapshot-x-1", &[]).expect("pin");
    (ids, 700_000)
}

/// The upgraded repository is format 2, holds every backup byte-exact, checks clean and
/// takes a new backup that deduplicates against the format 1 packs.
fn verify(repo: &Path, ids: &[(String, u64)], own: usize) {
    let h = Handle::open_path(repo).expect("open upgraded");
    let Handle::V2(v2) = &h else {
        panic!("still format 1 after the upgrade")
    };
    let listed: Vec<String> = h
        .list_backups()
        .expect("list")
        .iter()
        .map(|b| b.id.to_string())
        .collect();
    let want: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(listed, want);
    for (id, seed) in ids {
        let b = h.backup(id).expect("backup");
        assert_eq!(b.source["seed"], *seed);
        for (name, data) in volumes_for(*seed, own) {
            let r = h.volume_reader(id, &name).expect("reader");
            let mut buf = vec![0u8; data.len()];
            let mut at = 0;
            while at < buf.len() {
                let n = r.read_at(at as u64, &mut buf[at..]).expect("read");
                assert!(n > 0, "short read of {name} in {id}");
                at += n;
            }
            assert!(
                buf == data,
                "{name} of backup {id} differs after the upgrade"
            );
        }
    }
    let report = h.check(true, &mut |_| {}).expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(!repo.join("repo.json").exists() && !repo.join("upgrade").exists());
    assert!(repo.join("pins/snapshot-x-1").exists(), "the pin was lost");
    // Seed 1 again: every chunk is in the kept format 1 packs.
    let id = write_backup_v2(v2, 1, own);
    let b = h.backup(id.as_str()).expect("new backup");
    assert_eq!(b.stats.new_chunks, 0, "{:?}", b.stats);
}

#[test]
fn upgrade_converts_every_backup_and_survives_a_kill_at_every_step() {
    let top = tempfile::tempdir().expect("tempdir");
    let tpl = top.path().join("template");
    let (ids, own) = template(&tpl);

    // The census run, which also proves an uninterrupted upgrade.
    let census_file = top.path().join("census");
    let run = top.path().join("census-run");
    copy_tree(&tpl, &run);
    let out = upgrade(
        &run,
        &[("SNARF_FAULT_CENSUS", census_file.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("3 backup(s) converted"), "{said}");
    let census: Vec<String> = std::fs::read_to_string(&census_file)
        .expect("census")
        .lines()
        .map(String::from)
        .collect();
    for kind in [
        "upgrade.marked",
        "upgrade.moved",
        "create.config",
        "create.backups#3",
        "upgrade.cleaned",
        "upgrade.done",
    ] {
        assert!(
            census.iter().any(|p| p.starts_with(kind)),
            "{kind} not in {census:?}"
        );
    }
    // Per backup at least its pages' pack, its index run and its object.
    assert!(census.len() >= 4 + 1 + 3 * 3, "{census:?}");
    eprintln!("upgrade census: {} points: {census:?}", census.len());
    verify(&run, &ids, own);
    // Run again: nothing to do.
    let out = upgrade(&run, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("format 2 repository already"));

    for (n, point) in census.iter().enumerate() {
        let dir = top.path().join(format!("kill-{n}"));
        copy_tree(&tpl, &dir);
        let out = upgrade(&dir, &[("SNARF_FAULT_POINT", point)]);
        assert_eq!(out.status.signal(), Some(9), "not killed at {point}");
        if point != "upgrade.done" {
            // Between formats, every open refuses and says what to run.
            let e = Handle::open_path(&dir)
                .expect_err("open mid-upgrade")
                .to_string();
            assert!(e.contains("snarf repo upgrade"), "at {point}: {e}");
        }
        let out = upgrade(&dir, &[]);
        assert!(
            out.status.success(),
            "rerun after a kill at {point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        verify(&dir, &ids, own);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

#[test]
fn upgrade_refuses_what_is_not_a_format_1_repository() {
    let top = tempfile::tempdir().expect("tempdir");
    let out = upgrade(&top.path().join("none"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a snarf repository"));
    let v2 = top.path().join("v2");
    let (code, _, err) = common::snarf(&["repo", "init", v2.to_str().unwrap(), "--format", "2"]);
    assert_eq!(code, 0, "{err}");
    let out = upgrade(&v2, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("format 2 repository already"));
}
