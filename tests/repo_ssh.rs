//! Repositories over ssh against a real OpenSSH server on loopback (tests/common/sshd.rs):
//! format 2 backups, restores, check and prune byte-exact through `snarf serve`; kill -9 of
//! the local ssh mid-backup; `--restrict-to` in a forced command; hostile paths that must
//! reach the far side as inert data; and the messages when ssh cannot log in.

#[path = "common/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use snarf::repo::backend::wire::{self, Msg};
use snarf::repo::backend::{Backend, LocalDir, SshBackend, SshOptions, SshTarget};
use snarf::repo::location::Location;
use snarf::repo::retention::Policy;
use snarf::repo::v2::{gc, InitOptions, NewBackup, Repository};
use snarf::repo::Error;
use sshd::Sshd;

const SNARF: u32 = 16 << 10;
const SNARFS: u64 = 400;

fn snarf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snarf"))
}

fn opts() -> InitOptions {
    InitOptions {
        compression: 3,
        pack_target: 256 << 10,
        frame_bytes: 4 * u64::from(SNARF),
        gc_grace_secs: 0,
        encryption: None,
    }
}

fn ssh_opts(sshd: &Sshd, key: &Path) -> SshOptions {
    SshOptions {
        rsh: sshd.rsh(key),
        remote_path: snarf_bin().display().to_string(),
    }
}

fn target(sshd: &Sshd, path: &Path) -> SshTarget {
    SshTarget::parse(&sshd.url(path.to_str().unwrap())).unwrap()
}

/// Snarf `s` of generation `g`: a third are holes, every 10th changes each generation,
/// the rest is the same noise in every generation (deduplicated).
fn snarf(g: u64, s: u64) -> Option<Vec<u8>> {
    if s % 3 == 1 {
        return None;
    }
    let gen = if s.is_multiple_of(10) { g } else { 0 };
    let mut x = (gen << 32 | s) ^ 0x9e37_79b9_7f4a_7c15;
    let mut d = Vec::with_capacity(SNARF as usize);
    while d.len() < SNARF as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(if d.len() % 2 == 0 { x as u8 } else { b'a' });
    }
    Some(d)
}

fn volume(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; (SNARFS * u64::from(SNARF)) as usize];
    for s in 0..SNARFS {
        if let Some(d) = snarf(g, s) {
            let at = (s * u64::from(SNARF)) as usize;
            v[at..at + d.len()].copy_from_slice(&d);
        }
    }
    v
}

/// Backs up generation `g` (an incremental over the newest backup, if any), stopping
/// after `stop_after` puts when given (returning `None` then).
fn backup(repo: &Repository, g: u64, stop_after: Option<u64>) -> Result<Option<String>, Error> {
    let mut new = NewBackup::new(&format!("gen{g}"), serde_json::json!({ "g": g }));
    new.lock_wait = Some(Duration::from_secs(20));
    let base = repo.list_backups()?.pop();
    let w = repo.begin_backup(new)?;
    let slot = w.add_volume(
        "vm1",
        SNARFS * u64::from(SNARF),
        SNARF,
        base.as_ref().map(|b| (b, "vm1")),
    )?;
    let mut puts = 0;
    for s in 0..SNARFS {
        let changed = base.is_none() || s.is_multiple_of(10);
        if let (true, Some(d)) = (changed, snarf(g, s)) {
            if stop_after == Some(puts) {
                return Ok(None);
            }
            w.put(slot, s, &d)?;
            puts += 1;
        }
    }
    Ok(Some(w.commit()?.to_string()))
}

fn restored(repo: &Repository, id: &str, dest: &Path) -> Vec<u8> {
    repo.restore(id, None, dest, &mut |_| {}).unwrap();
    std::fs::read(dest.join("vm1")).unwrap()
}

fn assert_checks(repo: &Repository) {
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Files whose names mark unfinished uploads or temporary files under `root`.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn backups_restore_check_and_prune_over_ssh_byte_exact() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&snarf_bin(), far.path());
    let root = far.path().join("repo");
    let t = target(&sshd, &root);
    let o = ssh_opts(&sshd, &sshd.user_key);
    let connect =
        |create| -> Arc<dyn Backend> { Arc::new(SshBackend::connect(&t, &o, create).unwrap()) };
    let repo = Repository::init(connect(true), &opts()).unwrap();
    let ids: Vec<String> = (1..=3)
        .map(|g| backup(&repo, g, None).unwrap().unwrap())
        .collect();
    let out = tempfile::tempdir().unwrap();
    for (g, id) in ids.iter().enumerate() {
        let dest = out.path().join(id);
        assert!(
            restored(&repo, id, &dest) == volume(g as u64 + 1),
            "backup {id} restores byte-exact over ssh"
        );
    }
    assert_checks(&repo);
    // Concurrent readers share one connection, each answer reaching its own caller.
    let again = Repository::open(connect(false)).unwrap();
    std::thread::scope(|s| {
        for (g, id) in ids.iter().enumerate() {
            let again = &again;
            s.spawn(move || {
                let r = again.volume_reader(id, "vm1").unwrap();
                let mut got = vec![0u8; r.size() as usize];
                let mut at = 0;
                while at < got.len() {
                    let end = (at + 50_000).min(got.len());
                    at += r.read_at(at as u64, &mut got[at..end]).unwrap();
                }
                assert!(got == volume(g as u64 + 1), "concurrent read of {id}");
            });
        }
    });
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let report = gc::prune(&repo, &policy, false).unwrap();
    assert!(report.gc.is_some_and(|g| g.packs_removed > 0));
    assert_eq!(
        repo.backup_ids()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        vec![ids[2].clone()]
    );
    assert_checks(&repo);
    assert!(restored(&repo, &ids[2], &out.path().join("after-prune")) == volume(3));
    drop(repo);
    drop(again);
    // The far side wrote an ordinary repository: the same backups through a local folder.
    let local = Repository::open(Arc::new(LocalDir::new(&root))).unwrap();
    assert_eq!(local.backup_ids().unwrap().len(), 1);
    assert_checks(&local);
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
}

#[test]
fn kill_9_of_the_local_ssh_mid_backup_leaves_the_far_repository_clean_and_unlocked() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&snarf_bin(), far.path());
    let root = far.path().join("repo");
    let t = target(&sshd, &root);
    let o = ssh_opts(&sshd, &sshd.user_key);
    let repo = Repository::init(
        Arc::new(SshBackend::connect(&t, &o, true).unwrap()),
        &opts(),
    )
    .unwrap();
    let first = backup(&repo, 1, None).unwrap().unwrap();
    drop(repo);

    // A second backup, killed half way: its ssh dies by kill -9 while packs stream.
    let ssh = Arc::new(SshBackend::connect(&t, &o, false).unwrap());
    let pid = ssh.ssh_pid();
    let repo = Repository::open(ssh.clone()).unwrap();
    let mut new = NewBackup::new("gen2", serde_json::json!({}));
    new.lock_wait = Some(Duration::from_secs(20));
    let base = repo.backup(&first).unwrap();
    let w = repo.begin_backup(new).unwrap();
    let slot = w
        .add_volume(
            "vm1",
            SNARFS * u64::from(SNARF),
            SNARF,
            Some((&base, "vm1")),
        )
        .unwrap();
    let mut failed = None;
    for s in 0..SNARFS {
        if s == SNARFS / 2 {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap();
        }
        let d = snarf(2, s).unwrap_or_else(|| vec![7; SNARF as usize]);
        if let Err(e) = w.put(slot, s, &d) {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => w.commit().unwrap_err(),
    };
    let msg = snarf::chain::Chain::new(&err).to_string();
    assert!(
        matches!(err, Error::Connection { .. }) && msg.contains(&t.url()),
        "the lost connection is named: {msg}"
    );
    drop(repo);
    drop(ssh);

    // The far serve ended with its connection: the lock is free (within the wait), the
    // next lock holder sweeps what the killed upload left, the next backup is fine.
    let repo = Repository::open(Arc::new(SshBackend::connect(&t, &o, false).unwrap())).unwrap();
    let guard = repo
        .lock("snarf test", Some(Duration::from_secs(20)))
        .unwrap();
    drop(guard);
    assert_eq!(
        repo.backup_ids().unwrap().len(),
        1,
        "the killed backup never committed"
    );
    let id = backup(&repo, 3, None).unwrap().unwrap();
    let dest = tempfile::tempdir().unwrap();
    assert!(restored(&repo, &id, dest.path()) == volume(3));
    assert_checks(&repo);
    drop(repo);
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
}

#[test]
fn a_forced_restrict_to_key_reaches_only_repositories_inside_its_folder() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let allowed = far.path().join("repos");
    let outside = far.path().join("private");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    let sshd = Sshd::start(&snarf_bin(), &allowed);
    let o = ssh_opts(&sshd, &sshd.restricted_key);
    // Inside: a repository is created and used.
    let inside = allowed.join("r1");
    let repo = Repository::init(
        Arc::new(SshBackend::connect(&target(&sshd, &inside), &o, true).unwrap()),
        &opts(),
    )
    .unwrap();
    let id = backup(&repo, 1, None).unwrap().unwrap();
    drop(repo);
    assert!(inside.join("backups").join(&id).is_file());
    // Outside, directly, through a symlink, or with `..`: refused, nothing created.
    for bad in [
        outside.join("r2"),
        allowed.join("escape/r3"),
        allowed.join("../private/r4"),
        allowed.join("new/../../private/r5"),
    ] {
        let err = SshBackend::connect(&target(&sshd, &bad), &o, true).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Refused { .. }) && (msg.contains("outside") || msg.contains("..")),
            "{}: {msg}",
            bad.display()
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn hostile_paths_and_names_reach_the_far_side_as_inert_data() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&snarf_bin(), far.path());
    // The payloads hold no `/` (a repository name is one folder here), so a command that
    // ran would make the canary in the far shell's working folder, the login's home.
    let c = format!("snarf-canary-{}", std::process::id());
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let canaries = [
        far.path().join(&c),
        home.join(&c),
        PathBuf::from("/").join(&c),
    ];
    let ran = || canaries.iter().any(|p| p.exists());
    let o = ssh_opts(&sshd, &sshd.user_key);
    let names = [
        format!("a b;touch {c};x"),
        format!("q'uote\"d $(touch {c}) `touch {c}`"),
        format!("new\nline; touch {c}"),
        "-leading-dash".to_string(),
        format!("&& touch {c} || touch {c} | > {c}"),
    ];
    for name in &names {
        let root = far.path().join(name);
        let repo = Repository::init(
            Arc::new(SshBackend::connect(&target(&sshd, &root), &o, true).unwrap()),
            &opts(),
        )
        .unwrap_or_else(|e| panic!("{name:?}: {}", snarf::chain::Chain::new(&e)));
        assert!(repo.backup_ids().unwrap().is_empty());
        drop(repo);
        assert!(
            root.join("config").is_file(),
            "the repository is at exactly {root:?}"
        );
        assert!(!ran(), "{name:?} ran a command on the far side");
    }
    // A hostile far snarf path is one word too: no such program, and nothing runs.
    let bad = SshOptions {
        remote_path: format!("snarf;touch {c}"),
        ..o.clone()
    };
    let err = SshBackend::connect(&target(&sshd, &far.path().join("r")), &bad, true).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no snarf at") && msg.contains("--remote-path"),
        "{msg}"
    );
    // Hostile hosts and users never reach ssh.
    for url in [
        format!("ssh://-oProxyCommand=touch {c}/r"),
        format!("ssh://-oProxyCommand=touch@127.0.0.1:{}/r", sshd.port),
    ] {
        assert!(Location::parse(&url).is_err(), "{url}");
    }
    assert!(!ran());
}

#[test]
fn ssh_that_cannot_log_in_says_so_and_names_the_host_and_the_fix() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&snarf_bin(), far.path());
    let stranger = far.path().join("stranger_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(st.success());
    let o = ssh_opts(&sshd, &stranger);
    let err = SshBackend::connect(&target(&sshd, &far.path().join("r")), &o, true).unwrap_err();
    let msg = err.to_string();
    for want in ["127.0.0.1", "BatchMode=yes", "password", "SNARF_RSH", "key"] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    // Nothing listening: ssh cannot connect, and says where.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = SshTarget::parse(&format!("ssh://root@127.0.0.1:{port}/r")).unwrap();
    let err = SshBackend::connect(&t, &ssh_opts(&sshd, &sshd.user_key), false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("could not connect to 127.0.0.1") && msg.contains("SNARF_RSH"),
        "{msg}"
    );
}

/// `snarf serve` on pipes, without ssh.
struct Serve {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        use std::process::Stdio;
        let mut child = std::process::Command::new(snarf_bin())
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
        match wire::recv(&mut output).unwrap() {
            Some(Msg::Hello { version, .. }) => assert_eq!(version, wire::VERSION),
            other => panic!("no hello: {other:?}"),
        }
        Serve {
            child,
            input,
            output,
        }
    }

    fn call(&mut self, m: Msg) -> Msg {
        wire::send(&mut self.input, &m).unwrap();
        wire::recv(&mut self.output).unwrap().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_answers_every_request_holds_the_lock_per_connection_and_drops_a_broken_client() {
    use snarf::repo::backend::Key;
    let far = tempfile::tempdir().unwrap();
    let root = far.path().join("r");
    let path = root.to_str().unwrap().to_string();
    let open = |create| Msg::Open {
        id: 1,
        path: path.clone(),
        create,
    };
    let mut a = Serve::start(&["--repo", &path]);
    assert!(matches!(a.call(open(true)), Msg::Ok { id: 1, .. }));
    assert!(matches!(
        a.call(Msg::Size {
            id: 2,
            key: Key::Config
        }),
        Msg::Ok {
            id: 2,
            flag: false,
            ..
        }
    ));
    assert!(matches!(
        a.call(Msg::Lock {
            id: 3,
            holder: "first".into(),
            wait_ms: wire::NO_WAIT
        }),
        Msg::Ok { id: 3, .. }
    ));
    // A second connection meets the first one's lock, named.
    let mut b = Serve::start(&[]);
    assert!(matches!(b.call(open(false)), Msg::Ok { .. }));
    let lock = Msg::Lock {
        id: 2,
        holder: "second".into(),
        wait_ms: wire::NO_WAIT,
    };
    match b.call(lock.clone()) {
        Msg::Err { error, .. } => {
            assert_eq!(error.code, wire::Code::Locked);
            assert!(error.detail.contains("first"), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    // The first connection ends (EOF): its lock goes with it.
    drop(a);
    let waited = Msg::Lock {
        id: 3,
        holder: "second".into(),
        wait_ms: 20_000,
    };
    assert!(matches!(b.call(waited), Msg::Ok { id: 3, .. }));
    // A client that breaks the protocol gets a FATAL frame and the connection ends.
    use std::io::Write;
    b.input.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    match wire::recv(&mut b.output).unwrap() {
        Some(Msg::Fatal { message }) => assert!(message.contains("frame"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(!b.child.wait().unwrap().success());
    // A serve started for one repository refuses another.
    let mut c = Serve::start(&["--repo", "/elsewhere"]);
    match c.call(open(false)) {
        Msg::Err { error, .. } => assert_eq!(error.code, wire::Code::Refused),
        other => panic!("{other:?}"),
    }
    // A request before OPEN is a protocol error.
    let mut d = Serve::start(&[]);
    assert!(matches!(d.call(Msg::Sweep { id: 1 }), Msg::Fatal { .. }));
}

/// Runs the snarf binary with ssh set up for `sshd`'s unrestricted key.
fn snarf_cli(sshd: &Sshd, args: &[&str], remote_env: bool) -> (i32, String, String) {
    let mut c = std::process::Command::new(snarf_bin());
    c.args(args)
        .env("SNARF_RSH", sshd.rsh_string(&sshd.user_key))
        .env_remove("SNARF_REMOTE_PATH")
        .stdin(std::process::Stdio::null());
    if remote_env {
        c.env("SNARF_REMOTE_PATH", snarf_bin());
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_backs_up_restores_checks_and_prunes_an_ssh_repository() {
    if !sshd::available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&snarf_bin(), far.path());
    let here = tempfile::tempdir().unwrap();
    let url = sshd.url(far.path().join("repo").to_str().unwrap());
    let bin = snarf_bin().display().to_string();
    let run = |args: &[&str]| snarf_cli(&sshd, args, true);
    // --remote-path names the far snarf as SNARF_REMOTE_PATH does.
    let (code, out, err) = snarf_cli(
        &sshd,
        &[
            "repo",
            "init",
            &url,
            "--format",
            "2",
            "--pack-size",
            "1M",
            "--remote-path",
            &bin,
        ],
        false,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("format 2"), "{out}");
    let (code, _, err) = run(&["repo", "init", &url, "--format", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let store = here.path().join("store");
    let (code, _, err) = run(&["init", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let a: Vec<u8> = (0..(3u32 << 20)).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(store.join("volumes/a.img"), &a).unwrap();
    let s = store.to_str().unwrap();
    let id_of = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("backup "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no backup id in {out:?}"))
            .to_string()
    };
    let (code, out, err) = run(&["backup", s, "first", "--repo", &url]);
    assert_eq!(code, 0, "{err}");
    let first = id_of(&out);
    let (code, out, err) = run(&["backup", s, "second", "--repo", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("incremental from"), "{out}");
    let second = id_of(&out);
    let (code, out, _) = run(&["backups", &url]);
    assert_eq!(code, 0);
    assert!(out.contains(&first) && out.contains(&second), "{out}");
    let dest = here.path().join("out");
    let (code, _, err) = run(&["restore", &url, &second, dest.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(dest.join("a.img")).unwrap() == a,
        "a.img differs"
    );
    let (code, out, err) = run(&["check", &url, "--read-data"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no problems found"), "{out}");
    let (code, out, _) = run(&["prune", &url, "--keep-last", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 backup(s) kept, 1 removed"), "{out}");
    let (code, out, _) = run(&["finishing", &url]);
    assert_eq!(code, 0, "{out}");
    // A format 1 repository on the far side is named as such, not taken for nothing.
    let v1 = far.path().join("v1");
    let (code, _, err) = run(&["repo", "init", v1.to_str().unwrap(), "--format", "1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["backups", &sshd.url(v1.to_str().unwrap())]);
    assert_eq!(code, 1);
    assert!(err.contains("format 1"), "{err}");
    // Without a far snarf: the message names the fix.
    let (code, _, err) = snarf_cli(
        &sshd,
        &["backups", &url, "--remote-path", "/nonexistent/snarf"],
        false,
    );
    assert_eq!(code, 1);
    assert!(err.contains("--remote-path"), "{err}");
}
