//! The repository lock against live holders the lock file cannot vouch for: a backup running
//! in another PID namespace (its pid means nothing here), and a new holder that has taken the
//! flock after a kill -9 but not yet written its name. A held flock means the lock is held,
//! whatever the file says; a second writer is refused and the first one commits unharmed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use snarf::repo::{NewBackup, Repo, RepoInitOptions};

/// Environment variable selecting the child role.
const ROLE: &str = "SNARF_TEST_LOCK_ROLE";

/// The child roles. Does nothing when run as an ordinary test.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var("SNARF_TEST_REPO").expect("repo"));
    let repo = Repo::open(&path).expect("open");
    match role.as_str() {
        // A backup that seals packs, says "locked", waits for a line on stdin, then commits.
        "backup" => {
            let mut new =
                NewBackup::new("held", serde_json::json!({"seed": 31, "own_size": 600_000}));
            new.command = "snarf backup held".into();
            let w = repo.begin_backup(new).expect("begin");
            let vols = volumes_for(31, 600_000);
            let p = w.preparer();
            let mut slots = Vec::new();
            for (name, data) in &vols {
                slots.push(w.add_volume(name, data.len() as u64, SNARF).expect("add"));
            }
            // Half of each volume before the pause (sealing packs), the rest after it.
            let put = |from_half: bool| {
                for ((_, data), slot) in vols.iter().zip(&slots) {
                    let n = (data.len() as u64).div_ceil(SNARF as u64);
                    let range = if from_half { n / 2..n } else { 0..n / 2 };
                    for i in range {
                        let s = (i * SNARF as u64) as usize;
                        let e = (s + SNARF as usize).min(data.len());
                        w.put(*slot, i, p.prepare(&data[s..e]).expect("prepare"))
                            .expect("put");
                    }
                }
            };
            put(false);
            w.flush().expect("flush");
            println!("locked");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
            put(true);
            let id = w.commit().expect("commit");
            println!("committed {id}");
        }
        // Takes the bare lock, says "locked" and waits to be killed.
        "hold" => {
            let _lock =
                snarf::repo::RepoLock::try_acquire(&path, "snarf backup doomed").expect("lock");
            println!("locked");
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Starts the child role `role`, under `prefix` (e.g. `unshare ...`) if given.
fn spawn_child(role: &str, repo: &Path, prefix: &[&str]) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("--").arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("SNARF_TEST_REPO", repo)
        .env_remove("SNARF_FAULT_POINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn child")
}

/// Reads the child's stdout until a line containing `word`; the rest of stdout is returned.
fn wait_for(child: &mut Child, word: &str) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains(word) {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "the child ended before saying {word:?}"
        );
    }
    out
}

/// Kills and reaps a child this test started, on every path out of the test.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn init_repo(path: &Path) -> Repo {
    Repo::init(
        path,
        &RepoInitOptions {
            compression: 3,
            pack_target: 96 << 10,
        },
    )
    .expect("init")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Whether `unshare --pid` works here (root); a notice, or a failure where it must.
fn unshare_works() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("SNARF_REQUIRE_FUSE").as_deref() != Ok("1"),
            "SNARF_REQUIRE_FUSE=1 but `unshare --pid` does not work (run as root)"
        );
        eprintln!("skipping: `unshare --pid --fork --mount-proc` does not work here");
    }
    ok
}

#[test]
fn a_backup_in_another_pid_namespace_keeps_its_lock_and_commits() {
    if !unshare_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let repo = init_repo(&path);
    let id1 = write_backup(&repo, 1, 300_000, None);
    let id2 = write_backup(&repo, 2, 300_000, None);
    let mut child = Reap(Some(spawn_child(
        "backup",
        &path,
        &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
    )));
    let c = child.0.as_mut().expect("child");
    let out = wait_for(c, "locked");
    // The lock file names a pid of the other namespace, which here is some other process
    // or none at all.
    let text = std::fs::read_to_string(path.join("lock")).expect("lock file");
    assert!(text.contains("command=snarf backup held"), "{text}");

    // A prune on the host is refused, with the holder named; nothing is removed.
    let (code, out_p, err) = snarf(&["prune", s(&path), "--keep-last", "1"]);
    assert_eq!(code, 1, "prune ran beside a live backup:\n{out_p}\n{err}");
    assert!(
        err.contains("is locked by") && err.contains("snarf backup held"),
        "{err}"
    );
    assert!(!err.contains("took it over"), "{err}");
    let w = repo.begin_backup(NewBackup::new("second", serde_json::Value::Null));
    assert!(
        matches!(w, Err(snarf::repo::Error::Locked { .. })),
        "a second writer got the lock"
    );
    assert_eq!(repo.list_backups().expect("list").len(), 2);

    // The backup goes on and commits; everything checks and restores.
    c.stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let mut rest = String::new();
    for line in out.lines() {
        let line = line.expect("line");
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = c.wait().expect("wait");
    child.0 = None;
    assert!(status.success(), "the backup failed: {rest}");
    assert!(rest.contains("committed"), "{rest}");
    let ids: Vec<_> = repo
        .list_backups()
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&id1) && ids.contains(&id2));
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert_eq!(verify_all_backups(&repo), 3);
}

#[test]
fn a_new_holder_that_has_not_written_its_name_keeps_the_lock_after_a_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let repo = init_repo(&path);
    write_backup(&repo, 1, 200_000, None);
    write_backup(&repo, 2, 200_000, None);

    // The first holder is killed with kill -9: its name stays in the lock file.
    let mut first = Reap(Some(spawn_child("hold", &path, &[])));
    let c = first.0.as_mut().expect("child");
    let dead_pid = c.id();
    drop(wait_for(c, "locked"));
    c.kill().expect("kill -9");
    c.wait().expect("wait");
    first.0 = None;
    let text = std::fs::read_to_string(path.join("lock")).expect("lock file");
    assert!(text.contains(&format!("pid={dead_pid}")), "{text}");

    // A second holder takes the flock, and is about to write its name.
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path.join("lock"))
        .expect("open lock");
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "the dead holder's flock was not released");

    // A third process must not take the lock over from it.
    let (code, out, err) = snarf(&["prune", s(&path), "--keep-last", "1"]);
    assert_eq!(code, 1, "prune took a held lock:\n{out}\n{err}");
    assert!(err.contains("is locked by"), "{err}");
    assert!(
        err.contains(&format!("pid {dead_pid}")) && err.contains("not written its name"),
        "{err}"
    );
    assert_eq!(repo.list_backups().expect("list").len(), 2);
    assert!(matches!(
        snarf::repo::RepoLock::try_acquire(&path, "snarf test"),
        Err(snarf::repo::Error::Locked { .. })
    ));

    // Once it lets go, the lock is free again.
    drop(lock_file);
    let (code, out, err) = snarf(&["prune", s(&path), "--keep-last", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(repo.list_backups().expect("list").len(), 1);
}
