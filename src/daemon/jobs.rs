//! Jobs started through `control/jobs`. Each is a `snarf backup` process the daemon starts
//! (so a failing or killed job never hurts the mount) and follows: its pid, its report file
//! (progress, state), its exit. Finished jobs stay listed for a day (at most 100 of them),
//! so a script that started one can read how it ended.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::{Error, Result};
use crate::control::JobRow;
use crate::jobs::report::{self, JobReport};
use crate::jobs::spec::BackupSpec;
use crate::jobs::{BackupRequest, JobState};
use crate::snapshot::Engine;
use crate::sys::proc::{self, Signal};

/// How long finished jobs stay listed.
const KEEP_FINISHED: Duration = Duration::from_secs(24 * 3600);
/// How many finished jobs stay listed at most.
const KEEP_AT_MOST: usize = 100;

/// One job.
#[derive(Debug)]
struct Job {
    id: String,
    child: Option<Child>,
    pid: u32,
    state: JobState,
    reason: String,
    started: u64,
    finished: Option<Instant>,
    snapshot: String,
    repository: PathBuf,
    cancel_requested: bool,
    last_report: Option<JobReport>,
    /// The process type the job registers as.
    kind: crate::pids::ProcType,
}

/// What the daemon needs to start job processes.
#[derive(Debug, Clone)]
pub struct JobLauncher {
    /// The snarf executable.
    pub exe: PathBuf,
    /// The mount point the jobs back up from.
    pub mountpoint: PathBuf,
    /// The store's run folder (reports and logs go under `run/jobs/`).
    pub run_dir: PathBuf,
}

/// The jobs of one mount.
#[derive(Debug)]
pub struct JobManager {
    launcher: Mutex<Option<JobLauncher>>,
    jobs: Mutex<Vec<Job>>,
    seq: Mutex<u64>,
}

impl Default for JobManager {
    fn default() -> Self {
        JobManager {
            launcher: Mutex::new(None),
            jobs: Mutex::new(Vec::new()),
            seq: Mutex::new(0),
        }
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| l.trim_start_matches("snarf: ").to_string())
        })
        .unwrap_or_default()
}

impl JobManager {
    /// Allows starting jobs (the mount knows its mount point only once mounted).
    pub fn set_launcher(&self, launcher: JobLauncher) {
        *self.launcher.lock() = Some(launcher);
    }

    fn new_id(&self) -> String {
        let mut seq = self.seq.lock();
        *seq += 1;
        format!("{}-{}", crate::sys::clock::now_secs(), *seq)
    }

    /// Starts a backup job; returns its id, or why it cannot start.
    pub fn start_backup(
        &self,
        engine: &Engine,
        req: &BackupRequest,
        repository: &Path,
    ) -> Result<String> {
        let launcher = self.launcher.lock().clone().ok_or(Error::NotServing)?;
        if req.converge {
            // A converge backup copies the live volumes: they must exist now.
            for v in req.volumes.iter().flatten() {
                engine.volume(v)?;
            }
        } else {
            let snap = engine.snapshot(&req.snapshot)?;
            for v in req.volumes.iter().flatten() {
                if snap.volume(v).is_none() {
                    return Err(crate::snapshot::Error::NoSuchVolume {
                        snapshot: req.snapshot.clone(),
                        volume: v.clone(),
                    }
                    .into());
                }
            }
        }
        // Refused now, with the reason, if it cannot be opened (a missing folder, an ssh
        // host that is down), rather than by a job that fails later.
        let repo = crate::repo::Handle::open_quiet(&crate::repo::Location::of_arg(repository)?)?;
        if req.converge && repo.format() < 2 {
            return Err(Error::ConvergeNeedsFormat2 {
                repo: repo.location(),
                format: repo.format(),
            });
        }
        let id = self.new_id();
        let dir = report::reports_dir(&launcher.run_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let log_path = report::log_path(&launcher.run_dir, &id);
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(log_path.display().to_string(), e))?;
        let spec = BackupSpec {
            mountpoint: &launcher.mountpoint,
            request: req,
            repository,
            job_id: &id,
        };
        let mut cmd = Command::new(&launcher.exe);
        // The job registers in the process registry with the type its requester gave.
        cmd.args(spec.argv()).envs(spec.env());
        // A job reaches an ssh:// repository through the far snarf this daemon was told of.
        if let Some(p) = crate::repo::backend::ssh::remote_path() {
            cmd.env("SNARF_REMOTE_PATH", p);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("cannot start the backup process", e))?;
        log::info!(
            "job {id}: backup of snapshot \"{}\" to {} started (pid {})",
            req.snapshot,
            repository.display(),
            child.id()
        );
        let job = Job {
            id: id.clone(),
            pid: child.id(),
            child: Some(child),
            state: JobState::Running,
            reason: String::new(),
            started: crate::sys::clock::now_secs(),
            finished: None,
            snapshot: req.snapshot.clone(),
            repository: repository.to_path_buf(),
            cancel_requested: false,
            last_report: None,
            kind: req.kind,
        };
        self.jobs.lock().push(job);
        Ok(id)
    }

    /// Cancels a job: its process is asked to stop (SIGTERM); nothing of it is committed
    /// unless it had already entered finishing, which always completes.
    pub fn cancel(&self, id: &str) -> Result<String> {
        let mut jobs = self.jobs.lock();
        let job = jobs
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or_else(|| Error::NoSuchJob(id.to_string()))?;
        if job.finished.is_some() {
            return Err(Error::JobEnded {
                id: id.to_string(),
                state: job.state,
            });
        }
        job.cancel_requested = true;
        // The pid of a child we started and have not reaped yet, so it cannot have been
        // reused; one that has just exited is reaped at the next refresh.
        let _ = proc::kill(job.pid, Signal::TERM);
        Ok(format!("cancelling job {id}\n"))
    }

    /// Reaps ended processes and refreshes progress; call before showing the jobs.
    pub fn refresh(&self, run_dir: &Path) {
        let mut jobs = self.jobs.lock();
        for job in jobs.iter_mut().filter(|j| j.finished.is_none()) {
            let report_path = report::report_path(run_dir, &job.id);
            if let Some(r) = JobReport::read(&report_path) {
                job.state = match r.state {
                    JobState::Finishing => JobState::Finishing,
                    _ => JobState::Running,
                };
                job.last_report = Some(r);
            }
            let Some(child) = job.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            job.child = None;
            job.finished = Some(Instant::now());
            let report = JobReport::read(&report_path);
            let log = last_line(&report::log_path(run_dir, &job.id));
            // Done means a backup was committed, in the job's own report; an exit status
            // alone is not enough (a process that printed its help also exits 0).
            let committed = report
                .as_ref()
                .filter(|r| r.state == JobState::Done)
                .and_then(|r| r.backup_id.clone());
            if let (true, Some(id)) = (status.success(), &committed) {
                job.state = JobState::Done;
                job.reason = match report.as_ref().and_then(|r| r.pruned.as_deref()) {
                    Some(pruned) => format!("backup {id}; {pruned}"),
                    None => format!("backup {id}"),
                };
            } else if status.success() {
                job.state = JobState::Failed;
                job.reason = format!(
                    "the job process exited without reporting a committed backup; see {}",
                    report::log_path(run_dir, &job.id).display()
                );
            } else if job.cancel_requested {
                job.state = JobState::Cancelled;
                job.reason = "cancelled on request".into();
            } else {
                job.state = JobState::Failed;
                job.reason = report
                    .as_ref()
                    .and_then(|r| r.error.clone())
                    .filter(|e| !e.is_empty())
                    .unwrap_or(if log.is_empty() {
                        format!("the job process ended with {status}")
                    } else {
                        log
                    });
            }
            if let Some(r) = report {
                job.last_report = Some(r);
            }
            log::info!("job {}: {} {}", job.id, job.state.as_str(), job.reason);
        }
        // Forget finished jobs older than a day, and beyond the newest hundred.
        let mut finished: Vec<(Instant, String)> = jobs
            .iter()
            .filter_map(|j| j.finished.map(|t| (t, j.id.clone())))
            .collect();
        finished.sort();
        let excess = finished.len().saturating_sub(KEEP_AT_MOST);
        let doomed: Vec<String> = finished
            .into_iter()
            .enumerate()
            .filter(|(i, (t, _))| *i < excess || t.elapsed() > KEEP_FINISHED)
            .map(|(_, (_, id))| id)
            .collect();
        jobs.retain(|j| !doomed.contains(&j.id));
        for id in doomed {
            let _ = std::fs::remove_file(report::report_path(run_dir, &id));
            let _ = std::fs::remove_file(report::log_path(run_dir, &id));
        }
    }

    /// The rows of `control/jobs`.
    pub fn rows(&self, run_dir: &Path) -> Vec<JobRow> {
        self.refresh(run_dir);
        self.jobs
            .lock()
            .iter()
            .map(|j| {
                let r = j.last_report.as_ref();
                JobRow {
                    id: j.id.clone(),
                    kind: j.kind.as_str().into(),
                    pid: Some(j.pid),
                    state: j.state,
                    reason: j.reason.clone(),
                    done_bytes: r.map_or(0, |r| r.done_bytes),
                    total_bytes: r.and_then(|r| r.total_bytes),
                    rate_bytes_per_sec: if j.finished.is_some() {
                        None
                    } else {
                        r.and_then(|r| r.rate_bytes_per_sec)
                    },
                    started: Some(j.started),
                    snapshot: j.snapshot.clone(),
                    repository: j.repository.display().to_string(),
                }
            })
            .collect()
    }

    /// Jobs whose process is still running.
    pub fn running(&self) -> usize {
        self.jobs
            .lock()
            .iter()
            .filter(|j| j.finished.is_none())
            .count()
    }

    /// Asks every running job to stop (at unmount) and waits for them, up to `limit`.
    pub fn stop_all(&self, limit: Duration) {
        let start = Instant::now();
        let mut jobs = self.jobs.lock();
        for j in jobs.iter_mut().filter(|j| j.child.is_some()) {
            j.cancel_requested = true;
            // Our own unreaped child.
            let _ = proc::kill(j.pid, Signal::TERM);
        }
        for j in jobs.iter_mut() {
            if let Some(child) = j.child.as_mut() {
                while start.elapsed() < limit {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}
