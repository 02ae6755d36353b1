//! Carrying out the idle policy: [`Registry::stop_idle`] gathers the entries and processes,
//! asks [`plan_stop_idle`] whom to stop, and [`terminate`] sends SIGTERM, waits a grace
//! period, then SIGKILL. Signals go through a pidfd opened before the start time is checked,
//! so a pid reused in the meantime is never signalled.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::idle::{plan_stop_idle, IdleSweep, StopReason, Victim};
use super::procfs::{self, ProcFs, ProcessSource};
use super::registry::Registry;
use super::{Error, Result};
use crate::sys::proc::{self, Signal};

/// How [`Registry::stop_idle`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOptions {
    /// How long a process has to exit after SIGTERM before it gets SIGKILL.
    pub grace: Duration,
    /// Pids never to stop, besides the caller's family (pass the mount daemon's).
    pub protect: Vec<u32>,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            grace: Duration::from_secs(5),
            protect: Vec::new(),
        }
    }
}

/// What happened to one process the policy chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the grace period and was killed.
    Killed,
    /// It had already exited, or its pid now belongs to another process: left alone.
    AlreadyGone,
    /// It could not be signalled (for example it belongs to another user).
    Failed(String),
}

/// One process the policy chose, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Process id.
    pub pid: u32,
    /// Why it was chosen.
    pub reason: StopReason,
    /// What happened.
    pub outcome: Outcome,
}

impl Registry {
    /// Before a new `user` job on `repo` starts its work: stops older idle `user` jobs on
    /// the same repository and leftover helpers of this store (see [`super::idle`]), then
    /// removes the entries of whatever died.
    pub fn stop_idle(&self, repo: &str, opts: &StopOptions) -> Result<Vec<Stopped>> {
        self.stop_idle_among(repo, opts, &ProcFs)
    }

    /// [`Registry::stop_idle`] over the processes `source` lists instead of all of /proc.
    pub fn stop_idle_among(
        &self,
        repo: &str,
        opts: &StopOptions,
        source: &dyn ProcessSource,
    ) -> Result<Vec<Stopped>> {
        let entries = self.list()?;
        let processes = source
            .processes()
            .map_err(|e| Error::proc("listing processes", e))?;
        // The caller's ancestors come from the real /proc too, whatever `source` says, so
        // a partial process list can never make the policy stop our own parent.
        let mut protected = opts.protect.clone();
        protected.extend(own_ancestors());
        let victims = plan_stop_idle(&IdleSweep {
            repo,
            run_dir: self.run_dir(),
            caller: std::process::id(),
            entries: &entries,
            processes: &processes,
            protected: &protected,
            uid: proc::euid(),
            pid_ns: procfs::self_pid_namespace(),
        });
        let stopped = terminate(&victims, opts.grace);
        for s in &stopped {
            log::info!(
                "stopped process {} ({:?}): {:?}",
                s.pid,
                s.reason,
                s.outcome
            );
        }
        self.cleanup()?;
        Ok(stopped)
    }
}

/// Parent, grandparent, ... of this process, from /proc.
fn own_ancestors() -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = std::process::id();
    while let Ok(Some(stat)) = procfs::read_stat(pid) {
        if stat.ppid == 0 || out.contains(&stat.ppid) {
            break;
        }
        out.push(stat.ppid);
        pid = stat.ppid;
    }
    out
}

/// A process held for signalling.
enum Target {
    /// A pidfd: always refers to the process it was opened for.
    Fd(OwnedFd),
    /// Kernels before 5.3 have no pidfd; the start time is re-checked before each signal.
    Pid(u32, u64),
}

impl Target {
    /// Opens the process and checks it is still the one the policy saw.
    fn open(v: &Victim) -> io::Result<Option<Target>> {
        let target = match proc::pidfd_open(v.pid) {
            Ok(fd) => Target::Fd(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Target::Pid(v.pid, v.start_time),
            Err(e) => return Err(e),
        };
        // Checked after opening: if the start time still matches now, the pidfd refers to
        // the very process the policy chose.
        Ok(same_process(v.pid, v.start_time).then_some(target))
    }

    fn signal(&self, sig: Signal) -> io::Result<()> {
        match self {
            Target::Fd(fd) => proc::pidfd_signal(fd, sig),
            Target::Pid(pid, start) => {
                if !same_process(*pid, *start) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                proc::kill(*pid, sig)
            }
        }
    }

    fn exited(&self) -> bool {
        match self {
            Target::Fd(fd) => proc::pidfd_exited(fd),
            Target::Pid(pid, start) => !same_process(*pid, *start),
        }
    }
}

fn same_process(pid: u32, start_time: u64) -> bool {
    matches!(procfs::read_stat(pid), Ok(Some(s)) if !s.exited() && s.start_time == start_time)
}

/// SIGTERM to every victim, SIGKILL to those still there after `grace`. Never panics and
/// never signals a process other than the one each victim names.
pub fn terminate(victims: &[Victim], grace: Duration) -> Vec<Stopped> {
    let mut results: Vec<Stopped> = Vec::with_capacity(victims.len());
    let mut pending: Vec<(usize, Target)> = Vec::new();
    for v in victims {
        let outcome = match Target::open(v) {
            Ok(None) => Outcome::AlreadyGone,
            Err(e) => Outcome::Failed(format!("cannot open process {}: {e}", v.pid)),
            Ok(Some(t)) => match t.signal(Signal::TERM) {
                Ok(()) => {
                    pending.push((results.len(), t));
                    Outcome::Terminated
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Outcome::AlreadyGone,
                Err(e) => Outcome::Failed(format!("cannot send SIGTERM to {}: {e}", v.pid)),
            },
        };
        results.push(Stopped {
            pid: v.pid,
            reason: v.reason,
            outcome,
        });
    }
    wait_for_exit(&mut pending, grace);
    for (i, t) in &pending {
        results[*i].outcome = match t.signal(Signal::KILL) {
            Ok(()) => Outcome::Killed,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Outcome::Terminated,
            Err(e) => Outcome::Failed(format!("cannot send SIGKILL to {}: {e}", results[*i].pid)),
        };
    }
    // SIGKILL cannot be refused; wait briefly so the caller starts with the victims gone.
    wait_for_exit(&mut pending, Duration::from_secs(2));
    results
}

/// Drops targets from `pending` as they exit, until none is left or `limit` passes.
fn wait_for_exit(pending: &mut Vec<(usize, Target)>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        pending.retain(|(_, t)| !t.exited());
        if pending.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn victim(child: &std::process::Child) -> Victim {
        let start_time = procfs::read_stat(child.id()).unwrap().unwrap().start_time;
        Victim {
            pid: child.id(),
            start_time,
            reason: StopReason::Helper,
        }
    }

    #[test]
    fn sigterm_then_sigkill() {
        let mut polite = Command::new("sleep").arg("60").spawn().unwrap();
        // A shell that ignores SIGTERM must be killed.
        let mut stubborn = Command::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let vs = [victim(&polite), victim(&stubborn)];
        let t0 = Instant::now();
        let out = terminate(&vs, Duration::from_millis(300));
        assert_eq!(out[0].outcome, Outcome::Terminated);
        assert_eq!(out[1].outcome, Outcome::Killed);
        assert!(t0.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(polite.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(stubborn.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn wrong_start_time_is_never_signalled() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let mut v = victim(&child);
        v.start_time += 1;
        let out = terminate(&[v], Duration::from_millis(50));
        assert_eq!(out[0].outcome, Outcome::AlreadyGone);
        // Still running: try_wait sees no exit.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn exited_process_is_already_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let v = victim(&child);
        child.wait().unwrap();
        let out = terminate(&[v], Duration::from_millis(50));
        assert_eq!(out[0].outcome, Outcome::AlreadyGone);
    }
}
