//! `snarf backup --host` against a real OpenSSH server on loopback (tests/common/sshd.rs)
//! and a real mount on the far side (the far host is this machine through sshd): a job
//! restores byte-exact; while it runs it is `sshpipe` in the host-wide registry here and
//! `remote` (with the client's address) in the store's registry there, and a user job
//! started meanwhile leaves it running; kill -9 of the local ssh, of the local snarf and of
//! the far job each end both sides with no committed partial backup and both registries
//! clean after the next command; hostile mount, snapshot and host arguments reach the far
//! side as inert data. The far snarf is slowed by SNARF_FAULT_SLOW_MS (fault-injection
//! builds) through a wrapper script named by --remote-path, since sshd passes no
//! environment.

mod mounted;
#[path = "common/sshd.rs"]
mod sshd;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mounted::{snarf, snarf_bin, snarf_ok, Mounted};
use sshd::Sshd;

/// The volume: 24 MiB of a pattern zstd cannot squeeze to nothing.
fn volume() -> Vec<u8> {
    (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A mounted store holding `live/v.img`, a repository beside it, and an sshd.
struct Far {
    m: Mounted,
    sshd: Sshd,
    repo: PathBuf,
    /// A far snarf that sleeps before each batch of snarfs, so a job runs for seconds.
    slow: PathBuf,
    data: Vec<u8>,
}

impl Far {
    fn new() -> Option<Far> {
        if !sshd::available() {
            return None;
        }
        let m = Mounted::new(&[], &[])?;
        let sshd = Sshd::start(&snarf_bin(), m.dir.path());
        let repo = m.dir.path().join("repo");
        snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
        let data = volume();
        std::fs::write(m.path("live/v.img"), &data).unwrap();
        let slow = m.dir.path().join("slow-snarf");
        std::fs::write(
            &slow,
            format!(
                "#!/bin/sh\nSNARF_FAULT_SLOW_MS=300 exec '{}' \"$@\"\n",
                snarf_bin().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Far {
            m,
            sshd,
            repo,
            slow,
            data,
        })
    }

    /// `root@127.0.0.1:PORT`.
    fn host(&self) -> String {
        format!("root@127.0.0.1:{}", self.sshd.port)
    }

    fn mnt(&self) -> &str {
        self.m.mnt.to_str().unwrap()
    }

    /// `snarf --remote-path FAR backup --host HOST --repo REPO -- TARGET SNAPSHOT`.
    fn host_job(&self, far: &Path, host: &str, target: &str, snapshot: &str) -> Command {
        let mut c = Command::new(snarf_bin());
        c.env("SNARF_RSH", self.sshd.rsh_string(&self.sshd.user_key))
            .arg("--remote-path")
            .arg(far)
            .arg("backup")
            // In one word, so a host starting with `-` reaches snarf's own check.
            .arg(format!("--host={host}"))
            .arg("--repo")
            .arg(&self.repo)
            .args(["--", target, snapshot])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn backups(&self) -> usize {
        snarf_ok(&["backups", self.repo.to_str().unwrap()])
            .lines()
            .skip(1)
            .count()
    }

    /// The store registry's entries of type `kind`, through the mount's control/pids.
    fn store_entries(&self, kind: &str) -> Vec<serde_json::Value> {
        entries(&snarf_ok(&["pids", "--json", self.mnt()]), kind)
    }
}

/// Entries of type `kind` in a `snarf pids --json` answer.
fn entries(json: &str, kind: &str) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    all.into_iter().filter(|e| e["type"] == kind).collect()
}

/// The host-wide registry's sshpipe entry of process `pid`, if listed.
fn sshpipe_of(pid: u32) -> Option<serde_json::Value> {
    entries(&snarf_ok(&["pids", "--json"]), "sshpipe")
        .into_iter()
        .find(|e| e["pid"] == pid)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Children of `pid`, from /proc.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            out.push((p, comm.split_once('(').unwrap().1.to_string()));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(
        |s| !matches!(s.rsplit_once(')').map(|r| r.1.trim_start()), Some(r) if r.starts_with('Z')),
    )
}

fn kill9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

/// Waits for a child and collects its output, killing it if it outlives `limit`.
fn finish(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the host job did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Restores backup `id` and compares it with the volume.
fn assert_restores(far: &Far, id: &str, dest: &str) {
    let dest = far.m.dir.path().join(dest);
    snarf_ok(&[
        "restore",
        far.repo.to_str().unwrap(),
        id,
        dest.to_str().unwrap(),
    ]);
    let back = std::fs::read(dest.join("v.img")).unwrap();
    assert!(back == far.data, "the restored volume differs");
}

/// The backup id in a summary (`backup ID of snapshot NAME`).
fn backup_id(summary: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {summary:?}"))
        .to_string()
}

#[test]
fn a_host_job_is_sshpipe_here_remote_there_outlives_a_user_job_and_restores_byte_exact() {
    let Some(far) = Far::new() else { return };
    snarf_ok(&["snapshot", "create", far.mnt(), "nightly"]);
    let local = far
        .host_job(&far.slow, &far.host(), far.mnt(), "nightly")
        .spawn()
        .unwrap();
    let local_pid = local.id();
    // Here: the local end in the host-wide registry, with the far host.
    wait_until("the sshpipe entry", Duration::from_secs(20), || {
        sshpipe_of(local_pid).is_some()
    });
    let here = sshpipe_of(local_pid).unwrap();
    assert_eq!(here["host"], far.host(), "{here}");
    assert_eq!(here["state"], "running", "{here}");
    assert_eq!(here["job"], "backup nightly", "{here}");
    // There: the far job in the store's registry, with who started it.
    wait_until("the remote entry", Duration::from_secs(20), || {
        !far.store_entries("remote").is_empty()
    });
    let there = far.store_entries("remote").remove(0);
    assert_eq!(there["host"], "127.0.0.1", "{there}");
    assert_eq!(there["state"], "running", "{there}");
    let far_pid = there["pid"].as_u64().unwrap() as u32;
    let table = snarf_ok(&["pids", far.mnt()]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("remote")
                && l.split_whitespace().nth(6) == Some("127.0.0.1")),
        "{table}"
    );
    let table = snarf_ok(&["pids"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{local_pid} "))
                && l.split_whitespace().nth(1) == Some("sshpipe")),
        "{table}"
    );

    // A user job on the same repository, started meanwhile: it never stops the remote job.
    let user = Command::new(snarf_bin())
        .args(["backup", "--repo", far.repo.to_str().unwrap()])
        .args(["--lock-wait", "120", "--", far.mnt(), "nightly"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(far_pid), "the user job stopped the remote job");
    assert_eq!(far.store_entries("remote").len(), 1);

    let out = finish(local, Duration::from_secs(120));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    // The far job's progress lines came back, and its summary.
    assert!(stderr.contains("backup nightly: "), "{stderr}");
    assert!(stdout.contains("of snapshot nightly"), "{stdout}");
    let user = user.wait_with_output().unwrap();
    assert!(user.status.success(), "{}", text(&user.stderr));
    assert_eq!(far.backups(), 2);
    assert_restores(&far, &backup_id(&stdout), "restored");

    // Both registries are clean.
    assert!(sshpipe_of(local_pid).is_none());
    assert!(far.store_entries("remote").is_empty());
}

#[test]
fn killing_either_end_stops_the_other_and_leaves_nothing_committed() {
    let Some(far) = Far::new() else { return };
    snarf_ok(&["snapshot", "create", far.mnt(), "s"]);
    let started = |far: &Far| {
        let local = far
            .host_job(&far.slow, &far.host(), far.mnt(), "s")
            .spawn()
            .unwrap();
        wait_until("the remote job", Duration::from_secs(20), || {
            far.store_entries("remote").len() == 1 && sshpipe_of(local.id()).is_some()
        });
        let far_pid = far.store_entries("remote")[0]["pid"].as_u64().unwrap() as u32;
        (local, far_pid)
    };
    let far_ended = |far: &Far, far_pid: u32| {
        wait_until("the far job to end", Duration::from_secs(30), || {
            !alive(far_pid) && far.store_entries("remote").is_empty()
        });
    };

    // kill -9 of the local ssh.
    let (local, far_pid) = started(&far);
    let local_pid = local.id();
    let ssh = children(local_pid)
        .into_iter()
        .find(|(_, comm)| comm == "ssh")
        .expect("the local ssh")
        .0;
    kill9(ssh);
    let out = finish(local, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&far.host()), "{stderr}");
    far_ended(&far, far_pid);
    assert!(sshpipe_of(local_pid).is_none());
    assert_eq!(
        far.backups(),
        0,
        "a backup was committed after its job was cut off"
    );

    // kill -9 of the local snarf: its entry is dead, pruned by the next command.
    let (mut local, far_pid) = started(&far);
    let local_pid = local.id();
    kill9(local_pid);
    let _ = local.wait();
    far_ended(&far, far_pid);
    assert!(
        sshpipe_of(local_pid).is_none(),
        "a dead sshpipe entry was listed"
    );
    assert_eq!(
        far.backups(),
        0,
        "a backup was committed after its job was cut off"
    );
    // Its ssh, orphaned, ends with the far job.
    wait_until("the orphaned ssh to end", Duration::from_secs(30), || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|d| {
            std::fs::read_to_string(d.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with("ssh\0") && c.contains(&far.sshd.port.to_string()))
        })
    });

    // SIGHUP to the far job (sshd's hang-up of a session with a terminal): it stops too.
    let (local, far_pid) = started(&far);
    let st = Command::new("kill")
        .args(["-HUP", &far_pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("the far job to stop", Duration::from_secs(30), || {
        !alive(far_pid)
    });
    // It removed its own entry on the way out (as SIGTERM does), not left it to be pruned.
    let raw = std::fs::read_to_string(far.m.store.join("run/pids")).unwrap_or_default();
    assert!(
        !raw.contains(&format!("\"pid\":{far_pid},")),
        "the far job left its entry: {raw}"
    );
    let out = finish(local, Duration::from_secs(30));
    assert!(!out.status.success());
    far_ended(&far, far_pid);
    assert_eq!(
        far.backups(),
        0,
        "a backup was committed after its job was cut off"
    );

    // kill -9 of the far job: the local end fails, naming the host.
    let (local, far_pid) = started(&far);
    let local_pid = local.id();
    kill9(far_pid);
    let out = finish(local, Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("the backup job on {}", far.host())),
        "{stderr}"
    );
    // The far entry is dead: the next command prunes it.
    assert!(far.store_entries("remote").is_empty());
    assert!(sshpipe_of(local_pid).is_none());
    assert_eq!(
        far.backups(),
        0,
        "a backup was committed after its job was cut off"
    );

    // The next backup is fine and complete.
    let out = far
        .host_job(&snarf_bin(), &far.host(), far.mnt(), "s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(far.backups(), 1);
    assert_restores(&far, &backup_id(&text(&out.stdout)), "after-kills");
    let check = snarf(&["check", far.repo.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check.stdout));
}

#[test]
fn hostile_arguments_reach_the_far_side_as_inert_data() {
    let Some(far) = Far::new() else { return };
    let canary = far.m.dir.path().join("canary");
    let c = canary.display().to_string();
    let hostile = [
        format!("x; touch {c}"),
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("'; touch {c}; '"),
        format!("\"; touch {c}; \""),
        format!("x\ntouch {c}\n"),
        "-rf".to_string(),
        "--help".to_string(),
        format!("--repo=$(touch {c})"),
    ];
    for word in &hostile {
        // As the mount point: no such mount there; as the snapshot: no such snapshot.
        for (target, snapshot) in [(word.as_str(), "s"), (far.mnt(), word.as_str())] {
            let out = far
                .host_job(&snarf_bin(), &far.host(), target, snapshot)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{target:?} {snapshot:?}: {}",
                text(&out.stdout)
            );
            assert!(!canary.exists(), "{target:?} {snapshot:?} ran a command");
        }
    }
    // Hostile hosts are refused here, before ssh runs.
    for host in [
        format!("-oProxyCommand=touch {c}"),
        format!("root@127.0.0.1:{};touch {c}", far.sshd.port),
        format!("-l{c}@127.0.0.1"),
        "root@127.0.0.1 -oProxyCommand=x".to_string(),
    ] {
        let out = far
            .host_job(&snarf_bin(), &host, far.mnt(), "s")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(stderr.contains("[user@]host[:port]"), "{host:?}: {stderr}");
        assert!(!canary.exists(), "{host:?} ran a command");
    }
    assert!(far.backups() == 0);

    // A mount reached through a hostile name, with a hostile snapshot name, backs up.
    // Names hold no `/`, so their canary is relative: the far shell runs in $HOME.
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let rel = format!("snarf-canary-{}", far.sshd.port);
    let rel_canary = home.join(&rel);
    let link = far
        .m
        .dir
        .path()
        .join(format!("-l; touch {rel}; $(touch {rel}) '\"\nq"));
    std::os::unix::fs::symlink(&far.m.mnt, &link).unwrap();
    let snapshot = format!("-s'; touch {rel}; \"$(touch {rel})\"`touch {rel}`");
    std::fs::create_dir(far.m.path("snapshots").join(&snapshot)).unwrap();
    let out = far
        .host_job(&snarf_bin(), &far.host(), link.to_str().unwrap(), &snapshot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !canary.exists() && !rel_canary.exists(),
        "a hostile name ran a command"
    );
    assert_restores(&far, &backup_id(&text(&out.stdout)), "hostile");
}
