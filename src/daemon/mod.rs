//! The mount daemon's services beside FUSE: it carries out commands written to the
//! control files and builds the tables read from them. The FUSE adapter calls in here and
//! only translates; this is where "create NAME" becomes a snapshot, and [`policy`] is where
//! the mount's rules (who may command it, what owner and mode volumes keep,
//! how much a reader of `backups/` caches) are decided.
//!
//! This layer sits between `fuse` (above) and `control`, `jobs` and `snapshot` (below).

pub mod error;
pub mod jobs;
mod metrics;
pub mod policy;
pub mod record;
pub mod restore;
pub mod schedule;

pub use error::{Error, Result};

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::chain::ErrorChain;
use crate::control::{
    self, render_finishing, render_finishing_json, render_jobs, render_jobs_json, render_pids,
    render_pids_json, render_status, render_status_json, Command, ControlFile, SnapshotState,
    SnapshotStatus, StatusReport, Usage, VolumeStatus,
};
use crate::jobs::{JobPhase, JobServer, JobState};
use crate::pids::Registry;
use crate::repo::handle::VolumeReader;
use crate::repo::{self, BackupInfo, Handle, Location};
use crate::snapshot::{Engine, SnapState, Snapshot};

/// Something the kernel must forget because it changed behind its back (a snapshot
/// released or created through a control file rather than rmdir or mkdir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The snapshot directory of this name appeared or went away.
    Snapshot(String),
}

type Notify = Box<dyn Fn(Changed) + Send + Sync>;

/// The daemon: the engine plus what the control files and `backups/` need.
pub struct Daemon {
    engine: Arc<Engine>,
    registry: Registry,
    notify: Mutex<Option<Notify>>,
    /// The default repository as configured (a local path or an `ssh://` URL, read by
    /// [`Location::of_arg`]), if one is.
    repo_path: Option<PathBuf>,
    /// The repository, once it could be opened: one handle, so every reader of
    /// `backups/` shares one connection to a remote repository.
    repo: Mutex<Option<Handle>>,
    /// The last failed attempt to open it (when, and the error shown), so readers of a
    /// repository that is down fail at once instead of each waiting for a new connection.
    repo_failure: Mutex<Option<(std::time::Instant, String)>>,
    /// Repositories jobs have used, for `control/finishing`.
    known_repos: Mutex<std::collections::BTreeSet<PathBuf>>,
    /// Jobs started through `control/jobs`.
    jobs: jobs::JobManager,
    /// The socket server backup jobs talk to (on `STORE/run/daemon.sock`), once started.
    job_server: Mutex<Option<JobServer>>,
    /// The job server's released-snarf tables, kept apart so snapshot reads (a hot path)
    /// take only a shared lock.
    released: parking_lot::RwLock<Option<Arc<crate::jobs::Released>>>,
    /// Jobs of an earlier mount that were still running when it stopped, with what
    /// became of them.
    interrupted: Vec<String>,
    /// How `live/` files go through the kernel.
    live_io: FileIo,
    /// How `snapshots/` files go through the kernel.
    snapshot_io: FileIo,
    /// The schedule it runs.
    scheduler: Arc<schedule::Scheduler>,
    /// The thread running the schedule, once started.
    scheduler_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Live restores this mount runs.
    restores: restore::Restores,
}

/// What a control file descriptor has written so far, for files whose writes build one
/// text (`control/schedule`): the FUSE layer keeps one per open file and hands it back.
#[derive(Debug, Default)]
pub struct ControlDraft(Vec<u8>);

/// How the kernel passes reads and writes of one kind of file to the daemon.
///
/// For `live/`: with `Direct` (FOPEN_DIRECT_IO) every write(2) of up to the mount's
/// max_write (1 MiB) reaches the daemon as one request, so it is entirely before or
/// entirely after a snapshot. With `Buffered` the kernel may cut a write that is not
/// page-aligned into several requests, and a snapshot taken meanwhile can hold only a part
/// of it; only writes that returned before the snapshot are then guaranteed whole.
///
/// For `snapshots/`: with `Direct` each read(2) goes to the daemon, which
/// reads the store's own (cached) pages, so the same bytes are not cached a second time
/// as FUSE pages and a read never waits for the kernel to reclaim room for them first;
/// `Buffered` keeps them in the page cache (a second read of the same file is served by
/// the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FileIo {
    /// Every request goes to the daemon (FOPEN_DIRECT_IO); mmap still works on kernels
    /// with FUSE_DIRECT_IO_ALLOW_MMAP (6.6+).
    #[default]
    Direct,
    /// Through the kernel's page cache.
    Buffered,
}

impl FileIo {
    /// The name used on the command line and in mount options.
    pub fn name(self) -> &'static str {
        match self {
            FileIo::Direct => "direct",
            FileIo::Buffered => "buffered",
        }
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

/// The store folder of an engine.
fn engine_root(engine: &Engine) -> &Path {
    engine.store().root()
}

/// Seconds since the Unix epoch for a nanosecond timestamp.
fn secs(ns: i64) -> u64 {
    (ns.max(0) / 1_000_000_000) as u64
}

impl Daemon {
    /// A daemon over a running engine.
    pub fn new(engine: Arc<Engine>) -> Daemon {
        let registry = Registry::new(engine.store().run_dir());
        let repo_path = engine
            .store()
            .settings()
            .repository
            .as_ref()
            .map(PathBuf::from);
        Daemon {
            registry,
            notify: Mutex::new(None),
            repo_path,
            repo: Mutex::new(None),
            repo_failure: Mutex::new(None),
            known_repos: Mutex::new(Default::default()),
            jobs: jobs::JobManager::default(),
            job_server: Mutex::new(None),
            released: parking_lot::RwLock::new(None),
            interrupted: Vec::new(),
            live_io: FileIo::default(),
            snapshot_io: FileIo::default(),
            scheduler: Arc::new(schedule::Scheduler::open(
                engine_root(&engine),
                Arc::new(crate::sys::clock::SystemClock),
            )),
            scheduler_thread: Mutex::new(None),
            restores: restore::Restores::default(),
            engine,
        }
    }

    /// Runs the schedule by `clock` instead of the system's (tests inject a fake one).
    pub fn with_clock(mut self, clock: Arc<dyn crate::sys::clock::Clock>) -> Daemon {
        self.scheduler = Arc::new(schedule::Scheduler::open(engine_root(&self.engine), clock));
        self
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<schedule::Scheduler> {
        &self.scheduler
    }

    /// Starts the thread that runs the schedule (the mount calls this once it serves;
    /// [`Daemon::stop_scheduler`] at unmount, before the jobs are stopped).
    pub fn start_scheduler(self: &Arc<Self>) {
        let mut slot = self.scheduler_thread.lock();
        if slot.is_some() {
            return;
        }
        let daemon = Arc::downgrade(self);
        let scheduler = self.scheduler.clone();
        let spawned = std::thread::Builder::new()
            .name("schedule".into())
            .spawn(move || loop {
                match daemon.upgrade() {
                    Some(d) => scheduler.tick(&*d),
                    None => break,
                }
                if !scheduler.wait(schedule::TICK) {
                    break;
                }
            });
        match spawned {
            Ok(handle) => *slot = Some(handle),
            Err(e) => {
                log::error!("cannot start the schedule's thread: {e}; the schedule does not run")
            }
        }
    }

    /// Stops the schedule's thread and waits for it.
    pub fn stop_scheduler(&self) {
        self.scheduler.stop();
        if let Some(t) = self.scheduler_thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Finds the jobs an earlier mount left running (their report files say running or
    /// finishing) and marks them failed with what happened, for `control/status`: a job
    /// loses its connection with the mount, so it abandons its backup, and nothing it wrote
    /// is committed; one that had begun finishing is committed or not at the repository's
    /// next open, as finishing always is.
    pub fn note_interrupted_jobs(&mut self) {
        use crate::jobs::report::{self, JobReport};
        use crate::jobs::JobState;
        let run = self.engine.store().run_dir();
        let Ok(entries) = std::fs::read_dir(report::reports_dir(&run)) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            let Some(mut r) = JobReport::read(&path) else {
                continue;
            };
            let why = match r.state {
                JobState::Running | JobState::Queued => "the mount stopped while it ran; its backup was abandoned and nothing of it was committed",
                JobState::Finishing => "the mount stopped while it committed; the repository completes or discards that commit at its next open (see snarf finishing)",
                JobState::Done | JobState::Failed | JobState::Cancelled => continue,
            };
            r.state = JobState::Failed;
            r.error = Some(why.to_string());
            if let Err(err) = r.write(&path) {
                log::warn!(
                    "could not mark job {id} failed in {}: {err}",
                    path.display()
                );
            }
            log::warn!("job {id}: {why}");
            self.interrupted.push(format!("{id}: {why}"));
        }
        self.interrupted.sort();
    }

    /// Starts serving backup jobs on `STORE/run/daemon.sock` (the mount calls this before it
    /// serves; [`Daemon::stop_job_server`] at unmount).
    pub fn start_job_server(&self) -> crate::jobs::Result<()> {
        let mut server = self.job_server.lock();
        if server.is_none() {
            let run = self.engine.store().run_dir();
            let s = JobServer::start(self.engine.clone(), &run)?;
            s.set_default_repo(self.repo_path.clone());
            *self.released.write() = Some(s.released().clone());
            *server = Some(s);
        }
        Ok(())
    }

    /// Stops the job server: jobs still connected fail (nothing of theirs is committed),
    /// the socket goes, and the repository pins kept for snapshot reads are removed.
    pub fn stop_job_server(&self) {
        if let Some(mut server) = self.job_server.lock().take() {
            *self.released.write() = None;
            server.stop();
        }
    }

    /// Reads a snapshot's volume; snarfs whose pre-images were freed after a backup stored
    /// them are read back from that backup's repository (hash-checked). The one snapshot
    /// read the mount makes.
    pub fn read_snapshot(
        &self,
        snap: &Snapshot,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> crate::jobs::Result<usize> {
        let released = self.released.read().clone();
        self.engine
            .read_snapshot_through(snap, volume, offset, buf, released.as_deref())
    }

    /// Backup jobs connected to the job server now (started here or from a shell).
    pub fn connected_jobs(&self) -> usize {
        self.job_server.lock().as_ref().map_or(0, |s| s.running())
    }

    /// The rows of `control/jobs`: the jobs started here, then those started from a shell
    /// (`snarf backup MOUNTPOINT ...`) that are connected to the job socket now.
    pub fn job_rows(&self) -> Vec<control::JobRow> {
        let mut rows = self.jobs.rows(&self.engine.store().run_dir());
        rows.extend(self.restores.rows());
        let connected = self
            .job_server
            .lock()
            .as_ref()
            .map(|s| s.jobs())
            .unwrap_or_default();
        let registered = if connected.is_empty() {
            Vec::new()
        } else {
            self.registry.list().unwrap_or_default()
        };
        for j in connected {
            if j.phase.ended() || j.pid == 0 || rows.iter().any(|r| r.pid == Some(j.pid)) {
                continue;
            }
            let kind = registered
                .iter()
                .find(|e| e.pid == j.pid)
                .map_or("user", |e| e.kind.as_str());
            rows.push(control::JobRow {
                id: j.id,
                kind: kind.into(),
                pid: Some(j.pid),
                state: match j.phase {
                    JobPhase::Starting => JobState::Queued,
                    JobPhase::Committing => JobState::Finishing,
                    _ => JobState::Running,
                },
                reason: String::new(),
                done_bytes: j.sent_bytes,
                total_bytes: j.total_bytes,
                rate_bytes_per_sec: j.rate,
                started: Some(j.started),
                snapshot: j.snapshot,
                repository: j.repo,
            });
        }
        rows
    }

    /// Uses `path` as the default repository instead of the store's setting.
    pub fn with_repository(mut self, path: Option<PathBuf>) -> Daemon {
        if path.is_some() {
            self.repo_path = path;
        }
        self
    }

    /// Sets how `live/` files go through the kernel (see [`FileIo`]).
    pub fn with_live_io(mut self, live_io: FileIo) -> Daemon {
        self.live_io = live_io;
        self
    }

    /// How `live/` files go through the kernel.
    pub fn live_io(&self) -> FileIo {
        self.live_io
    }

    /// Sets how `snapshots/` files go through the kernel (see [`FileIo`]).
    pub fn with_snapshot_io(mut self, snapshot_io: FileIo) -> Daemon {
        self.snapshot_io = snapshot_io;
        self
    }

    /// How `snapshots/` files go through the kernel.
    pub fn snapshot_io(&self) -> FileIo {
        self.snapshot_io
    }

    /// The default repository's path, if one is configured.
    pub fn repository_path(&self) -> Option<&Path> {
        self.repo_path.as_deref()
    }

    /// The default repository, opened on first use (it may be created after the mount).
    /// A handle whose connection dropped (an ssh repository whose host went away) is let
    /// go and a new connection made; while that fails, callers get the last failure for
    /// [`policy::REPO_RETRY`] without a new attempt.
    pub fn repository(&self) -> Result<Option<Handle>, repo::Error> {
        let Some(path) = &self.repo_path else {
            return Ok(None);
        };
        let mut slot = self.repo.lock();
        if let Some(lost) = slot.as_ref().and_then(Handle::connection_lost) {
            log::warn!("the repository's connection was lost: {}", lost.chain());
            // Dropping it reaps its ssh (the reader thread already has, once the pipe ended).
            *slot = None;
            *self.repo_failure.lock() = Some((std::time::Instant::now(), lost.chain().to_string()));
            return Err(lost);
        }
        if let Some(h) = slot.as_ref() {
            return Ok(Some(h.clone()));
        }
        let location = Location::of_arg(path)?;
        if let Some((when, why)) = self.repo_failure.lock().as_ref() {
            if when.elapsed() < policy::REPO_RETRY {
                return Err(repo::Error::Connection {
                    repo: location.to_string(),
                    why: format!(
                        "unreachable at the last attempt, {} s ago: {why}",
                        when.elapsed().as_secs()
                    ),
                    fix: format!(
                        "snarf tries again after {} s; check the network and the far host",
                        policy::REPO_RETRY.as_secs()
                    ),
                });
            }
        }
        match Handle::open(&location) {
            Ok(h) => {
                if self.repo_failure.lock().take().is_some() {
                    log::info!("the repository {location} is reachable again");
                }
                *slot = Some(h.clone());
                Ok(Some(h))
            }
            Err(e) => {
                if matches!(e, repo::Error::Connection { .. }) {
                    *self.repo_failure.lock() =
                        Some((std::time::Instant::now(), e.chain().to_string()));
                }
                Err(e)
            }
        }
    }

    /// What `control/status` says of the default repository: where it is, whether it can
    /// be read now, and why not.
    pub fn repository_status(&self) -> Option<control::RepositoryStatus> {
        let path = self.repo_path.as_ref()?;
        let location = Location::of_arg(path)
            .map(|l| l.to_string())
            .unwrap_or_else(|_| path.display().to_string());
        let (state, reason) = match self.repository() {
            Ok(_) => ("ok", String::new()),
            Err(e @ repo::Error::Connection { .. }) => ("unreachable", e.chain().to_string()),
            Err(e) => ("unreadable", e.chain().to_string()),
        };
        Some(control::RepositoryStatus {
            location,
            state: state.into(),
            reason,
        })
    }

    /// The committed backups of the default repository, oldest first. Any finishing a
    /// job left behind is completed first, so `backups/` never shows half a commit.
    pub fn backups(&self) -> Result<Vec<BackupInfo>, repo::Error> {
        let Some(repo) = self.repository()? else {
            return Ok(Vec::new());
        };
        repo.complete_pending()?;
        repo.list_backups()
    }

    /// Opens volume `volume` of backup `id` of the default repository for a reader of
    /// `backups/`, with the read cache each open file gets ([`policy::BACKUP_READ_CACHE`]);
    /// `None` when no repository is configured.
    pub fn open_backup_volume(
        &self,
        id: &str,
        volume: &str,
    ) -> Result<Option<VolumeReader>, repo::Error> {
        let Some(repo) = self.repository()? else {
            return Ok(None);
        };
        let reader = repo.volume_reader(id, volume)?;
        reader.set_cache_bytes(policy::BACKUP_READ_CACHE);
        Ok(Some(reader))
    }

    /// The jobs started through `control/jobs`.
    pub fn jobs(&self) -> &jobs::JobManager {
        &self.jobs
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
    /// descriptor; `Err` why the write failed, whose [`Error::answer`] is read back instead.
    pub fn control_write(&self, file: ControlFile, input: &[u8]) -> Result<String> {
        self.control_write_at(file, 0, input, &mut ControlDraft::default())
    }

    /// Carries out one write at `offset` of an open control file whose earlier writes are
    /// in `draft`. A command file takes each write as one command; `control/schedule`
    /// takes the text written from offset 0 on, and each write replaces the schedule with
    /// all of it, so `cp`, `tee` and a shell's several `echo`s all work.
    pub fn control_write_at(
        &self,
        file: ControlFile,
        offset: u64,
        input: &[u8],
        draft: &mut ControlDraft,
    ) -> Result<String> {
        if file == ControlFile::Schedule {
            return self.write_schedule(offset, input, draft);
        }
        let command = control::parse(file, input)?;
        let refused = |why: Error| Error::refused(file, why);
        match command {
            Command::CreateSnapshot { name, durability } => {
                let durability = durability.unwrap_or(self.engine.options().durability);
                self.engine
                    .take_with(&name, durability)
                    .map_err(|e| refused(e.into()))?;
                self.changed(Changed::Snapshot(name.clone()));
                Ok(format!("created snapshot {name}\n"))
            }
            Command::ReleaseSnapshot { name } => {
                self.engine.release(&name).map_err(|e| refused(e.into()))?;
                self.changed(Changed::Snapshot(name.clone()));
                Ok(format!("released snapshot {name}\n"))
            }
            Command::Backup(req) => {
                let repo = match (&req.repo, &self.repo_path) {
                    (Some(r), _) => r.clone(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => return Err(refused(Error::NoRepository)),
                };
                let id = self
                    .jobs
                    .start_backup(&self.engine, &req, &repo)
                    .map_err(refused)?;
                self.note_repository(&repo);
                Ok(format!("{id}\n"))
            }
            Command::Cancel { job } => self.jobs.cancel(&job).map_err(refused),
            Command::Restore(req) => {
                let repo = match (&req.repo, &self.repo_path) {
                    (Some(r), _) => r.clone(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => return Err(refused(Error::NoRepository)),
                };
                let origin = self.restore_origin(&req, &repo).map_err(refused)?;
                let id = self
                    .restores
                    .start(&self.engine, req.new_name(), origin)
                    .map_err(refused)?;
                Ok(format!("{id}\n"))
            }
        }
    }

    /// What a live restore of `req` from `repo` restores: the backup's volume and its size.
    fn restore_origin(
        &self,
        req: &control::RestoreRequest,
        repo: &Path,
    ) -> Result<crate::store::restored::Origin> {
        let handle = Handle::open_quiet(&Location::of_arg(repo)?)?;
        let reader = handle.volume_reader(&req.backup, &req.volume)?;
        Ok(crate::store::restored::Origin {
            repository: repo.display().to_string(),
            backup: req.backup.clone(),
            volume: req.volume.clone(),
            size: reader.size(),
        })
    }

    /// Resumes the live restores an earlier mount left unfinished (the mount calls this
    /// once before it serves).
    pub fn resume_restores(&self) {
        self.restores.resume(&self.engine);
    }

    /// Stops the live restores' copies (at unmount; the next mount resumes them).
    pub fn stop_restores(&self) {
        self.restores.stop_all();
    }

    fn write_schedule(
        &self,
        offset: u64,
        input: &[u8],
        draft: &mut ControlDraft,
    ) -> Result<String> {
        let refused = |e: schedule::ScheduleError| Error::refused(ControlFile::Schedule, e);
        if offset == 0 {
            draft.0.clear();
        } else if offset != draft.0.len() as u64 {
            return Err(refused(schedule::ScheduleError::OutOfOrder {
                offset,
                have: draft.0.len(),
            }));
        }
        if draft.0.len() + input.len() > control::schedule::MAX_SCHEDULE_BYTES {
            return Err(refused(schedule::ScheduleError::TooLarge(
                draft.0.len() + input.len(),
            )));
        }
        let mut text = draft.0.clone();
        text.extend_from_slice(input);
        let n = self.scheduler.replace(&text).map_err(refused)?;
        draft.0 = text;
        Ok(format!("schedule replaced: {n} job line(s)\n"))
    }

    /// The text (or JSON) a read of a control file shows.
    pub fn control_read(&self, file: ControlFile) -> String {
        match file {
            ControlFile::Status => render_status(&self.status()),
            ControlFile::StatusJson => render_status_json(&self.status()),
            ControlFile::Metrics => control::render_metrics(&self.metrics_report()),
            ControlFile::Snapshot => control::render_snapshots(&self.status().snapshots),
            ControlFile::Jobs => render_jobs(&self.job_rows()),
            ControlFile::JobsJson => render_jobs_json(&self.job_rows()),
            ControlFile::Pids | ControlFile::PidsJson => {
                let rows: Vec<control::PidRow> = match self.registry.list() {
                    Ok(entries) => entries.iter().map(Into::into).collect(),
                    Err(e) => {
                        log::warn!("reading the process registry: {}", e.chain());
                        Vec::new()
                    }
                };
                if file.is_json() {
                    render_pids_json(&rows)
                } else {
                    render_pids(&rows)
                }
            }
            ControlFile::Schedule => self.scheduler.text(),
            ControlFile::ScheduleStatus => {
                let (errors, _) = self.scheduler.problems();
                control::schedule::render_schedule(&self.scheduler.rows(), &errors)
            }
            ControlFile::Finishing => render_finishing(&self.finishing_rows()),
            ControlFile::FinishingJson => render_finishing_json(&self.finishing_rows()),
        }
    }

    /// Every repository this daemon knows of: the default one and those jobs used.
    pub fn known_repositories(&self) -> Vec<PathBuf> {
        let mut repos = self.known_repos.lock().clone();
        if let Some(p) = &self.repo_path {
            repos.insert(p.clone());
        }
        repos.into_iter().collect()
    }

    /// Notes a repository a job uses, so `control/finishing` shows it.
    pub fn note_repository(&self, path: &Path) {
        self.known_repos.lock().insert(path.to_path_buf());
    }

    /// What `control/finishing` shows: one row per known repository.
    pub fn finishing_rows(&self) -> Vec<control::FinishingRow> {
        self.known_repositories()
            .iter()
            .map(|p| {
                let shown = p.display().to_string();
                // Opened without completing anything, so a cut-off finishing shows as it
                // is; the default repository over ssh through its shared connection
                // (format 2 completes nothing at open anyway).
                let handle = Location::of_arg(p).and_then(|l| match l {
                    Location::Ssh(_) | Location::S3(_) if Some(p) == self.repo_path.as_ref() => {
                        self.repository()?.ok_or_else(|| {
                            repo::Error::BadArgument("no repository is configured".into())
                        })
                    }
                    l => Handle::open_quiet(&l),
                });
                match handle.and_then(|r| r.finishing_status()) {
                    Ok(status) => control::FinishingRow::from_status(&shown, &status),
                    Err(e) => control::FinishingRow::unreadable(&shown, &e.chain().to_string()),
                }
            })
            .collect()
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
            .filter(|info| !crate::snapshot::is_reserved(&info.name))
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
                    kind: info.durability.as_str().to_string(),
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
            repository: self.repository_status(),
            throttled_writers: stats.throttled_now,
            throttle_events: stats.throttle_events,
            snapshots_broken: stats.broken,
            // Jobs started here, or from a shell and connected to the job socket.
            running_jobs: self
                .job_rows()
                .iter()
                .filter(|r| r.state.is_active())
                .count() as u64,
            schedule: {
                let (errors, notes) = self.scheduler.problems();
                let file = engine.store().root().join(schedule::FILE);
                errors
                    .iter()
                    .map(|e| format!("{} {e}", file.display()))
                    .chain(notes)
                    .collect()
            },
            live_restores: self.restores.status(engine),
            recovery: {
                let r = engine.recovered();
                control::RecoveryStatus {
                    unclean_stop: r.unclean,
                    snapshots: r.snapshots,
                    preimages: r.preimages,
                    broken: r
                        .broken_now
                        .iter()
                        .map(|(n, why)| format!("{n}: {why}"))
                        .collect(),
                    torn_preimages: r.torn,
                    discarded_preimages: r.discarded,
                    dirty_regions: r.dirty_regions,
                    interrupted_jobs: self.interrupted.clone(),
                }
            },
        }
    }
}

impl schedule::Runner for Daemon {
    fn take_snapshot(&self, name: &str) -> Result<()> {
        self.engine
            .take_with(name, self.engine.options().durability)?;
        self.changed(Changed::Snapshot(name.to_string()));
        Ok(())
    }

    fn release_snapshot(&self, name: &str) -> Result<()> {
        match self.engine.release(name) {
            // Released by hand meanwhile, or gone with a volatile snapshot's mount.
            Err(crate::snapshot::Error::NoSuchSnapshot(_)) => return Ok(()),
            other => other?,
        }
        self.changed(Changed::Snapshot(name.to_string()));
        Ok(())
    }

    fn start(&self, request: &crate::jobs::BackupRequest) -> Result<String> {
        let repo = request
            .repo
            .clone()
            .or_else(|| self.repo_path.clone())
            .ok_or(Error::NoRepository)?;
        let id = self.jobs.start_backup(&self.engine, request, &repo)?;
        self.note_repository(&repo);
        Ok(id)
    }

    fn outcome(&self, job: &str) -> schedule::Outcome {
        let rows = self.jobs.rows(&self.engine.store().run_dir());
        match rows.iter().find(|r| r.id == job) {
            None => schedule::Outcome::Unknown,
            Some(r) if r.state.is_active() => schedule::Outcome::Active,
            Some(r) if r.reason.is_empty() => schedule::Outcome::Ended(r.state.as_str().into()),
            Some(r) => schedule::Outcome::Ended(format!("{}: {}", r.state.as_str(), r.reason)),
        }
    }
}
