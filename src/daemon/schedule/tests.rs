//! The scheduler against a fake clock and a fake daemon: due times, no second start while a
//! run goes on, one catch-up after downtime (across a restart), bad lines on disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::*;
use crate::sys::clock::FakeClock;

/// 2026-12-02T00:00:00Z.
const DAY0: u64 = 1_796_169_600;
const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// A daemon that records what it was asked and whose jobs end when the test says.
#[derive(Debug, Default)]
struct FakeDaemon {
    snapshots: Mutex<Vec<String>>,
    released: Mutex<Vec<String>>,
    started: Mutex<Vec<BackupRequest>>,
    /// Job id to its outcome.
    jobs: Mutex<BTreeMap<String, Outcome>>,
    refuse_start: Mutex<bool>,
}

impl Runner for FakeDaemon {
    fn take_snapshot(&self, name: &str) -> crate::daemon::Result<()> {
        let mut s = self.snapshots.lock();
        if s.iter().any(|n| n == name) {
            return Err(crate::snapshot::Error::NoSuchSnapshot(name.into()).into());
        }
        s.push(name.into());
        Ok(())
    }
    fn release_snapshot(&self, name: &str) -> crate::daemon::Result<()> {
        self.snapshots.lock().retain(|n| n != name);
        self.released.lock().push(name.into());
        Ok(())
    }
    fn start(&self, request: &BackupRequest) -> crate::daemon::Result<String> {
        if *self.refuse_start.lock() {
            return Err(crate::daemon::Error::NoRepository);
        }
        let mut started = self.started.lock();
        started.push(request.clone());
        let id = format!("job-{}", started.len());
        self.jobs.lock().insert(id.clone(), Outcome::Active);
        Ok(id)
    }
    fn outcome(&self, job: &str) -> Outcome {
        self.jobs
            .lock()
            .get(job)
            .cloned()
            .unwrap_or(Outcome::Unknown)
    }
}

impl FakeDaemon {
    fn end(&self, job: &str, result: &str) {
        self.jobs
            .lock()
            .insert(job.into(), Outcome::Ended(result.into()));
    }
    fn starts(&self) -> usize {
        self.started.lock().len()
    }
}

struct World {
    dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    sched: Scheduler,
    daemon: FakeDaemon,
}

fn world(schedule: &str, at: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join(FILE), schedule).unwrap();
    let clock = Arc::new(FakeClock::at(at));
    let sched = Scheduler::open(dir.path(), clock.clone());
    World {
        dir,
        clock,
        sched,
        daemon: FakeDaemon::default(),
    }
}

impl World {
    fn at(&self, t: u64) {
        self.clock.set(t);
        self.sched.tick(&self.daemon);
    }
    /// A new scheduler on the same store, as after a restart of the daemon.
    fn restart(&mut self) {
        self.sched = Scheduler::open(self.dir.path(), self.clock.clone());
        self.daemon = FakeDaemon::default();
    }
    fn row(&self, line: usize) -> ScheduleRow {
        self.sched
            .rows()
            .into_iter()
            .find(|r| r.line == line)
            .unwrap()
    }
}

#[test]
fn a_line_runs_at_its_due_times_only() {
    let w = world("# nightly\n0 2 * * * backup snapshot=auto repo=/r\n", DAY0);
    w.at(DAY0);
    assert_eq!(
        w.daemon.starts(),
        0,
        "a new line never runs for times before it was seen"
    );
    assert_eq!(w.row(2).next, Some(DAY0 + 2 * HOUR));
    w.at(DAY0 + 2 * HOUR - 1);
    assert_eq!(w.daemon.starts(), 0);
    w.at(DAY0 + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 1);
    let req = w.daemon.started.lock()[0].clone();
    assert_eq!(req.kind, crate::pids::ProcType::Cron);
    assert_eq!(req.snapshot, "cron-20261202-0200-l2");
    assert_eq!(*w.daemon.snapshots.lock(), ["cron-20261202-0200-l2"]);
    // Ticks within the same minute and after it do not start it again.
    w.at(DAY0 + 2 * HOUR + 1);
    w.at(DAY0 + 2 * HOUR + 59);
    assert_eq!(w.daemon.starts(), 1);
    let row = w.row(2);
    assert_eq!(
        (row.last, row.result.as_str()),
        (Some(DAY0 + 2 * HOUR), "running")
    );
    assert_eq!(row.next, Some(DAY0 + DAY + 2 * HOUR));
    // The job ends: its snapshot is released and the result recorded.
    w.daemon.end("job-1", "done: backup 20261202T020001Z");
    w.at(DAY0 + 3 * HOUR);
    assert_eq!(*w.daemon.released.lock(), ["cron-20261202-0200-l2"]);
    assert!(w.daemon.snapshots.lock().is_empty());
    assert_eq!(w.row(2).result, "done: backup 20261202T020001Z");
    w.at(DAY0 + DAY + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 2);
    assert_eq!(w.daemon.started.lock()[1].snapshot, "cron-20261203-0200-l2");
}

#[test]
fn no_second_start_while_the_last_run_goes_on() {
    let w = world("*/10 * * * * backup snapshot=auto\n", DAY0);
    w.at(DAY0);
    w.at(DAY0 + 10 * MIN);
    assert_eq!(w.daemon.starts(), 1);
    w.at(DAY0 + 20 * MIN);
    w.at(DAY0 + 30 * MIN);
    assert_eq!(
        w.daemon.starts(),
        1,
        "a run still going is never started again"
    );
    let row = w.row(1);
    assert!(
        row.result
            .starts_with("running; skipped 2 time(s): still running"),
        "{}",
        row.result
    );
    // Only the one snapshot was taken.
    assert_eq!(w.daemon.snapshots.lock().len(), 1);
    w.daemon.end("job-1", "done: backup B");
    w.at(DAY0 + 35 * MIN);
    assert_eq!(
        w.daemon.starts(),
        1,
        "the skipped times are not made up for"
    );
    w.at(DAY0 + 40 * MIN);
    assert_eq!(w.daemon.starts(), 2);
    assert_eq!(w.row(1).result, "running");
}

#[test]
fn missed_times_are_caught_up_once_after_downtime_and_restart() {
    let mut w = world(
        "0 2 * * * backup snapshot=auto\n@hourly backup frozen\n",
        DAY0,
    );
    w.at(DAY0);
    // At 02:00 the nightly line and the hourly one (once for 01:00 and 02:00).
    w.at(DAY0 + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 2);
    assert!(w.row(2).result.contains("caught up"), "{}", w.row(2).result);
    w.daemon.end("job-1", "done: backup A");
    w.at(DAY0 + 2 * HOUR + MIN);
    assert_eq!(w.daemon.starts(), 2);
    // Down for three days and a bit: a new daemon on the same store.
    w.restart();
    w.clock.set(DAY0 + 3 * DAY + 5 * HOUR + 7 * MIN);
    assert_eq!(
        w.row(1).next,
        Some(DAY0 + DAY + 2 * HOUR),
        "pending: the first missed time"
    );
    w.sched.tick(&w.daemon);
    // Each line once, not once per missed time.
    assert_eq!(w.daemon.starts(), 2);
    assert!(w.row(1).result.contains("caught up"), "{}", w.row(1).result);
    assert_eq!(w.row(1).next, Some(DAY0 + 4 * DAY + 2 * HOUR));
    w.daemon.end("job-1", "done: backup C");
    w.at(DAY0 + 3 * DAY + 5 * HOUR + 8 * MIN);
    assert_eq!(w.row(1).result, "done: backup C (caught up missed times)");
    w.at(DAY0 + 3 * DAY + 5 * HOUR + 30 * MIN);
    assert_eq!(w.daemon.starts(), 2);
    // Only the catch-up's own snapshot was released; the hourly line takes none.
    assert_eq!(*w.daemon.released.lock(), ["cron-20261203-0200-l1"]);
}

#[test]
fn a_run_cut_by_a_restart_is_recorded_and_its_snapshot_released() {
    let mut w = world("0 2 * * * backup snapshot=auto\n", DAY0);
    w.at(DAY0);
    w.at(DAY0 + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 1);
    w.restart();
    w.at(DAY0 + 2 * HOUR + 5 * MIN);
    assert_eq!(*w.daemon.released.lock(), ["cron-20261202-0200-l1"]);
    assert!(w
        .row(1)
        .result
        .starts_with("failed: the mount stopped while it ran"));
    assert_eq!(w.daemon.starts(), 0, "the 02:00 run is not run again");
}

#[test]
fn editing_one_line_keeps_the_history_of_the_others() {
    let w = world(
        "0 2 * * * backup snapshot=auto\n0 3 * * * backup snapshot=auto\n",
        DAY0,
    );
    w.at(DAY0);
    w.at(DAY0 + 3 * HOUR);
    assert_eq!(w.daemon.starts(), 2);
    w.daemon.end("job-1", "done: backup A");
    w.daemon.end("job-2", "done: backup B");
    w.at(DAY0 + 3 * HOUR + MIN);
    // Line 1 edited (and a comment added above): line 2 keeps its record under its new number.
    w.sched
        .replace(
            b"# edited\n0 4 * * * backup snapshot=auto mode=full\n0 3 * * * backup snapshot=auto\n",
        )
        .unwrap();
    w.at(DAY0 + 3 * HOUR + 2 * MIN);
    assert_eq!(w.row(3).result, "done: backup B");
    assert_eq!(w.row(3).last, Some(DAY0 + 3 * HOUR));
    assert_eq!(w.row(2).result, "", "an edited line is a new line");
    assert_eq!(w.row(2).last, None);
    w.at(DAY0 + 4 * HOUR);
    assert_eq!(w.daemon.starts(), 3);
}

#[test]
fn a_bad_replacement_is_refused_whole_and_the_old_schedule_stays() {
    let w = world("0 2 * * * backup snapshot=auto\n", DAY0);
    let e = w
        .sched
        .replace(b"0 3 * * * backup snapshot=auto\n0 25 * * * backup snapshot=auto\n\n7 * * * backup x\n")
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("line 2: 25 is out of range for the hour field"),
        "{text}"
    );
    // Four time fields: the job's first word is read as the fifth.
    assert!(
        text.contains("line 4: the day-of-week field has \"backup\""),
        "{text}"
    );
    assert!(text.contains("the old one stays in force"), "{text}");
    assert_eq!(w.sched.text(), "0 2 * * * backup snapshot=auto\n");
    assert_eq!(w.sched.rows().len(), 1);
    let big = vec![b'#'; MAX_SCHEDULE_BYTES + 1];
    assert!(matches!(
        w.sched.replace(&big),
        Err(ScheduleError::TooLarge(_))
    ));
    assert_eq!(
        w.sched.replace(b"@daily backup snapshot=auto\n").unwrap(),
        1
    );
    assert_eq!(w.sched.text(), "@daily backup snapshot=auto\n");
}

#[test]
fn a_bad_line_edited_on_disk_is_reported_and_the_good_ones_run() {
    let w = world("0 2 * * * backup snapshot=auto\n", DAY0);
    w.at(DAY0);
    // Edited on disk (another inode, as an editor's save makes).
    let path = w.dir.path().join(FILE);
    let tmp = w.dir.path().join("schedule.new");
    std::fs::write(&tmp, "0 2 * * * backup snapshot=auto\n0 2 * * mon-x backup snapshot=auto\n*/5 * * * * backup snapshot=auto\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    w.at(DAY0 + MIN);
    let (errors, _) = w.sched.problems();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 2);
    assert!(
        errors[0].to_string().contains("day-of-week"),
        "{}",
        errors[0]
    );
    w.at(DAY0 + 5 * MIN);
    assert_eq!(w.daemon.starts(), 1, "the good new line runs");
    assert_eq!(w.daemon.started.lock()[0].snapshot, "cron-20261202-0005-l3");
    w.at(DAY0 + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 2);
    // Fixed on disk: the report goes.
    std::fs::write(&tmp, "0 2 * * * backup snapshot=auto\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    w.at(DAY0 + 2 * HOUR + MIN);
    assert!(w.sched.problems().0.is_empty());
}

#[test]
fn a_job_that_cannot_start_is_recorded_and_its_snapshot_released() {
    let w = world("* * * * * backup snapshot=auto\n", DAY0);
    w.at(DAY0);
    *w.daemon.refuse_start.lock() = true;
    w.at(DAY0 + MIN);
    assert_eq!(*w.daemon.released.lock(), ["cron-20261202-0001-l1"]);
    assert!(
        w.row(1)
            .result
            .starts_with("failed to start: no repository given"),
        "{}",
        w.row(1).result
    );
    *w.daemon.refuse_start.lock() = false;
    w.at(DAY0 + 2 * MIN);
    assert_eq!(w.daemon.starts(), 1);
}

#[test]
fn a_clock_set_back_never_runs_a_time_twice() {
    let w = world("0 * * * * backup frozen\n", DAY0);
    w.at(DAY0);
    w.at(DAY0 + HOUR);
    w.daemon.end("job-1", "done: backup A");
    w.at(DAY0 + HOUR + MIN);
    w.at(DAY0 + 30 * MIN);
    w.at(DAY0 + HOUR);
    assert_eq!(w.daemon.starts(), 1);
    w.at(DAY0 + 2 * HOUR);
    assert_eq!(w.daemon.starts(), 2);
}

#[test]
fn runs_that_cannot_be_recorded_do_not_start() {
    let w = world("* * * * * backup snapshot=auto\n", DAY0);
    w.at(DAY0);
    // The state folder is replaced by a file: the record cannot be written.
    let state = w.dir.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "").unwrap();
    w.at(DAY0 + MIN);
    assert_eq!(w.daemon.starts(), 0);
    let (_, notes) = w.sched.problems();
    assert!(
        notes.iter().any(|n| n.contains("cannot be written")),
        "{notes:?}"
    );
    assert!(
        w.row(1).result.starts_with("not started"),
        "{}",
        w.row(1).result
    );
}
