//! Tests with real processes. The test binary re-executes itself with `SNARF_PIDS_ROLE`
//! set, running only [`child_role`], which then plays one part: a registered job, a job
//! that ignores SIGTERM, an unregistered helper, or a new user job that stops idle ones.
//! Each child says `READY` on stdout once set up and waits for its stdin to close.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use super::entry::parse_registry;
use super::*;

const ROLE: &str = "SNARF_PIDS_ROLE";
const RUN: &str = "SNARF_PIDS_RUN";
const KIND: &str = "SNARF_PIDS_TYPE";
const STATE: &str = "SNARF_PIDS_STATE";
const REPO: &str = "SNARF_PIDS_REPO";
const JOB: &str = "SNARF_PIDS_JOB";

/// Not a test of its own: the entry point of the child processes the other tests spawn.
/// Without `SNARF_PIDS_ROLE` it does nothing.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let code = match run_role(&role) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child role {role} failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run_role(role: &str) -> std::result::Result<(), String> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let reg = Registry::new(var(RUN));
    let new = || {
        let kind = ProcType::from_word(&var(KIND)).unwrap_or(ProcType::User);
        let state = match var(STATE).as_str() {
            "running" => ProcState::Running,
            "finishing" => ProcState::Finishing,
            _ => ProcState::Idle,
        };
        NewEntry::new(kind)
            .state(state)
            .repo(var(REPO))
            .job(var(JOB))
    };
    let ready = || println!("READY {}", std::process::id());
    let wait_stdin = || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    };
    match role {
        "register" => {
            let r = reg.register(new()).map_err(|e| e.to_string())?;
            exit_on_signals().map_err(|e| e.to_string())?;
            ready();
            wait_stdin();
            r.unregister().map_err(|e| e.to_string())
        }
        "stubborn" => {
            // SAFETY: setting a signal disposition to "ignore" installs no handler code.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            let r = reg.register(new()).map_err(|e| e.to_string())?;
            ready();
            wait_stdin();
            r.unregister().map_err(|e| e.to_string())
        }
        "helper" => {
            ready();
            wait_stdin();
            Ok(())
        }
        "newjob" => {
            let r = reg.register(new()).map_err(|e| e.to_string())?;
            let opts = StopOptions {
                grace: Duration::from_secs(2),
                protect: vec![],
            };
            let stopped = reg
                .stop_idle(&var(REPO), &opts)
                .map_err(|e| e.to_string())?;
            for s in stopped {
                println!("STOPPED {} {:?} {:?}", s.pid, s.reason, s.outcome);
            }
            println!("DONE");
            r.unregister().map_err(|e| e.to_string())
        }
        other => Err(format!("unknown role {other}")),
    }
}

/// A spawned child playing a role; killed on drop so a failing test leaves no process.
struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Kid {
    fn spawn(role: &str, run: &Path, env: &[(&str, &str)], marker: Option<&Path>) -> Kid {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        // "backup" first: the children play snarf jobs, and the idle policy only stops a
        // process whose command line is a job's (`snarf backup ...`). To the test harness it
        // is one more name filter, matching no test.
        cmd.args([
            "backup",
            "--exact",
            "pids::process_tests::child_role",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, role)
        .env(RUN, run)
        .env_remove(HELPER_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(m) = marker {
            mark_helper(&mut cmd, m);
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Kid { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one starts with `prefix`; returns the lines read.
    fn read_until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "child {} ended before {prefix}: {lines:?}",
                self.pid()
            );
            let line = line.trim_end().to_string();
            let done = line.starts_with(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    fn wait_ready(&mut self) {
        self.read_until("READY");
    }

    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for an exit caused by something else than stdin closing: std's `wait` would
    /// close stdin first, racing the cause under test.
    fn wait_keeping_stdin(&mut self) -> std::process::ExitStatus {
        let stdin = self.child.stdin.take();
        let status = self.child.wait().unwrap();
        drop(stdin);
        status
    }

    fn finish(&mut self) -> std::process::ExitStatus {
        self.close_stdin();
        self.child.wait().unwrap()
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn entries_on_disk(reg: &Registry) -> Vec<Entry> {
    let text = std::fs::read_to_string(reg.path()).unwrap();
    let (entries, bad) = parse_registry(&text);
    assert!(bad.is_empty(), "torn or damaged lines: {bad:?}\n{text}");
    entries
}

#[test]
fn fifty_processes_register_at_once_and_all_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new(dir.path());
    let jobs: Vec<String> = (0..50).map(|i| format!("job {i}")).collect();
    let mut kids: Vec<Kid> = jobs
        .iter()
        .map(|j| Kid::spawn("register", dir.path(), &[(JOB, j)], None))
        .collect();
    for k in &mut kids {
        k.wait_ready();
    }
    let on_disk = entries_on_disk(&reg);
    let by_pid: BTreeMap<u32, String> = on_disk.iter().map(|e| (e.pid, e.job.clone())).collect();
    assert_eq!(on_disk.len(), 50, "duplicate or lost entries: {on_disk:?}");
    let want: BTreeSet<u32> = kids.iter().map(Kid::pid).collect();
    assert_eq!(by_pid.keys().copied().collect::<BTreeSet<_>>(), want);
    let mut got_jobs: Vec<String> = by_pid.into_values().collect();
    got_jobs.sort();
    let mut want_jobs = jobs.clone();
    want_jobs.sort();
    assert_eq!(got_jobs, want_jobs);
    assert_eq!(reg.list().unwrap().len(), 50);

    // Let them all go at once, so the unregistrations race too.
    for k in &mut kids {
        k.close_stdin();
    }
    for k in &mut kids {
        let status = k.finish();
        assert!(status.success(), "child {} failed: {status}", k.pid());
    }
    assert!(!reg.path().exists(), "registry left behind");
    assert!(!reg.lock_path().exists(), "lock file left behind");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn planted_entry_with_live_pid_but_wrong_start_time_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new(dir.path());
    // A live process, registered once correctly and once with a wrong start time.
    let mut helper = Kid::spawn("helper", dir.path(), &[], None);
    helper.wait_ready();
    let pid = helper.pid();
    let start_time = procfs::read_stat(pid).unwrap().unwrap().start_time;
    let right = Entry {
        pid,
        start_time,
        boot_id: procfs::boot_id().unwrap(),
        kind: ProcType::Cron,
        state: ProcState::Running,
        job: "right".into(),
        repo: String::new(),
        registered: 0,
        cmdline: vec![],
        pid_ns: procfs::self_pid_namespace(),
        host: String::new(),
    };
    let wrong = Entry {
        start_time: start_time + 1,
        job: "wrong".into(),
        ..right.clone()
    };
    std::fs::write(reg.path(), entry::format_registry(&[wrong, right])).unwrap();

    let mut kid = Kid::spawn("register", dir.path(), &[(JOB, "new")], None);
    kid.wait_ready();
    let jobs: Vec<String> = entries_on_disk(&reg).into_iter().map(|e| e.job).collect();
    assert_eq!(jobs, ["right", "new"]);
    let listed: Vec<String> = reg.list().unwrap().into_iter().map(|e| e.job).collect();
    assert_eq!(listed, ["right", "new"]);
    assert!(kid.finish().success());
    drop(helper);
    // Its process is gone now, so the "right" entry is dead too: the file goes.
    assert_eq!(reg.cleanup().unwrap(), 1);
    assert!(!reg.path().exists());
}

#[test]
fn stop_idle_stops_older_idle_user_job_and_helpers_only() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let reg = Registry::new(run);
    let repo = "/srv/repo-a";
    let spawn = |role: &str, kind: &str, state: &str, repo: &str| {
        let mut k = Kid::spawn(
            role,
            run,
            &[(KIND, kind), (STATE, state), (REPO, repo)],
            None,
        );
        k.wait_ready();
        k
    };
    let mut old_user = spawn("register", "user", "idle", repo);
    let mut cron = spawn("register", "cron", "idle", repo);
    let mut other_repo = spawn("register", "user", "idle", "/srv/repo-b");
    let mut running_user = spawn("register", "user", "running", repo);
    let mut remote = spawn("register", "remote", "running", repo);
    let mut stubborn = spawn("stubborn", "user", "idle", repo);
    let mut helper = Kid::spawn("helper", run, &[], Some(run));
    helper.wait_ready();
    let other_dir = tempfile::tempdir().unwrap();
    let mut foreign_helper = Kid::spawn("helper", run, &[], Some(other_dir.path()));
    foreign_helper.wait_ready();
    assert_eq!(reg.list().unwrap().len(), 6);

    let mut newjob = Kid::spawn("newjob", run, &[(KIND, "user"), (REPO, repo)], None);
    let lines = newjob.read_until("DONE");
    assert!(newjob.finish().success());
    let stopped: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("STOPPED "))
        .map(str::to_string)
        .collect();
    let want: BTreeSet<String> = [
        format!("{} IdleUserJob Terminated", old_user.pid()),
        format!("{} IdleUserJob Killed", stubborn.pid()),
        format!("{} Helper Terminated", helper.pid()),
    ]
    .into();
    assert_eq!(stopped, want, "{lines:?}");

    assert_eq!(old_user.wait_keeping_stdin().signal(), Some(libc::SIGTERM));
    assert_eq!(stubborn.wait_keeping_stdin().signal(), Some(libc::SIGKILL));
    assert_eq!(helper.wait_keeping_stdin().signal(), Some(libc::SIGTERM));
    for k in [
        &mut cron,
        &mut other_repo,
        &mut running_user,
        &mut remote,
        &mut foreign_helper,
    ] {
        assert!(k.running(), "process {} was stopped", k.pid());
    }
    // The stopped job removed itself on SIGTERM; the killed one was cleaned up.
    let left: BTreeSet<u32> = reg.list().unwrap().iter().map(|e| e.pid).collect();
    let want: BTreeSet<u32> = [&cron, &other_repo, &running_user, &remote]
        .iter()
        .map(|k| k.pid())
        .collect();
    assert_eq!(left, want);
    for k in [&mut cron, &mut other_repo, &mut running_user, &mut remote] {
        assert!(k.finish().success());
    }
    assert!(!reg.path().exists());
}

#[test]
fn sigterm_and_sigint_leave_no_entry_behind() {
    use crate::sys::proc::{self, Signal};
    for (signal, sig) in [(Signal::TERM, libc::SIGTERM), (Signal::INT, libc::SIGINT)] {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut kid = Kid::spawn("register", dir.path(), &[(JOB, "busy")], None);
        kid.wait_ready();
        assert_eq!(reg.list().unwrap().len(), 1);
        proc::kill(kid.pid(), signal).unwrap();
        let status = kid.wait_keeping_stdin();
        assert_eq!(status.signal(), Some(sig), "{status}");
        assert!(!reg.path().exists(), "entry left after signal {sig}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
