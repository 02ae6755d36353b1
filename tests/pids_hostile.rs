//! The process registry is a file anyone with access to the store's run/ folder can write:
//! what it says is only a claim. An entry planted for a process that is not a snarf job,
//! with that process's real pid and start time, must never get it signalled.

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::Duration;

use snarf::pids::{procfs, Registry, StopOptions};

/// A child this test started, killed by its pid when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let mut sleeper = Started(Command::new("sleep").arg("300").spawn().unwrap());
    let pid = sleeper.0.id();
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
        sleeper.0.try_wait().unwrap().is_none(),
        "`sleep 300` was signalled because a registry line said it was an idle snarf job"
    );
    // The entry is left as it is (its process is alive), to be seen and removed by hand.
    assert_eq!(registry.list().unwrap().len(), 1);
}
