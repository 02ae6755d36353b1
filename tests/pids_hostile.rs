//! The process registry is a file anyone with access to the store's run/ folder can write:
//! what it says is only a claim. An entry planted for a process that is not a snarf job,
//! with that process's real pid and start time, must never get it signalled.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use snarf::pids::{procfs, Registry, StopOptions};

/// A `sleep 300` this test started through `sh`, so it is not a descendant of the test (the
/// policy never stops its caller's own children anyway); killed by its pid when dropped.
struct Orphan {
    pid: u32,
    start_time: u64,
}

impl Orphan {
    fn start() -> Orphan {
        let out = Command::new("sh")
            .args(["-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let start_time = procfs::read_stat(pid).unwrap().unwrap().start_time;
        Orphan { pid, start_time }
    }

    fn running(&self) -> bool {
        matches!(procfs::read_stat(self.pid), Ok(Some(s)) if !s.exited() && s.start_time == self.start_time)
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if self.running() {
            // SAFETY: kill with the pid of the process this test started, checked just now.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// One registry line claiming `pid` is an idle user job on `repo`, with the process's real
/// start time, this boot and this PID namespace, so only the process itself can give the
/// lie away.
fn planted_line(pid: u32, repo: &str) -> String {
    let start_time = procfs::read_stat(pid).unwrap().unwrap().start_time;
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    serde_json::json!({
        "pid": pid,
        "start_time": start_time,
        "boot_id": procfs::boot_id().unwrap(),
        "type": "user",
        "state": "idle",
        "job": "backup nightly",
        "repo": repo,
        "registered": 1,
        "cmdline": ["snarf", "backup", "/mnt/snarf", "nightly"],
        "pid_ns": ns,
    })
    .to_string()
}

#[test]
fn a_planted_entry_for_a_process_that_is_not_a_snarf_job_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let repo = "/srv/repo";
    let sleeper = Orphan::start();
    let pid = sleeper.pid;
    std::fs::write(
        dir.path().join("pids"),
        format!("{}\n", planted_line(pid, repo)),
    )
    .unwrap();
    let registry = Registry::new(dir.path());
    let stopped = registry
        .stop_idle(
            repo,
            &StopOptions {
                grace: Duration::from_millis(500),
                protect: vec![],
            },
        )
        .unwrap();
    assert!(
        stopped.iter().all(|s| s.pid != pid),
        "the policy chose `sleep 300`: {stopped:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        sleeper.running(),
        "`sleep 300` was signalled because a registry line said it was an idle snarf job"
    );
    // The entry is left as it is (its process is alive), to be seen and removed by hand.
    assert_eq!(registry.list().unwrap().len(), 1);
}
