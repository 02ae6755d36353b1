//! `snarf backup`: one backup job, as its own process. With a mount running it asks the mount
//! daemon for the snapshot's snarfs over `STORE/run/daemon.sock`; with none it opens the
//! store itself (direct mode). Either way it registers in the store's process registry,
//! hashes and compresses on every core, shows progress on stderr and prints the backup id
//! and a summary on stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{CliError, CliResult};
use crate::jobs::client::Client;
use crate::jobs::pipeline::{self, BackupOptions};
use crate::jobs::progress::{format_summary, ProgressDisplay};
use crate::jobs::report::{self, JobReport, ReportedState};
use crate::jobs::server::SOCKET;
use crate::jobs::{JobService, Mode, Session};
use crate::mounts;
use crate::pids::{exit_on_signals, NewEntry, ProcState, ProcType, Registry, StopOptions};
use crate::repo::Repo;
use crate::snapshot::{Engine, EngineOptions};
use crate::store::{Settings, Store};

/// Set by the cron runner so its jobs register as `cron`, which a user's job never stops.
pub const PROCESS_TYPE_ENV: &str = "SNARF_PROCESS_TYPE";

/// Full, incremental or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Read every snarf.
    Full,
    /// Read only snarfs changed since the volume's last backup; fail if that is unknown.
    Incremental,
    /// Incremental where the changed-snarf tracking allows, full otherwise.
    Auto,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Full => Mode::Full,
            ModeArg::Incremental => Mode::Incremental,
            ModeArg::Auto => Mode::Auto,
        }
    }
}

/// Arguments of `snarf backup`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Where the snapshot comes from:
  MOUNTPOINT  a mounted store (snarf mount STORE MOUNTPOINT): SNAPSHOT must exist there
              (mkdir MOUNTPOINT/snapshots/SNAPSHOT takes one). The job asks the mount daemon
              for the snapshot's snarfs over STORE/run/daemon.sock, snarfs whose old contents
              the daemon is holding first, and tells it which snarfs are stored so it can free
              them. Reads of the snapshot keep working afterwards (from the repository).
  STORE       a store directory. If it is mounted, the same as its mount point. If not
              (direct mode), snarf opens the store itself for the length of the job (a mount
              must wait until it ends), takes the snapshot SNAPSHOT of every volume at that
              instant, backs it up and releases it. Nothing else can write meanwhile, so
              SNAPSHOT only names the backup.

Incremental backups: a volume's next backup reads only the snarfs changed since its last
backup in the repository (same store, same volume) and takes the rest from that backup.
When the changed-snarf tracking was lost (the store was not closed cleanly) everything is
read and deduplication keeps the new data small; the summary says which happened.

The job registers in STORE/run/pids as type `user` (or `cron` when SNARF_PROCESS_TYPE=cron)
and, as a user job, first stops older idle user jobs on the same repository.")]
pub struct BackupArgs {
    /// A snarf mount point, or a store directory (see below).
    pub target: PathBuf,
    /// The snapshot to back up (in direct mode: the name of the snapshot taken now).
    pub snapshot: String,
    /// The repository (default: the mount's `--repo`, else the store's configured
    /// repository, `snarf init --repo`).
    #[arg(long, value_name = "REPO")]
    pub repo: Option<PathBuf>,
    /// Back up only this volume (repeat for more; default: every volume of the snapshot).
    #[arg(long = "volume", value_name = "NAME")]
    pub volumes: Vec<String>,
    /// full: read every snarf; incremental: only changed ones (fail if unknown); auto:
    /// incremental where possible.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// zstd level for new chunks, 1 (fastest) to 19 (smallest); default the repository's.
    #[arg(long, value_name = "LEVEL")]
    pub compression: Option<i32>,
    /// Seconds to wait for the repository lock if another job holds it (default: fail at
    /// once, naming the holder).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Hashing and compression threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Internal: the id of a job the mount daemon started through control/jobs; the job
    /// keeps STORE/run/jobs/ID.json up to date for it.
    #[arg(long, hide = true, value_name = "ID")]
    pub job_id: Option<String>,
}

/// How the job reaches the snapshot.
enum Target {
    /// A mount daemon serves the store (its socket is there); connect to it.
    Mounted { store: PathBuf, socket: PathBuf },
    /// Nobody serves the store; open it.
    Direct { store: PathBuf },
}

fn canonical(path: &Path) -> Result<PathBuf, CliError> {
    if mounts::is_stale(path) {
        return Err(CliError::new(format!(
            "{} is a stale snarf mount whose daemon is gone; clear it with `snarf umount {0}`, then back up the store directory",
            path.display()
        )));
    }
    path.canonicalize().map_err(|e| {
        CliError::new(format!(
            "{}: {}",
            path.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                "no such mount point or store".to_string()
            } else {
                e.to_string()
            }
        ))
    })
}

/// Tells a mount point from a store, and a served store from one nobody serves.
fn resolve(target: &Path) -> Result<Target, CliError> {
    let path = canonical(target)?;
    let store = match mounts::mount_at(&path)? {
        Some(m)
            if m.fstype == mounts::FSTYPE
                || (m.fstype.starts_with("fuse")
                    && Settings::load(Path::new(&m.source)).is_ok()) =>
        {
            PathBuf::from(m.source)
        }
        Some(m) => {
            return Err(CliError::new(format!(
                "{} is a {} mount, not a snarf mount or store",
                path.display(),
                m.fstype
            )))
        }
        None => path.clone(),
    };
    if let Err(e) = Settings::load(&store) {
        if path.join("control").is_dir() && path.join("snapshots").is_dir() {
            return Err(CliError::new(format!(
                "{} looks like a snarf mount, but the mount table does not name its store: {e}",
                path.display()
            )));
        }
        return Err(CliError::new(format!(
            "{} is neither a snarf mount point nor a store: {e}",
            path.display()
        )));
    }
    let socket = store.join("run").join(SOCKET);
    if socket.exists() {
        return Ok(Target::Mounted { store, socket });
    }
    Ok(Target::Direct { store })
}

fn process_type() -> Result<ProcType, CliError> {
    match std::env::var(PROCESS_TYPE_ENV) {
        Err(_) => Ok(ProcType::User),
        Ok(word) => ProcType::from_word(&word).ok_or_else(|| {
            CliError::new(format!(
                "{PROCESS_TYPE_ENV}={word} is not a process type; use user, cron, remote or sshpipe"
            ))
        }),
    }
}

fn job_error(e: crate::jobs::Error) -> CliError {
    if e.is_disk_full() && !e.to_string().contains("disk is full") {
        return CliError::new(format!(
            "{e}\na disk is full; nothing was committed: free space and run the backup again"
        ));
    }
    CliError::new(e)
}

/// `snarf backup`.
pub fn backup(args: BackupArgs) -> CliResult {
    let target = resolve(&args.target)?;
    let store = match &target {
        Target::Mounted { store, .. } | Target::Direct { store } => store.clone(),
    };
    let job = format!("backup {}", args.snapshot);
    // With a mount: connect first (its default repository comes with the welcome).
    let client = match &target {
        Target::Mounted { socket, .. } => match Client::connect(socket, &job) {
            Ok(c) => Some(c),
            // A socket left by a daemon that died: nobody serves the store.
            Err(crate::jobs::Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                log::info!(
                    "no mount daemon answers on {}; opening the store directly",
                    socket.display()
                );
                None
            }
            Err(e) => return Err(job_error(e)),
        },
        Target::Direct { .. } => None,
    };
    let repo_path = match args
        .repo
        .clone()
        .or_else(|| client.as_ref().and_then(|c| c.welcome().repo.clone()))
    {
        Some(r) => r,
        None => Settings::load(&store)?
            .repository
            .map(PathBuf::from)
            .ok_or_else(|| {
                CliError::new(format!(
                    "no --repo given and the store {} has no default repository; pass --repo REPO (create one with `snarf repo init REPO`)",
                    store.display()
                ))
            })?,
    };
    // Absolute, since the mount daemon (elsewhere) reads snarfs back from it.
    let repo_path = std::path::absolute(&repo_path).unwrap_or(repo_path);
    let repo = Repo::open(&repo_path)?;
    let kind = process_type()?;
    exit_on_signals().map_err(CliError::new)?;
    let registry = Registry::new(store.join("run"));
    let registration = registry
        .register(
            NewEntry::new(kind)
                .repo(repo.path().display().to_string())
                .job(job.clone())
                .state(ProcState::Running),
        )
        .map_err(CliError::new)?;

    let mut opts = BackupOptions::new(&args.snapshot);
    if !args.volumes.is_empty() {
        opts.volumes = Some(args.volumes.clone());
    }
    opts.mode = args.mode.into();
    opts.compression = args.compression;
    opts.lock_wait = args.wait.map(Duration::from_secs);
    if let Some(n) = args.threads {
        opts.workers = n.max(1);
    }
    let label = format!("backup {}", args.snapshot);
    let mut display = ProgressDisplay::new(&label, std::io::stderr().is_terminal());
    let mut reporter = args
        .job_id
        .as_deref()
        .map(|id| Reporter::new(report::report_path(&store.join("run"), id)));
    if let Some(r) = reporter.as_mut() {
        r.write(ReportedState::Running, None, None, None, None);
    }

    let stop_idle = |daemon: Option<u32>| {
        if kind != ProcType::User {
            return;
        }
        let so = StopOptions {
            protect: daemon.into_iter().collect(),
            ..StopOptions::default()
        };
        match registry.stop_idle(&repo.path().display().to_string(), &so) {
            Ok(stopped) => {
                for s in stopped {
                    log::info!(
                        "stopped idle process {} ({:?}): {:?}",
                        s.pid,
                        s.reason,
                        s.outcome
                    );
                }
            }
            Err(e) => log::warn!("could not stop idle snarf processes: {e}"),
        }
    };

    let result = match client {
        Some(client) => {
            stop_idle(client.daemon_pid());
            pipeline::run(&client, &repo, &opts, &mut |p| {
                display.update(p);
                if let Some(r) = reporter.as_mut() {
                    r.progress(p);
                }
            })
        }
        None => {
            stop_idle(None);
            direct(&store, &repo, &opts, &mut display, &mut reporter)
        }
    };
    display.finish();
    let _ = registration.set_state(ProcState::Idle);
    drop(registration);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let e = job_error(e);
            if let Some(r) = reporter.as_mut() {
                r.write(
                    ReportedState::Failed,
                    None,
                    None,
                    Some(e.message.clone()),
                    None,
                );
            }
            return Err(e);
        }
    };
    let text = format_summary(&summary);
    if let Some(r) = reporter.as_mut() {
        r.write(
            ReportedState::Done,
            None,
            Some(summary.backup.to_string()),
            None,
            Some(text.clone()),
        );
    }
    print!("{text}");
    Ok(())
}

/// Keeps the report file of a job started through control/jobs up to date (at most once a
/// second while it runs).
struct Reporter {
    path: PathBuf,
    last: Option<std::time::Instant>,
    progress: crate::jobs::Progress,
}

impl Reporter {
    fn new(path: PathBuf) -> Reporter {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Reporter {
            path,
            last: None,
            progress: Default::default(),
        }
    }

    fn progress(&mut self, p: &crate::jobs::Progress) {
        self.progress = *p;
        let committing = p.done_snarfs == p.total_snarfs && p.total_snarfs > 0;
        if committing
            || self
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let state = if committing {
                ReportedState::Finishing
            } else {
                ReportedState::Running
            };
            self.write(state, Some(*p), None, None, None);
        }
    }

    fn write(
        &mut self,
        state: ReportedState,
        p: Option<crate::jobs::Progress>,
        backup_id: Option<String>,
        error: Option<String>,
        summary: Option<String>,
    ) {
        self.last = Some(std::time::Instant::now());
        let p = p.unwrap_or(self.progress);
        let rate = (p.elapsed > 0.0).then(|| (p.done_bytes as f64 / p.elapsed) as u64);
        let r = JobReport {
            state,
            done_bytes: p.done_bytes,
            total_bytes: (p.total_snarfs > 0).then_some(p.total_bytes),
            rate_bytes_per_sec: rate,
            backup_id,
            error,
            summary,
        };
        if let Err(e) = r.write(&self.path) {
            log::warn!("cannot write the job report {}: {e}", self.path.display());
        }
    }
}

/// Direct mode: open the store, take the snapshot, back it up, release it, close cleanly
/// (so the next backup can be incremental).
fn direct(
    store: &Path,
    repo: &Repo,
    opts: &BackupOptions,
    display: &mut ProgressDisplay,
    reporter: &mut Option<Reporter>,
) -> crate::jobs::Result<crate::jobs::Summary> {
    let holder = format!(
        "snarf backup {} (pid {})",
        opts.snapshot,
        std::process::id()
    );
    let st = Store::open(store, &holder)?;
    let eo = EngineOptions::from_store(&st);
    let engine = Arc::new(Engine::new(st, eo)?);
    let result = engine
        .take(&opts.snapshot)
        .map_err(crate::jobs::Error::from)
        .and_then(|_| {
            let service = JobService::new(engine.clone(), None);
            let r = pipeline::run(&service, repo, opts, &mut |p| {
                display.update(p);
                if let Some(rep) = reporter.as_mut() {
                    rep.progress(p);
                }
            });
            drop(service);
            r
        });
    let closed = engine.close();
    let summary = result?;
    closed?;
    Ok(summary)
}
