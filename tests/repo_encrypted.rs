//! Encrypted repositories from the command line: `snarf repo init --encryption`, direct
//! backups, restore, check and prune byte-exact with the passphrase from SNARF_PASSWORD or
//! --password-file; a missing or wrong passphrase refused naming the repository; no
//! plaintext of the volume in any repository file; `snarf repo key add|list|remove`.

mod common;

use std::path::{Path, PathBuf};

use common::{backup_id, volume_data};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Runs snarf with `env` set (and no inherited passphrase) and returns (code, out, err).
fn snarf_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_snarf"));
    cmd.args(args)
        .env_remove("SNARF_PASSWORD")
        .env_remove("SNARF_PASSWORD_FILE")
        .env_remove("SNARF_NEW_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run snarf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const PW: &[(&str, &str)] = &[("SNARF_PASSWORD", "correct horse battery")];

/// A volume that holds a known text among noise.
fn volume_with_text(text: &[u8]) -> Vec<u8> {
    let mut v = volume_data(21, 3 << 20);
    for at in (0..v.len() - text.len()).step_by(300_000) {
        v[at..at + text.len()].copy_from_slice(text);
    }
    v
}

/// Files of `repo` whose bytes hold `text`.
fn holders(repo: &Path, text: &[u8]) -> Vec<PathBuf> {
    common::files_under(repo)
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .expect("read")
                .windows(text.len())
                .any(|w| w == text)
        })
        .collect()
}

#[test]
fn an_encrypted_repository_backs_up_restores_checks_and_prunes_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, store) = (dir.path().join("repo"), dir.path().join("store"));
    let (code, out, err) = snarf_env(
        &[
            "repo",
            "init",
            s(&repo),
            "--encryption",
            "--kdf-memory",
            "8M",
        ],
        PW,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created encrypted repository"), "{out}");
    assert_eq!(
        snarf_env(&["init", s(&store), "--repo", s(&repo)], &[]).0,
        0
    );
    const TEXT: &[u8] = b"THE KNOWN TEXT OF A SECRET VOLUME, 4f1c";
    let a = volume_with_text(TEXT);
    std::fs::write(store.join("volumes/secret-volume.img"), &a).expect("write");

    // With no passphrase at all the repository is refused, naming it and the ways to give one.
    let (code, _, err) = snarf_env(&["backup", s(&store), "first"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is encrypted") && err.contains("SNARF_PASSWORD") && err.contains(s(&repo)),
        "{err}"
    );
    let (code, out, err) = snarf_env(&["backup", s(&store), "first"], PW);
    assert_eq!(code, 0, "{err}");
    let id1 = backup_id(&out);
    // A wrong passphrase is refused by every command, naming the repository.
    for args in [
        vec!["backups", s(&repo)],
        vec!["check", s(&repo)],
        vec!["restore", s(&repo), &id1, s(&dir.path().join("x"))],
    ] {
        let (code, _, err) = snarf_env(&args, &[("SNARF_PASSWORD", "correct horse batterz")]);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains("does not open repository") && err.contains(s(&repo)),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("x").exists());

    // The second backup is incremental through the keyed ids; a passphrase file works too.
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "correct horse battery\n").expect("pw");
    let mut b = volume_data(22, 1 << 20);
    b[..TEXT.len()].copy_from_slice(TEXT);
    std::fs::write(store.join("volumes/b.img"), &b).expect("write b");
    let (code, out, err) = snarf_env(
        &["--password-file", s(&pwfile), "backup", s(&store), "second"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("incremental from"), "{out}");
    let id2 = backup_id(&out);
    let (code, out, err) = snarf_env(
        &["backups", s(&repo)],
        &[("SNARF_PASSWORD_FILE", s(&pwfile))],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id1) && out.contains(&id2), "{out}");
    let dest = dir.path().join("out");
    let (code, _, err) = snarf_env(&["restore", s(&repo), &id2, s(&dest)], PW);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(dest.join("secret-volume.img")).expect("a") == a,
        "a differs"
    );
    assert!(
        std::fs::read(dest.join("b.img")).expect("b") == b,
        "b differs"
    );
    let (code, out, err) = snarf_env(&["check", s(&repo), "--read-data"], PW);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = snarf_env(&["prune", s(&repo), "--keep-last", "1"], PW);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = snarf_env(&["backups", s(&repo)], PW);
    assert_eq!(code, 0);
    assert!(!out.contains(&id1) && out.contains(&id2), "{out}");
    let (code, out, err) = snarf_env(&["check", s(&repo), "--read-data"], PW);
    assert_eq!(code, 0, "{out}{err}");
    let dest = dir.path().join("out2");
    assert_eq!(snarf_env(&["restore", s(&repo), &id2, s(&dest)], PW).0, 0);
    assert!(std::fs::read(dest.join("secret-volume.img")).expect("a") == a);

    // No repository file holds the text or the volume's name; the store's own copy does,
    // so the search can find it.
    assert!(!holders(&store.join("volumes"), TEXT).is_empty());
    assert_eq!(holders(&repo, TEXT), Vec::<PathBuf>::new());
    assert_eq!(holders(&repo, b"secret-volume"), Vec::<PathBuf>::new());
}

#[test]
fn encrypted_init_is_refused_without_a_passphrase_or_on_format_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let (code, _, err) = snarf_env(&["repo", "init", s(&r), "--encryption"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no passphrase was given"), "{err}");
    assert!(!r.join("config").exists());
    let (code, _, err) = snarf_env(
        &["repo", "init", s(&r), "--encryption", "--format", "1"],
        PW,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("format 1 repository cannot be encrypted"),
        "{err}"
    );
    let (code, _, err) = snarf_env(
        &["repo", "init", s(&r), "--encryption", "--kdf-memory", "1M"],
        PW,
    );
    assert_eq!(code, 1);
    assert!(err.contains("--kdf-memory"), "{err}");
    let (code, _, err) = snarf_env(
        &["repo", "init", s(&r), "--encryption"],
        &[("SNARF_PASSWORD", "")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn key_slots_are_added_listed_and_removed_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("r");
    let (code, _, err) = snarf_env(
        &[
            "repo",
            "init",
            s(&r),
            "--encryption",
            "--kdf-memory",
            "8M",
            "--label",
            "admin",
        ],
        PW,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = snarf_env(&["repo", "key", "list", s(&r)], PW);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("admin"), "{out}");
    let first = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("id")
        .to_string();
    let (code, _, err) = snarf_env(&["repo", "key", "remove", s(&r), &first], PW);
    assert_eq!(code, 1);
    assert!(err.contains("last"), "{err}");
    // Adding needs the current passphrase to open and a new one to add.
    let (code, _, err) = snarf_env(&["repo", "key", "add", s(&r)], PW);
    assert_eq!(code, 1);
    assert!(err.contains("no passphrase to add"), "{err}");
    let (code, out, err) = snarf_env(
        &[
            "repo",
            "key",
            "add",
            s(&r),
            "--kdf-memory",
            "8M",
            "--label",
            "backup-host",
        ],
        &[PW[0], ("SNARF_NEW_PASSWORD", "second passphrase")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added key slot"), "{out}");
    let (code, out, _) = snarf_env(
        &["repo", "key", "list", s(&r), "--json"],
        &[("SNARF_PASSWORD", "second passphrase")],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{out}");
    let (code, _, err) = snarf_env(
        &["repo", "key", "remove", s(&r), &first],
        &[("SNARF_PASSWORD", "second passphrase")],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = snarf_env(&["backups", s(&r)], PW);
    assert_eq!(code, 1);
    assert!(err.contains("does not open"), "{err}");
    assert_eq!(
        snarf_env(
            &["backups", s(&r)],
            &[("SNARF_PASSWORD", "second passphrase")]
        )
        .0,
        0
    );
    let (code, _, err) = snarf_env(
        &["repo", "key", "remove", s(&r), "nonsense"],
        &[("SNARF_PASSWORD", "second passphrase")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("not a key slot id"), "{err}");
    // A plain repository has no keys.
    let p = dir.path().join("p");
    assert_eq!(snarf_env(&["repo", "init", s(&p)], &[]).0, 0);
    let (code, _, err) = snarf_env(&["repo", "key", "list", s(&p)], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not encrypted"), "{err}");
}
