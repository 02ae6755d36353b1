//! The mount daemon's services beside FUSE: it carries out commands written to the
//! control files and builds the tables read from them. The FUSE adapter calls in here and
//! only translates; this is where "create NAME" becomes a snapshot.
//!
//! This layer sits between `fuse` (above) and `control`, `jobs` and `snapshot` (below).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::control::{
    self, render_finishing, render_finishing_json, render_jobs, render_jobs_json, render_pids,
    render_pids_json, render_status, render_status_json, Command, ControlFile, SnapshotState,
    SnapshotStatus, StatusReport, Usage, VolumeStatus,
};
use crate::jobs::JobServer;
use crate::pids::Registry;
use crate::snapshot::{Engine, SnapState, Snapshot};

/// Something the kernel must forget because it changed behind its back (a snapshot
/// released or created through a control file rather than rmdir or mkdir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The snapshot directory of this name appeared or went away.
    Snapshot(String),
}

type Notify = Box<dyn Fn(Changed) + Send + Sync>;

/// The daemon: the engine plus what the control files need.
pub struct Daemon {
    engine: Arc<Engine>,
    registry: Registry,
    notify: Mutex<Option<Notify>>,
    /// The socket server backup jobs talk to, once started (shared with the threads that
    /// watch job processes started through control/jobs).
    jobs: Arc<Mutex<Option<JobServer>>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch for a nanosecond timestamp.
fn secs(ns: i64) -> u64 {
    (ns.max(0) / 1_000_000_000) as u64
}

impl Daemon {
    /// A daemon over a running engine.
    pub fn new(engine: Arc<Engine>) -> Daemon {
        let registry = Registry::new(engine.store().run_dir());
        Daemon {
            engine,
            registry,
            notify: Mutex::new(None),
            jobs: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts serving backup jobs on `STORE/run/daemon.sock` (the mount calls this once it
    /// serves; [`Daemon::stop_jobs`] at unmount).
    pub fn start_jobs(&self) -> crate::jobs::Result<()> {
        let mut jobs = self.jobs.lock();
        if jobs.is_none() {
            let run = self.engine.store().run_dir();
            *jobs = Some(JobServer::start(self.engine.clone(), &run)?);
        }
        Ok(())
    }

    /// Stops the job server: running jobs fail (nothing of theirs is committed), the socket
    /// goes, and the repository pins kept for snapshot reads are removed.
    pub fn stop_jobs(&self) {
        if let Some(mut server) = self.jobs.lock().take() {
            server.stop();
        }
    }

    /// Reads a snapshot's volume; snarfs whose pre-images were freed after a backup stored
    /// them are read back from that backup's repository (hash-checked).
    pub fn read_snapshot(
        &self,
        snap: &Snapshot,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> crate::jobs::Result<usize> {
        let released = self.jobs.lock().as_ref().map(|s| s.released().clone());
        crate::jobs::read_snapshot(&self.engine, released.as_deref(), snap, volume, offset, buf)
    }

    /// Reads bytes `offset_in_snarf..` of one snarf of a snapshot that a backup stored (after
    /// `read_snapshot` of the engine answered `StoredInBackup`), from the repository.
    pub fn read_released(
        &self,
        snap: &Snapshot,
        volume: &str,
        snarf: u64,
        offset_in_snarf: u64,
        buf: &mut [u8],
    ) -> crate::jobs::Result<()> {
        let released = self.jobs.lock().as_ref().map(|s| s.released().clone());
        match released {
            Some(r) => r.read(snap, volume, snarf, offset_in_snarf, buf),
            None => Err(crate::snapshot::Error::StoredInBackup {
                snapshot: snap.name().to_string(),
                volume: volume.to_string(),
                snarf,
            }
            .into()),
        }
    }

    /// The rows of control/jobs: running jobs and the last few that ended.
    pub fn job_rows(&self) -> Vec<control::JobRow> {
        use crate::jobs::JobPhase;
        let jobs = self
            .jobs
            .lock()
            .as_ref()
            .map(|s| s.jobs())
            .unwrap_or_default();
        jobs.into_iter()
            .map(|j| {
                let (state, reason) = match j.phase {
                    JobPhase::Starting => (control::JobState::Queued, String::new()),
                    JobPhase::Running => (control::JobState::Running, String::new()),
                    JobPhase::Committing => (control::JobState::Finishing, String::new()),
                    JobPhase::Done(id) => {
                        (control::JobState::Done, format!("committed backup {id}"))
                    }
                    JobPhase::Failed(why) => (control::JobState::Failed, why),
                    JobPhase::Cancelled(why) => (control::JobState::Cancelled, why),
                };
                control::JobRow {
                    id: j.id,
                    kind: "backup".into(),
                    pid: (j.pid > 0).then_some(j.pid),
                    state,
                    reason,
                    done_bytes: j.sent_bytes,
                    total_bytes: j.total_bytes,
                    rate_bytes_per_sec: j.rate,
                    started: Some(j.started),
                    snapshot: j.snapshot,
                    repository: j.repo,
                }
            })
            .collect()
    }

    /// Backup jobs connected now.
    pub fn running_jobs(&self) -> usize {
        self.jobs.lock().as_ref().map_or(0, |s| s.running())
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Sets who to tell when something changes behind the kernel's back.
    pub fn on_change(&self, notify: Notify) {
        *self.notify.lock() = Some(notify);
    }

    fn changed(&self, what: Changed) {
        if let Some(n) = self.notify.lock().as_ref() {
            n(what);
        }
    }

    /// Carries out one write to a control file. `Ok` holds the answer read back on the same
    /// descriptor; `Err` the reason the write failed, with the accepted form.
    pub fn control_write(&self, file: ControlFile, input: &[u8]) -> Result<String, String> {
        let command = control::parse(file, input).map_err(|r| r.message())?;
        let refused = |what: String| {
            format!(
                "{file}: {what}\naccepted commands (one per write):\n{}",
                file.usage()
            )
        };
        match command {
            Command::CreateSnapshot { name } => {
                self.engine
                    .take(&name)
                    .map_err(|e| refused(e.to_string()))?;
                self.changed(Changed::Snapshot(name.clone()));
                Ok(format!("created snapshot {name}\n"))
            }
            Command::ReleaseSnapshot { name } => {
                self.engine
                    .release(&name)
                    .map_err(|e| refused(e.to_string()))?;
                self.changed(Changed::Snapshot(name.clone()));
                Ok(format!("released snapshot {name}\n"))
            }
            Command::Backup(b) => {
                if self.jobs.lock().is_none() {
                    return Err(refused("this mount does not serve backup jobs".into()));
                }
                // Refused here, at once, rather than by the job process a moment later.
                self.engine
                    .snapshot(&b.snapshot)
                    .map_err(|e| refused(e.to_string()))?;
                let req = crate::jobs::spawn::SpawnRequest {
                    snapshot: b.snapshot.clone(),
                    repo: b.repo.clone(),
                    volumes: b.volumes.clone(),
                    mode: match b.mode {
                        control::BackupMode::Full => crate::jobs::Mode::Full,
                        control::BackupMode::Incremental => crate::jobs::Mode::Incremental,
                        control::BackupMode::Auto => crate::jobs::Mode::Auto,
                    },
                };
                let exe = std::env::current_exe()
                    .map_err(|e| refused(format!("cannot find the snarf executable: {e}")))?;
                let pid = crate::jobs::spawn::spawn_backup(
                    &exe,
                    self.engine.store().root(),
                    &req,
                    Arc::downgrade(&self.jobs),
                )
                .map_err(|e| refused(format!("cannot start the backup process: {e}")))?;
                Ok(format!(
                    "started backup of snapshot {} as process {pid}; follow it in control/jobs\n",
                    b.snapshot
                ))
            }
            Command::Cancel { job } => match self.jobs.lock().as_ref() {
                Some(server) => server
                    .cancel(&job, "cancelled through control/jobs")
                    .map_err(refused),
                None => Err(refused("this mount does not serve backup jobs".into())),
            },
        }
    }

    /// The text (or JSON) a read of a control file shows.
    pub fn control_read(&self, file: ControlFile) -> String {
        match file {
            ControlFile::Status => render_status(&self.status()),
            ControlFile::StatusJson => render_status_json(&self.status()),
            ControlFile::Snapshot => control::render_snapshots(&self.status().snapshots),
            ControlFile::Jobs => render_jobs(&self.job_rows()),
            ControlFile::JobsJson => render_jobs_json(&self.job_rows()),
            ControlFile::Pids | ControlFile::PidsJson => {
                let rows: Vec<control::PidRow> = match self.registry.list() {
                    Ok(entries) => entries.iter().map(Into::into).collect(),
                    Err(e) => {
                        log::warn!("reading the process registry: {e}");
                        Vec::new()
                    }
                };
                if file.is_json() {
                    render_pids_json(&rows)
                } else {
                    render_pids(&rows)
                }
            }
            ControlFile::Finishing => render_finishing(&[]),
            ControlFile::FinishingJson => render_finishing_json(&[]),
        }
    }

    /// What `control/status` shows.
    pub fn status(&self) -> StatusReport {
        let engine = &self.engine;
        let stats = engine.stats();
        let volumes = engine
            .store()
            .volumes()
            .into_iter()
            .map(|(name, v)| {
                let attr = v.attr();
                VolumeStatus {
                    name,
                    size: attr.size,
                    allocated: attr.allocated,
                }
            })
            .collect();
        let snapshots = engine
            .list()
            .into_iter()
            .map(|info| {
                let held = engine
                    .snapshot(&info.name)
                    .map(|s| engine.preimages_needed_by(&s))
                    .unwrap_or(0);
                let (state, broken_reason) = match info.state {
                    SnapState::Broken(reason) => (SnapshotState::Broken, reason),
                    _ => (SnapshotState::Ok, String::new()),
                };
                SnapshotStatus {
                    name: info.name,
                    created: secs(info.created_ns),
                    state,
                    broken_reason,
                    preimages_held: held,
                }
            })
            .collect();
        StatusReport {
            volumes,
            snapshots,
            preimage_memory: Usage {
                used: stats.cache.mem_used,
                budget: stats.cache.mem_budget,
            },
            preimage_disk: Usage {
                used: stats.cache.disk_used,
                budget: stats.cache.disk_budget,
            },
            throttled_writers: stats.throttled_now,
            throttle_events: stats.throttle_events,
            snapshots_broken: stats.broken,
            running_jobs: self.running_jobs() as u64,
        }
    }
}

/// Seconds since the Unix epoch now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
