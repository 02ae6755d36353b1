//! `snarf copy SRC DST` from the command line: backups copied local→local, plain→encrypted,
//! encrypted→encrypted under another key, local→ssh (a real sshd) and local→S3→local (the S3
//! test server), each restored byte-exact from DST and `check --read-data` clean; copying
//! twice sends nothing the second time; a copy killed part way (into a folder, S3 or over
//! ssh) sends only the rest when run again; a wrong or missing source passphrase is refused naming the repository.

mod common;
#[path = "common/s3server.rs"]
mod s3server;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};

use common::{backup_id, volume_data};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

type Env = Vec<(&'static str, String)>;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn run(args: &[&str], env: &Env) -> (i32, String, String) {
    common::snarf_env(args, env)
}

fn ok(args: &[&str], env: &Env) -> String {
    let (code, out, err) = run(args, env);
    assert_eq!(code, 0, "snarf {args:?}: {out}{err}");
    out
}

/// `snarf copy SRC DST ARGS… --json`, which must succeed.
fn copy(src: &str, dst: &str, extra: &[&str], env: &Env) -> Value {
    let mut args = vec!["copy", src, dst, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args, env)).expect("copy --json")
}

fn sent_chunks(r: &Value) -> u64 {
    r["copied"]
        .as_array()
        .expect("copied")
        .iter()
        .map(|c| c["sent_chunks"].as_u64().expect("sent_chunks"))
        .sum()
}

fn sent_stored(r: &Value) -> u64 {
    r["copied"]
        .as_array()
        .expect("copied")
        .iter()
        .map(|c| c["sent_stored_bytes"].as_u64().expect("sent_stored_bytes"))
        .sum()
}

fn count(r: &Value, what: &str) -> usize {
    r[what].as_array().expect(what).len()
}

/// `snarf repo init REPO`, encrypted under the passphrase in `env` if `encrypted`.
fn init_repo(repo: &str, encrypted: bool, extra: &[&str], env: &Env) {
    let mut args = vec!["repo", "init", repo];
    if encrypted {
        args.extend(["--encryption", "--kdf-memory", "8M"]);
    }
    args.extend_from_slice(extra);
    ok(&args, env);
}

/// One backup: its id and the volumes it holds.
struct Made {
    id: String,
    volumes: Vec<(String, Vec<u8>)>,
}

/// A store at `dir/store` backing up into `repo`, with two backups: a full one, then an
/// incremental with one volume changed in part and one added.
fn two_backups(dir: &Path, repo: &str, env: &Env) -> (PathBuf, Vec<Made>) {
    let store = dir.join("store");
    ok(&["init", s(&store), "--repo", repo], env);
    let mut a = volume_data(41, 3 << 20);
    std::fs::write(store.join("volumes/a.img"), &a).expect("write a");
    let first = backup_id(&ok(&["backup", s(&store), "first"], env));
    let made1 = Made {
        id: first,
        volumes: vec![("a.img".into(), a.clone())],
    };
    a[1 << 20..(1 << 20) + 300_000].copy_from_slice(&volume_data(42, 300_000));
    let b = volume_data(43, (1 << 20) + 12_345);
    std::fs::write(store.join("volumes/a.img"), &a).expect("write a");
    std::fs::write(store.join("volumes/b.img"), &b).expect("write b");
    let second = backup_id(&ok(&["backup", s(&store), "second"], env));
    let made2 = Made {
        id: second,
        volumes: vec![("a.img".into(), a), ("b.img".into(), b)],
    };
    (store, vec![made1, made2])
}

/// Every backup of `made` restores byte-exact from `repo`, and it checks clean reading all
/// data.
fn verify(repo: &str, made: &[Made], env: &Env) {
    let out = tempfile::tempdir().expect("tempdir");
    for m in made {
        let dest = out.path().join(&m.id);
        ok(&["restore", repo, &m.id, s(&dest)], env);
        for (name, data) in &m.volumes {
            let got = std::fs::read(dest.join(name)).expect("restored volume");
            assert!(
                got == *data,
                "volume {name} of backup {} restores byte-exact from {repo}",
                m.id
            );
        }
    }
    let out = ok(&["check", repo, "--read-data"], env);
    assert!(!out.to_lowercase().contains("damage"), "{out}");
}

/// The headers `snarf backups --json` lists, without what is stored where (DST's own).
fn headers(repo: &str, env: &Env) -> Vec<Value> {
    let all: Value = serde_json::from_str(&ok(&["backups", repo, "--json"], env)).expect("json");
    all.as_array()
        .expect("array")
        .iter()
        .map(|b| {
            let vols: Vec<Value> = b["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .map(|v| serde_json::json!([v["name"], v["size"], v["snarf_size"]]))
                .collect();
            serde_json::json!({
                "id": b["id"], "created": b["created"], "snapshot": b["snapshot"],
                "host": b["host"], "source": b["source"], "volumes": vols,
            })
        })
        .collect()
}

fn with(env: &Env, more: &[(&'static str, &str)]) -> Env {
    let mut e = env.clone();
    e.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    e
}

#[test]
fn a_copy_keeps_each_backup_whole_and_copying_again_sends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let env = Env::new();
    init_repo(s(&src), false, &[], &env);
    init_repo(s(&dst), false, &[], &env);
    let (store, mut made) = two_backups(dir.path(), s(&src), &env);

    let r = copy(s(&src), s(&dst), &[], &env);
    assert_eq!(count(&r, "copied"), 2, "{r}");
    assert_eq!(r["by_id"], Value::Bool(true), "{r}");
    assert!(sent_chunks(&r) > 0, "{r}");
    verify(s(&dst), &made, &env);
    // Same ids, times, snapshot names, hosts, caller data and volumes.
    assert_eq!(headers(s(&src), &env), headers(s(&dst), &env));

    // Again: every backup is there already, nothing is sent.
    let before = pack_bytes(&dst);
    let r = copy(s(&src), s(&dst), &[], &env);
    assert_eq!((count(&r, "copied"), count(&r, "present")), (0, 2), "{r}");
    assert_eq!(sent_chunks(&r), 0, "{r}");
    assert_eq!(pack_bytes(&dst), before, "no byte stored the second time");
    let plain = ok(&["copy", s(&src), s(&dst)], &env);
    assert!(plain.contains("copied 0 backup(s)"), "{plain}");

    // A third backup changes one volume a little: --latest 1 copies only it, and only its
    // new chunks go (the rest DST has by id).
    let mut b = made[1].volumes[1].1.clone();
    b[..70_000].copy_from_slice(&volume_data(44, 70_000));
    std::fs::write(store.join("volumes/b.img"), &b).expect("write b");
    let third = backup_id(&ok(&["backup", s(&store), "third"], &env));
    let r = copy(s(&src), s(&dst), &["--latest", "1"], &env);
    assert_eq!(count(&r, "copied"), 1, "{r}");
    assert_eq!(r["copied"][0]["id"], Value::String(third.clone()), "{r}");
    assert!(
        (1..=3).contains(&sent_chunks(&r)),
        "only the 2 changed 64 KiB snarfs (and their frame) are sent: {r}"
    );
    // DST's chunks are known by id: only the changed snarfs are read from SRC.
    assert!(
        (1..=3).contains(&r["copied"][0]["read_snarfs"].as_u64().expect("read_snarfs")),
        "{r}"
    );
    made.push(Made {
        id: third,
        volumes: vec![made[1].volumes[0].clone(), ("b.img".into(), b)],
    });
    verify(s(&dst), &made, &env);

    // A different backup under a copied backup's id in DST is an error, not a silent skip.
    let other = dir.path().join("other");
    init_repo(s(&other), false, &[], &env);
    {
        let at = snarf::repo::Location::of_arg(&other).expect("location");
        let repo = snarf::repo::v2::Repository::open(at.backend().expect("backend")).expect("open");
        let mut new = snarf::repo::v2::NewBackup::new("elsewhere", serde_json::json!({}));
        new.kept = Some(snarf::repo::v2::Kept {
            id: snarf::repo::BackupId::parse(&made[0].id).expect("id"),
            created: 1,
            stats: Default::default(),
        });
        repo.begin_backup(new)
            .expect("begin")
            .commit()
            .expect("commit");
    }
    let (code, _, err) = run(&["copy", s(&src), s(&other)], &env);
    assert_eq!(code, 1);
    assert!(
        err.contains(&made[0].id) && err.contains("elsewhere") && err.contains("--backup"),
        "{err}"
    );

    // An unknown --backup is refused naming it and SRC; a format 1 DST is refused.
    let (code, _, err) = run(&["copy", s(&src), s(&dst), "--backup", "nonesuch"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("nonesuch") && err.contains(s(&src)), "{err}");
    let v1 = dir.path().join("v1");
    init_repo(s(&v1), false, &["--format", "1"], &env);
    let (code, _, err) = run(&["copy", s(&src), s(&v1)], &env);
    assert_eq!(code, 1);
    assert!(err.contains("format 1") && err.contains(s(&v1)), "{err}");
    // A format 1 source is read: copied into format 2, it restores byte-exact.
    let old = tempfile::tempdir().expect("tempdir");
    let (_, made1) = two_backups(old.path(), s(&v1), &env);
    let from_v1 = dir.path().join("from-v1");
    init_repo(s(&from_v1), false, &[], &env);
    let r = copy(s(&v1), s(&from_v1), &[], &env);
    assert_eq!(count(&r, "copied"), 2, "{r}");
    verify(s(&from_v1), &made1, &env);
}

#[test]
fn copies_between_plain_and_encrypted_repositories_and_refuse_a_wrong_source_passphrase() {
    const TEXT: &[u8] = b"THE KNOWN TEXT OF A COPIED VOLUME, 9e2d";
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, enc_b, enc_a, enc_c) = (
        dir.path().join("plain"),
        dir.path().join("enc-b"),
        dir.path().join("enc-a"),
        dir.path().join("enc-c"),
    );
    let none = Env::new();
    let pw = |p: &str| -> Env { vec![("SNARF_PASSWORD", p.to_string())] };
    init_repo(s(&plain), false, &[], &none);
    init_repo(s(&enc_b), true, &[], &pw("bravo bravo"));
    init_repo(s(&enc_a), true, &[], &pw("alpha alpha"));
    init_repo(s(&enc_c), true, &[], &pw("alpha alpha"));
    let sub = tempfile::tempdir().expect("tempdir");
    let (store, made) = two_backups(sub.path(), s(&plain), &none);
    // The same text in a volume of each source.
    let mut t = volume_data(45, 1 << 20);
    for at in (0..t.len() - TEXT.len()).step_by(100_000) {
        t[at..at + TEXT.len()].copy_from_slice(TEXT);
    }
    std::fs::write(store.join("volumes/t.img"), &t).expect("write t");
    let third = backup_id(&ok(&["backup", s(&store), "third"], &none));
    let mut made = made;
    let mut vols = made[1].volumes.clone();
    vols.push(("t.img".into(), t));
    made.push(Made {
        id: third,
        volumes: vols,
    });

    // plain → encrypted: DST's passphrase from SNARF_PASSWORD, SRC needs none.
    let r = copy(s(&plain), s(&enc_b), &[], &pw("bravo bravo"));
    assert_eq!(count(&r, "copied"), 3, "{r}");
    assert_eq!(r["by_id"], Value::Bool(false), "{r}");
    verify(s(&enc_b), &made, &pw("bravo bravo"));
    let r = copy(s(&plain), s(&enc_b), &[], &pw("bravo bravo"));
    assert_eq!((count(&r, "copied"), sent_chunks(&r)), (0, 0), "{r}");
    let holders: Vec<PathBuf> = common::files_under(&enc_b)
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .expect("read")
                .windows(TEXT.len())
                .any(|w| w == TEXT)
        })
        .collect();
    assert_eq!(holders, Vec::<PathBuf>::new(), "no plaintext in DST");

    // encrypted (bravo) → encrypted (alpha), another master key: ids differ, data is
    // hashed under DST's key. SRC's passphrase from SNARF_FROM_PASSWORD, never DST's.
    let both = with(
        &pw("alpha alpha"),
        &[("SNARF_FROM_PASSWORD", "bravo bravo")],
    );
    let (code, _, err) = run(&["copy", s(&enc_b), s(&enc_a)], &pw("alpha alpha"));
    assert_eq!(code, 1);
    assert!(
        err.contains(s(&enc_b)) && err.contains("SNARF_FROM_PASSWORD"),
        "a missing source passphrase names SRC and how to give it: {err}"
    );
    let wrong = with(
        &pw("alpha alpha"),
        &[("SNARF_FROM_PASSWORD", "bravo bravx")],
    );
    let (code, _, err) = run(&["copy", s(&enc_b), s(&enc_a)], &wrong);
    assert_eq!(code, 1);
    assert!(
        err.contains("does not open repository") && err.contains(s(&enc_b)),
        "{err}"
    );
    let wrong_dst = with(
        &pw("alpha alphx"),
        &[("SNARF_FROM_PASSWORD", "bravo bravo")],
    );
    let (code, _, err) = run(&["copy", s(&enc_b), s(&enc_a)], &wrong_dst);
    assert_eq!(code, 1);
    assert!(
        err.contains("does not open repository") && err.contains(s(&enc_a)),
        "{err}"
    );
    assert_eq!(headers(s(&enc_a), &pw("alpha alpha")), Vec::<Value>::new());
    let r = copy(s(&enc_b), s(&enc_a), &[], &both);
    assert_eq!(
        (count(&r, "copied"), r["by_id"].clone()),
        (3, Value::Bool(false)),
        "{r}"
    );
    verify(s(&enc_a), &made, &pw("alpha alpha"));
    let r = copy(s(&enc_b), s(&enc_a), &[], &both);
    assert_eq!((count(&r, "copied"), sent_chunks(&r)), (0, 0), "{r}");

    // Two repositories made with one passphrase still have two master keys; a passphrase
    // file for SRC works too.
    let file = dir.path().join("from.pw");
    std::fs::write(&file, "alpha alpha\n").expect("pw file");
    let r = copy(
        s(&enc_a),
        s(&enc_c),
        &["--from-password-file", s(&file), "--backup", &made[0].id],
        &pw("alpha alpha"),
    );
    assert_eq!(
        (count(&r, "copied"), r["by_id"].clone()),
        (1, Value::Bool(false)),
        "{r}"
    );
    verify(s(&enc_c), &made[..1], &pw("alpha alpha"));
    // encrypted → plain.
    let back = dir.path().join("back");
    init_repo(s(&back), false, &[], &none);
    let r = copy(
        s(&enc_c),
        s(&back),
        &[],
        &vec![("SNARF_FROM_PASSWORD_FILE", s(&file).to_string())],
    );
    assert_eq!(count(&r, "copied"), 1, "{r}");
    verify(s(&back), &made[..1], &none);
}

/// Bytes of the files under `dir/packs`.
fn pack_bytes(dir: &Path) -> u64 {
    let packs = dir.join("packs");
    if !packs.exists() {
        return 0;
    }
    common::files_under(&packs)
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum()
}

/// A source repository holding one backup of 16 MiB that does not compress.
fn big_source(dir: &Path) -> (PathBuf, Vec<Made>) {
    let src = dir.join("src");
    let none = Env::new();
    init_repo(s(&src), false, &[], &none);
    let store = dir.join("store");
    ok(&["init", s(&store), "--repo", s(&src)], &none);
    let mut v = vec![0u8; 16 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(46).fill_bytes(&mut v);
    std::fs::write(store.join("volumes/big.img"), &v).expect("write");
    let id = backup_id(&ok(&["backup", s(&store), "big"], &none));
    let made = vec![Made {
        id,
        volumes: vec![("big.img".into(), v)],
    }];
    (src, made)
}

const PACK: u64 = 1 << 20;

/// Copies `src` into `whole` in one run, then into `dst` killed (SIGKILL) right after its
/// 8th pack of about 16 is uploaded, then into `dst` again: the rerun sends only about
/// the rest. `left` measures what the killed run left in DST's packs, where the test can
/// see them (a local folder; the far folder of an ssh repository).
fn killed_copy_resumes(
    src: &Path,
    made: &[Made],
    (whole, dst): (&str, &str),
    encrypted: bool,
    env: &Env,
    left: &dyn Fn() -> Option<u64>,
) {
    let pack_size = PACK.to_string();
    init_repo(whole, encrypted, &["--pack-size", &pack_size], env);
    let r = copy(s(src), whole, &[], env);
    let all = sent_stored(&r);
    assert!(all >= 16 << 20, "{r}");

    init_repo(dst, encrypted, &["--pack-size", &pack_size], env);
    let (code, out, err) = run(
        &["copy", s(src), dst],
        &with(env, &[("SNARF_FAULT_POINT", "finish.packs#8")]),
    );
    assert_eq!(code, -1, "killed by its fault point: {out}{err}");
    assert_eq!(headers(dst, env), Vec::<Value>::new(), "nothing committed");
    let left = left();
    if let Some(left) = left {
        assert!(
            (7 * PACK..=9 * PACK).contains(&left),
            "{dst}: about half is in DST's packs: {left}"
        );
    }
    // Again: the packs left are adopted, only the rest is sent.
    let r = copy(s(src), dst, &[], env);
    let rest = sent_stored(&r);
    assert_eq!(count(&r, "copied"), 1, "{r}");
    assert!(
        rest <= all * 6 / 10,
        "{dst}: the rerun sent {rest} of {all}"
    );
    if let Some(left) = left {
        assert!(
            rest + left <= all + 2 * PACK,
            "{dst}: at most about a pack's worth redone: sent {rest} + left {left} vs {all} in one run"
        );
    }
    verify(dst, made, env);
    eprintln!(
        "{dst} (encrypted={encrypted}): one run sent {all} bytes; killed left {left:?}, the rerun sent {rest}"
    );
}

#[test]
fn a_copy_killed_half_way_sends_only_the_rest_when_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, made) = big_source(dir.path());
    for encrypted in [false, true] {
        let env = if encrypted {
            vec![("SNARF_PASSWORD", "delta delta".to_string())]
        } else {
            Env::new()
        };
        let whole = dir.path().join(format!("whole-{encrypted}"));
        let dst = dir.path().join(format!("dst-{encrypted}"));
        let left = || Some(pack_bytes(&dst));
        killed_copy_resumes(&src, &made, (s(&whole), s(&dst)), encrypted, &env, &left);
    }
}

#[test]
fn a_copy_to_s3_or_over_ssh_killed_half_way_sends_only_the_rest_when_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, made) = big_source(dir.path());
    if s3server::available() {
        let server = s3server::S3Server::start();
        server.create_bucket("resume");
        for encrypted in [false, true] {
            let mut env = server.env();
            if encrypted {
                env.push(("SNARF_PASSWORD", "kilo kilo".into()));
            }
            let (whole, dst) = (
                format!("s3://resume/whole-{encrypted}"),
                format!("s3://resume/dst-{encrypted}"),
            );
            killed_copy_resumes(&src, &made, (&whole, &dst), encrypted, &env, &|| None);
        }
    }
    if sshd::available() {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_snarf"));
        let far = tempfile::tempdir().expect("tempdir");
        let server = sshd::Sshd::start(&bin, far.path());
        let env: Env = vec![
            ("SNARF_RSH", server.rsh_string(&server.user_key)),
            ("SNARF_REMOTE_PATH", bin.display().to_string()),
        ];
        let whole = server.url(s(&far.path().join("whole")));
        let dst = server.url(s(&far.path().join("dst")));
        let left = || Some(pack_bytes(&far.path().join("dst")));
        killed_copy_resumes(&src, &made, (&whole, &dst), false, &env, &left);
    }
}

#[test]
fn copies_to_a_repository_over_ssh() {
    if !sshd::available() {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_snarf"));
    let far = tempfile::tempdir().expect("tempdir");
    let server = sshd::Sshd::start(&bin, far.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let env: Env = vec![
        ("SNARF_RSH", server.rsh_string(&server.user_key)),
        ("SNARF_REMOTE_PATH", bin.display().to_string()),
    ];
    init_repo(s(&src), false, &[], &env);
    let (_, made) = two_backups(dir.path(), s(&src), &env);
    let dst = server.url(s(&far.path().join("repo")));
    init_repo(&dst, false, &[], &env);
    let r = copy(s(&src), &dst, &[], &env);
    assert_eq!(
        (count(&r, "copied"), r["by_id"].clone()),
        (2, Value::Bool(true)),
        "{r}"
    );
    verify(&dst, &made, &env);
    let r = copy(s(&src), &dst, &[], &env);
    assert_eq!((count(&r, "copied"), sent_chunks(&r)), (0, 0), "{r}");
    assert_eq!(headers(s(&src), &env), headers(&dst, &env));
}

#[test]
fn copies_to_plain_and_encrypted_s3_repositories_and_back() {
    if !s3server::available() {
        return;
    }
    let server = s3server::S3Server::start();
    server.create_bucket("copies");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let none = Env::new();
    init_repo(s(&src), false, &[], &none);
    let (_, made) = two_backups(dir.path(), s(&src), &none);
    for (dst, encrypted) in [("s3://copies/plain", false), ("s3://copies/site/enc", true)] {
        let mut env = server.env();
        if encrypted {
            env.push(("SNARF_PASSWORD", "echo echo".into()));
        }
        init_repo(dst, encrypted, &[], &env);
        let r = copy(s(&src), dst, &[], &env);
        assert_eq!(count(&r, "copied"), 2, "{r}");
        verify(dst, &made, &env);
        let r = copy(s(&src), dst, &[], &env);
        assert_eq!((count(&r, "copied"), sent_chunks(&r)), (0, 0), "{r}");
        // And back from S3 into a new local repository.
        let back = dir.path().join(format!("back-{encrypted}"));
        init_repo(s(&back), false, &[], &none);
        let mut from = server.env();
        if encrypted {
            from.push(("SNARF_FROM_PASSWORD", "echo echo".into()));
        }
        let r = copy(dst, s(&back), &[], &from);
        assert_eq!(count(&r, "copied"), 2, "{r}");
        verify(s(&back), &made, &none);
    }
}
