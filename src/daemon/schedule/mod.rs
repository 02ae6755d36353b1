//! The schedule the mount daemon runs: `STORE/schedule` ([`crate::control::schedule`] is
//! its grammar), checked once a second by a thread of the daemon against an injectable
//! [`Clock`]. At a line's due time it takes the line's snapshot (`snapshot=auto`), starts the
//! backup as a job of type `cron` through the [`Runner`] (the daemon), and when that job
//! ends releases the snapshot and records the result.
//!
//! The rules:
//! - Times are UTC (see [`crate::control::cron`]).
//! - A line whose previous run is still going does not start again: the due time is
//!   recorded as skipped ("skipped: still running").
//! - Missed times, anacron-like: due times that passed while the daemon was not running (or
//!   while a run was going) are not run one by one. When a line finds one or more of its due
//!   times past and not dealt with, it runs once, now, and every due time up to now counts as
//!   dealt with. So after a mount that was down over several nights, the nightly backup runs
//!   once at the next mount, never more. A line never seen before (new, or edited, since a
//!   line is known by its text) starts from the instant it is first seen: its times before
//!   that are not caught up. What has been dealt with is recorded durably
//!   ([`runs`]) before a run starts, so a crash never makes a time run twice.
//! - A schedule written through `control/schedule` with a bad line is refused whole and the
//!   old one stays. A file edited on disk is read again when its modification time, size or
//!   inode changes (checked at each tick): its good lines run, its bad lines are shown in
//!   `control/status` and `control/schedule-status`, with their numbers.

pub mod runs;

#[cfg(test)]
mod tests;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::control::schedule::{
    parse_schedule, parse_strict, LineError, ScheduleLine, ScheduleRow, MAX_SCHEDULE_BYTES,
};
use crate::jobs::BackupRequest;
use crate::sys::clock::Clock;
use crate::sys::durable;

use runs::{LineRuns, Running, Runs};

/// The schedule file's name in the store.
pub const FILE: &str = "schedule";

/// How often the scheduler looks at the clock and the file.
pub const TICK: Duration = Duration::from_secs(1);

/// What the scheduler asks of the daemon.
pub trait Runner {
    /// Takes a snapshot of every volume.
    fn take_snapshot(&self, name: &str) -> super::Result<()>;
    /// Releases a snapshot the scheduler took.
    fn release_snapshot(&self, name: &str) -> super::Result<()>;
    /// Starts a backup job; its id.
    fn start(&self, request: &BackupRequest) -> super::Result<String>;
    /// How a job started earlier is doing.
    fn outcome(&self, job: &str) -> Outcome;
}

/// How a scheduled job is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Queued, running or finishing.
    Active,
    /// Ended; how, in words (`done: backup ID`, `failed: why`).
    Ended(String),
    /// Not known to this daemon (it ran under an earlier mount).
    Unknown,
}

/// Why the schedule was not replaced.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Bad lines; the old schedule stays in force.
    #[error("the schedule was not replaced (the old one stays in force): {}", list(.0))]
    BadLines(Vec<LineError>),
    /// More than a schedule may hold.
    #[error("the schedule is {0} bytes long, more than the {MAX_SCHEDULE_BYTES} bytes accepted; the old one stays in force")]
    TooLarge(usize),
    /// A write that does not continue the one before it on the same descriptor.
    #[error("a write at offset {offset} does not continue the {have} bytes written before on this descriptor; write the schedule from its start, in order")]
    OutOfOrder {
        /// Where the write was.
        offset: u64,
        /// What had been written.
        have: usize,
    },
    /// The file could not be written.
    #[error("cannot write the schedule {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::sys::Error,
    },
}

fn list(errors: &[LineError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What identifies the file's version on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
        ino: m.ino(),
    })
}

/// The schedule in force and what is known of its runs.
#[derive(Debug, Default)]
struct State {
    lines: Vec<ScheduleLine>,
    /// Bad lines of the file on disk.
    errors: Vec<LineError>,
    stamp: Option<Stamp>,
    runs: Runs,
    /// Problems with the file or the run records, for control/status.
    notes: Vec<String>,
}

/// The scheduler of one mount.
#[derive(Debug)]
pub struct Scheduler {
    path: PathBuf,
    runs_path: PathBuf,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Scheduler {
    /// The scheduler of the store at `root`: its schedule file and run records read.
    pub fn open(root: &Path, clock: Arc<dyn Clock>) -> Scheduler {
        let (runs, note) = Runs::load(&runs::path(root));
        let s = Scheduler {
            path: root.join(FILE),
            runs_path: runs::path(root),
            clock,
            state: Mutex::new(State {
                runs,
                notes: note.into_iter().collect(),
                ..Default::default()
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        };
        s.reload(&mut s.state.lock());
        s
    }

    /// The clock it runs by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Reads the file on disk again if it changed since it was last read.
    fn reload(&self, st: &mut State) {
        let now = stamp(&self.path);
        if now == st.stamp {
            return;
        }
        st.stamp = now;
        st.notes.retain(|n| !n.starts_with("schedule file"));
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                // Keep what was in force rather than stop every line.
                st.notes.push(format!(
                    "schedule file {} cannot be read ({e}); the lines read before stay in force",
                    self.path.display()
                ));
                return;
            }
        };
        let parsed = parse_schedule(&text);
        for e in &parsed.errors {
            log::warn!("{}: {e}; the line does not run", self.path.display());
        }
        st.lines = parsed.lines;
        st.errors = parsed.errors;
    }

    /// The schedule file as it is on disk (empty if there is none).
    pub fn text(&self) -> String {
        std::fs::read(&self.path)
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default()
    }

    /// Replaces the schedule with `text`, which must be wholly good; returns how many job
    /// lines it has. The file is replaced atomically and durably.
    pub fn replace(&self, text: &[u8]) -> Result<usize, ScheduleError> {
        if text.len() > MAX_SCHEDULE_BYTES {
            return Err(ScheduleError::TooLarge(text.len()));
        }
        let lines = parse_strict(text).map_err(ScheduleError::BadLines)?;
        let mut st = self.state.lock();
        durable::replace(&self.path, text, durable::PRIVATE).map_err(|source| {
            ScheduleError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        st.stamp = stamp(&self.path);
        st.errors.clear();
        st.notes.retain(|n| !n.starts_with("schedule file"));
        let n = lines.len();
        // Records of lines gone are dropped at the next tick, not here: a schedule written in
        // several writes (a shell's echos) is whole again by then and keeps its history.
        st.lines = lines;
        drop(st);
        self.wake.notify_all();
        Ok(n)
    }

    /// Drops the records of lines no longer in the schedule (a run still going keeps its
    /// record until it ends, so its snapshot is released).
    fn forget_gone(&self, st: &mut State) -> bool {
        let State { lines, runs, .. } = st;
        let before = runs.lines.len();
        runs.lines
            .retain(|text, r| r.running.is_some() || lines.iter().any(|l| &l.text == text));
        before != runs.lines.len()
    }

    fn save(&self, st: &mut State) -> bool {
        st.notes.retain(|n| !n.starts_with("run records"));
        match st.runs.save(&self.runs_path) {
            Ok(()) => true,
            Err(e) => {
                let why = format!(
                    "run records {} cannot be written ({}); scheduled jobs do not start until they can",
                    self.runs_path.display(),
                    crate::chain::ErrorChain::chain(&e)
                );
                log::error!("{why}");
                st.notes.push(why);
                false
            }
        }
    }

    /// One look at the clock: ends of runs are recorded, due lines started.
    pub fn tick(&self, runner: &dyn Runner) {
        let now = self.clock.now_secs();
        let mut st = self.state.lock();
        self.reload(&mut st);
        let mut changed = self.finish_runs(&mut st, runner);
        changed |= self.forget_gone(&mut st);
        let lines = st.lines.clone();
        for line in &lines {
            changed |= self.consider(&mut st, line, now, runner);
        }
        if changed {
            self.save(&mut st);
        }
    }

    /// Records the end of every run that ended (also of lines since removed).
    fn finish_runs(&self, st: &mut State, runner: &dyn Runner) -> bool {
        let mut changed = false;
        for (text, r) in st.runs.lines.iter_mut() {
            let Some(run) = r.running.clone() else {
                continue;
            };
            let result = match runner.outcome(&run.job) {
                Outcome::Active => continue,
                Outcome::Ended(result) => result,
                Outcome::Unknown => {
                    "failed: the mount stopped while it ran; nothing of it was committed unless it had begun finishing (see snarf finishing)".to_string()
                }
            };
            if let Some(snap) = &run.snapshot {
                release(runner, snap);
            }
            log::info!("schedule: {text:?}: job {} {result}", run.job);
            r.result = if run.caught_up {
                format!("{result} (caught up missed times)")
            } else {
                result
            };
            r.running = None;
            changed = true;
        }
        changed
    }

    /// Starts `line` if one of its due times has come; whether its record changed.
    fn consider(&self, st: &mut State, line: &ScheduleLine, now: u64, runner: &dyn Runner) -> bool {
        let mut changed = false;
        let r = st.runs.lines.entry(line.text.clone()).or_insert_with(|| {
            changed = true;
            LineRuns {
                seen: now,
                ..Default::default()
            }
        });
        let from = r.handled_until.unwrap_or(r.seen);
        let Some(due) = line.when.next_after(from).filter(|d| *d <= now) else {
            return changed;
        };
        // Every due time up to now is dealt with by what happens next: one run, or a skip.
        r.handled_until = Some(now);
        let missed = line.when.next_after(due).is_some_and(|d| d <= now);
        if let Some(run) = &r.running {
            r.skipped += 1;
            r.last_skipped = Some(now);
            log::info!(
                "schedule line {}: skipped: still running (job {})",
                line.number,
                run.job
            );
            return true;
        }
        let snapshot = line
            .job
            .auto_snapshot
            .then(|| snapshot_name(due, line.number));
        r.running = Some(Running {
            job: String::new(),
            snapshot: snapshot.clone(),
            caught_up: missed,
        });
        r.last_run = Some(now);
        r.skipped = 0;
        r.last_skipped = None;
        r.result = "starting".into();
        // Durable before anything starts, so a crash cannot make this time run again.
        if !self.save(st) {
            let r = st.runs.lines.entry(line.text.clone()).or_default();
            r.running = None;
            r.result = "not started: its run could not be recorded (see control/status)".into();
            return false;
        }
        let started = (|| {
            let mut request = line.job.request.clone();
            if let Some(name) = &snapshot {
                runner.take_snapshot(name)?;
                request.snapshot = name.clone();
            }
            runner.start(&request).inspect_err(|_| {
                if let Some(name) = &snapshot {
                    release(runner, name);
                }
            })
        })();
        let r = st.runs.lines.entry(line.text.clone()).or_default();
        match started {
            Ok(job) => {
                log::info!(
                    "schedule line {}: started job {job}{}",
                    line.number,
                    if missed {
                        " (catching up missed times)"
                    } else {
                        ""
                    }
                );
                r.result = if missed {
                    "running (caught up missed times)".into()
                } else {
                    "running".into()
                };
                if let Some(run) = r.running.as_mut() {
                    run.job = job;
                }
            }
            Err(e) => {
                let why = crate::chain::ErrorChain::chain(&e).to_string();
                log::warn!("schedule line {}: not started: {why}", line.number);
                r.running = None;
                r.result = format!("failed to start: {why}");
            }
        }
        true
    }

    /// The rows of `control/schedule-status`.
    pub fn rows(&self) -> Vec<ScheduleRow> {
        let now = self.clock.now_secs();
        let mut st = self.state.lock();
        self.reload(&mut st);
        st.lines
            .iter()
            .map(|l| {
                let r = st.runs.lines.get(&l.text);
                let from = r.map_or(now, |r| r.handled_until.unwrap_or(r.seen));
                // A due time not yet dealt with runs at the next tick; else the next one.
                let pending = l.when.next_after(from).filter(|d| *d <= now);
                let mut result = r.map(|r| r.result.clone()).unwrap_or_default();
                if let Some(r) = r.filter(|r| r.skipped > 0) {
                    result.push_str(&format!(
                        "; skipped {} time(s): still running, last at {}",
                        r.skipped,
                        crate::control::table::time(r.last_skipped)
                    ));
                }
                ScheduleRow {
                    line: l.number,
                    next: pending.or_else(|| l.when.next_after(now)),
                    last: r.and_then(|r| r.last_run),
                    result,
                    text: l.text.clone(),
                }
            })
            .collect()
    }

    /// The bad lines of the file on disk and other problems, for control/status.
    pub fn problems(&self) -> (Vec<LineError>, Vec<String>) {
        let mut st = self.state.lock();
        self.reload(&mut st);
        (st.errors.clone(), st.notes.clone())
    }

    /// Waits up to `limit` (less if woken); false once the scheduler is stopped.
    pub fn wait(&self, limit: Duration) -> bool {
        let mut stop = self.stop.lock();
        if !*stop {
            self.wake.wait_for(&mut stop, limit);
        }
        !*stop
    }

    /// Stops the thread running [`Scheduler::tick`] (at unmount).
    pub fn stop(&self) {
        *self.stop.lock() = true;
        self.wake.notify_all();
    }
}

/// The snapshot a run takes: `cron-20261202-0200-l3` for line 3 due at 02:00 UTC.
fn snapshot_name(due: u64, line: usize) -> String {
    let t = crate::sys::clock::utc(due);
    format!(
        "{}{}-l{line}",
        runs::SNAPSHOT_PREFIX,
        t.strftime("%Y%m%d-%H%M")
    )
}

fn release(runner: &dyn Runner, name: &str) {
    if let Err(e) = runner.release_snapshot(name) {
        log::warn!(
            "schedule: releasing snapshot {name}: {}",
            crate::chain::ErrorChain::chain(&e)
        );
    }
}
