//! Names read from a repository's disk never become paths unchecked: a manifest whose
//! volume or table names leave their folder is damage that `check` reports by backup, that
//! `restore` refuses, and that no listing shows.

mod common;

use std::path::Path;

use common::*;
use snarf::repo::{BackupId, Repo, RepoInitOptions};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Rewrites one field of the first volume of backup `id`'s manifest.
fn tamper(repo: &Path, id: &BackupId, field: &str, value: &str) {
    let path = repo.join("backups").join(id.as_str()).join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    m["volumes"][0][field] = serde_json::Value::String(value.into());
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("encode")).expect("write");
}

#[test]
fn restore_refuses_and_check_reports_names_that_leave_their_folder() {
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
    let good = write_backup(&repo, 1, 200_000, None);
    let dotdot = write_backup(&repo, 2, 200_000, None);
    let absolute = write_backup(&repo, 3, 200_000, None);
    let table = write_backup(&repo, 4, 200_000, None);
    let abs_target = dir.path().join("abs");
    tamper(&r, &dotdot, "name", "../escaped");
    tamper(&r, &absolute, "name", s(&abs_target));
    tamper(&r, &table, "table", "../../../../etc/passwd");

    let dest = dir.path().join("dest");
    for (id, hint) in [
        (&dotdot, "../escaped"),
        (&absolute, s(&abs_target)),
        (&table, "etc/passwd"),
    ] {
        let (code, out, err) = snarf(&["restore", s(&r), id.as_str(), s(&dest)]);
        assert_eq!(code, 1, "restore of {id} went ahead:\n{out}\n{err}");
        assert!(
            err.contains("is damaged") && err.contains(hint) && err.contains(id.as_str()),
            "{err}"
        );
    }
    assert!(
        !dir.path().join("escaped").exists(),
        "restore wrote outside its destination"
    );
    assert!(!abs_target.exists(), "restore wrote to an absolute path");
    assert!(
        std::fs::read_dir(&dest).map_or(0, |d| d.count()) == 0,
        "restore left files behind"
    );

    let (code, out, _) = snarf(&["check", s(&r)]);
    assert_eq!(code, 1, "check found nothing:\n{out}");
    for (id, hint) in [
        (&dotdot, "bad volume name \"../escaped\"".to_string()),
        (&absolute, "bad volume name".to_string()),
        (&table, "not a table name snarf writes".to_string()),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("DAMAGED  backup {id}")) && l.contains(&hint)),
            "check does not name {id} ({hint}):\n{out}"
        );
    }
    assert!(!out.contains("no problems found"), "{out}");

    // The intact backup is untouched by all this, and only it is listed.
    let (code, out, _) = snarf(&["backups", s(&r)]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(good.as_str()), "{out}");
    let (code, _, err) = snarf(&["restore", s(&r), good.as_str(), s(&dest)]);
    assert_eq!(code, 0, "{err}");
}
