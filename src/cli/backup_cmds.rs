//! `snarf backup`: one backup job, as its own process. With a mount running it asks the mount
//! daemon for the snapshot's snarfs over `STORE/run/daemon.sock`; with none it opens the
//! store itself (direct mode). Either way it registers in the store's process registry,
//! hashes and compresses on every core, shows progress on stderr and prints the backup id
//! and a summary on stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use super::progress::ProgressDisplay;
use super::{CliError, CliResult};
use crate::chain::ErrorChain;
use crate::jobs::client::Client;
use crate::jobs::pipeline::{self, BackupOptions};
use crate::jobs::progress::format_summary;
use crate::jobs::report::{self, JobReport};
use crate::jobs::server::SOCKET;
use crate::jobs::spec::{opt, PROCESS_TYPE_ENV};
use crate::jobs::{
    BackupRequest, JobService, JobState, Mode, Progress, ProgressSink, Session, CONVERGE_LABEL,
};
use crate::mounts;
use crate::pids::{exit_on_signals, NewEntry, ProcState, ProcType, Registry, StopOptions};
use crate::repo::retention::Policy;
use crate::repo::{Handle, Location};
use crate::snapshot::{Engine, EngineOptions};
use crate::store::{Settings, Store};
use crate::units::Bytes;

/// The backup modes as clap values: the jobs layer's own words and help, so the command
/// line and `control/jobs` take the same modes.
impl ValueEnum for Mode {
    fn value_variants<'a>() -> &'a [Self] {
        &Mode::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()).help(self.help()))
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
              must wait until it ends). If the store holds a persistent snapshot SNAPSHOT
              (taken by an earlier mount), that is backed up and stays; else snarf takes a
              volatile snapshot SNAPSHOT of every volume at that instant, backs it up and
              releases it (nothing else can write meanwhile, so SNAPSHOT only names the
              backup).

Converge backups (--converge, no SNAPSHOT; `converge` on control/jobs): the job copies the
live volumes with no snapshot, then copies again, in passes, what was written meanwhile,
until that is small (4 MiB or 1% of the first pass) or stops shrinking (at most 8 passes).
It then freezes every volume for an instant, copies from the freeze only what the last pass
missed, and commits: the backup is the volumes as they were at that freeze, not at its
start, and holds no old contents of written snarfs until the freeze. The summary gives the
passes, the bytes copied again and how long the freeze was held. The next incremental reads
what changed since the freeze. A volume that changes size meanwhile fails the job (nothing
is committed); a volume created meanwhile is not in it. Needs a format 2 repository.

Incremental backups: a volume's next backup reads only the snarfs changed since its last
backup in the repository (same store, same volume) and takes the rest from that backup.
When the changed-snarf tracking was lost (the store was not closed cleanly) everything is
read and deduplication keeps the new data small; the summary says which happened.

The job registers in STORE/run/pids as type `user` (or `cron` when SNARF_PROCESS_TYPE=cron)
and, as a user job, first stops older idle user jobs on the same repository.

On another host: --host [USER@]HOST[:PORT] runs the same job on that host's store through
the system ssh client (SNARF_RSH, BatchMode=yes; --remote-path names the far snarf).
MOUNTPOINT, SNAPSHOT and --repo are paths on that host. The job registers there as
`remote` (with this host's address) and here as `sshpipe` in the host-wide registry
(/run/snarf/pids for root, $XDG_RUNTIME_DIR/snarf/pids otherwise; `snarf pids` shows it).
Its progress and exit status come back; if this command, its ssh or the connection dies,
the far job stops and leaves nothing half-committed.")]
pub struct BackupArgs {
    /// A snarf mount point, or a store directory (see below).
    pub target: PathBuf,
    /// The snapshot to back up (in direct mode: the name of the snapshot taken now); none
    /// with --converge.
    #[arg(required_unless_present = "converge", conflicts_with = "converge")]
    pub snapshot: Option<String>,
    /// Back up the live volumes with no snapshot: copy them in passes until what was
    /// written meanwhile is small, then freeze just that for an instant. The backup is the
    /// volumes as they were at that freeze, and holds no old contents until it.
    #[arg(long = opt::CONVERGE)]
    pub converge: bool,
    /// The repository (default: the mount's `--repo`, else the store's configured
    /// repository, `snarf init --repo`).
    #[arg(long = opt::REPO, value_name = "REPO")]
    pub repo: Option<PathBuf>,
    /// Back up only this volume (repeat for more; default: every volume of the snapshot).
    #[arg(long = opt::VOLUME, value_name = "NAME")]
    pub volumes: Vec<String>,
    /// full: read every snarf; incremental: only changed ones (fail if unknown); auto:
    /// incremental where possible.
    #[arg(long = opt::MODE, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// zstd level for new chunks, 1 (fastest) to 19 (smallest); default the repository's.
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression: Option<i32>,
    /// Seconds to wait for the repository lock if another job holds it, up to 604800
    /// (default: fail at once, naming the holder).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=super::numbers::MAX_WAIT_SECS))]
    pub lock_wait: Option<u64>,
    /// Hand the job to the mount (as `echo backup ... > MOUNTPOINT/control/jobs` does)
    /// and follow its progress in control/jobs until it ends; the exit status is the job's.
    /// The job survives this command being interrupted.
    #[arg(long, conflicts_with = "detach")]
    pub wait: bool,
    /// Hand the job to the mount through control/jobs, print its id and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Hashing and compression threads, 1 to 256 (default: one per core).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=super::numbers::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Run the job on this host's store over ssh (the system ssh client, SNARF_RSH,
    /// --remote-path): MOUNT, SNAPSHOT and --repo are the far host's. Progress and the exit
    /// status come back; killing this command stops the far job.
    #[arg(long, value_name = "[USER@]HOST[:PORT]",
          conflicts_with_all = ["wait", "detach", "job_id", "remote_job"])]
    pub host: Option<String>,
    /// Internal: this job is the far end of `snarf backup --host` started from the named
    /// host; it registers as `remote` and stops when its ssh connection closes.
    #[arg(long = opt::REMOTE_JOB, hide = true, value_name = "FROM",
          conflicts_with_all = ["wait", "detach", "job_id"])]
    pub remote_job: Option<String>,
    /// Retention applied once the backup is committed, as `snarf prune` applies it.
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Internal: the id of a job the mount daemon started through control/jobs; the job
    /// keeps STORE/run/jobs/ID.json up to date for it.
    #[arg(long = opt::JOB_ID, hide = true, value_name = "ID")]
    pub job_id: Option<String>,
}

impl BackupArgs {
    /// The snapshot's name, or `converge` for a converge backup (which names none).
    pub fn label(&self) -> String {
        match &self.snapshot {
            Some(s) if !self.converge => s.clone(),
            _ => CONVERGE_LABEL.to_string(),
        }
    }

    /// What the job is called in listings and progress: `backup SNAPSHOT` or `converge`.
    pub fn job_label(&self) -> String {
        if self.converge {
            CONVERGE_LABEL.to_string()
        } else {
            format!("backup {}", self.label())
        }
    }
}

/// The `--keep-*` options of `snarf backup`: after the backup is committed, the repository
/// is pruned with them (the rules of `snarf prune`), while the job is still registered.
#[derive(Debug, Args, Default)]
pub struct KeepArgs {
    /// After the commit, prune: keep the newest N backups.
    #[arg(long = "keep-last", value_name = "N", value_parser = super::repo_cmds::keep_count())]
    pub last: Option<u32>,
    /// After the commit, prune: keep the newest backup of each of the last N days (UTC).
    #[arg(long = "keep-daily", value_name = "N", value_parser = super::repo_cmds::keep_count())]
    pub daily: Option<u32>,
    /// After the commit, prune: keep the newest backup of each of the last N ISO weeks.
    #[arg(long = "keep-weekly", value_name = "N", value_parser = super::repo_cmds::keep_count())]
    pub weekly: Option<u32>,
    /// After the commit, prune: keep the newest backup of each of the last N months.
    #[arg(long = "keep-monthly", value_name = "N", value_parser = super::repo_cmds::keep_count())]
    pub monthly: Option<u32>,
}

impl KeepArgs {
    /// The policy, if any `--keep-*` was given (refused if it keeps nothing).
    pub fn policy(&self) -> Result<Option<Policy>, CliError> {
        if [self.last, self.daily, self.weekly, self.monthly]
            .iter()
            .all(Option::is_none)
        {
            return Ok(None);
        }
        let p = Policy {
            keep_last: self.last.unwrap_or(0),
            keep_daily: self.daily.unwrap_or(0),
            keep_weekly: self.weekly.unwrap_or(0),
            keep_monthly: self.monthly.unwrap_or(0),
        };
        p.validate()?;
        Ok(Some(p))
    }
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
/// The mount point serving `store`, if it is mounted.
fn mountpoint_of(target: &Path) -> Result<PathBuf, CliError> {
    let path = canonical(target)?;
    if path.join("control").join("jobs").exists() {
        return Ok(path);
    }
    let shown = path.display().to_string();
    mounts::mounts()?
        .into_iter()
        .find(|m| m.source == shown && m.fstype.starts_with("fuse"))
        .map(|m| m.mountpoint)
        .ok_or_else(|| {
            CliError::new(format!(
                "--wait and --detach hand the job to a mount's control/jobs, but {shown} is not a mounted store; mount it (snarf mount {shown} MOUNTPOINT) or back it up directly without --wait"
            ))
        })
}

/// `--wait` / `--detach`: submits the job through `control/jobs` and follows it there.
fn submit(args: &BackupArgs) -> CliResult {
    let mountpoint = mountpoint_of(&args.target)?;
    let request = BackupRequest {
        snapshot: args.label(),
        converge: args.converge,
        // A local folder made absolute (the daemon runs elsewhere); a URL as written.
        repo: match &args.repo {
            Some(repo) => Some(match Location::of_arg(repo)? {
                Location::Local(_) => std::path::absolute(repo).unwrap_or_else(|_| repo.clone()),
                Location::Ssh(_) | Location::S3(_) => repo.clone(),
            }),
            None => None,
        },
        volumes: (!args.volumes.is_empty()).then(|| args.volumes.clone()),
        mode: args.mode,
        kind: process_type()?,
        keep: args.keep.policy()?,
    };
    // The grammar's own rendering of the command, so it parses back to this request.
    let command = crate::control::Command::Backup(request).to_string();
    let id = super::control_cmds::send(&mountpoint, "jobs", &command)?
        .trim()
        .to_string();
    if args.detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!(
        "job {id} started on {}; following control/jobs",
        mountpoint.display()
    );
    follow(&mountpoint, &id)
}

/// Follows job `id` in `control/jobs.json` until it ends.
fn follow(mountpoint: &Path, id: &str) -> CliResult {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let text = super::control_cmds::read_table(mountpoint, "jobs.json")?;
        let rows: Vec<crate::control::JobRow> = serde_json::from_str(&text)
            .map_err(|e| CliError::new(format!("control/jobs.json is unreadable: {e}")))?;
        let row = rows.into_iter().find(|r| r.id == id).ok_or_else(|| {
            CliError::new(format!("job {id} is no longer listed in control/jobs"))
        })?;
        match row.state {
            JobState::Done => {
                if tty {
                    eprintln!();
                }
                let report = report::report_path(&store_of(mountpoint)?.join("run"), id);
                match JobReport::read(&report).and_then(|r| r.summary) {
                    Some(summary) => print!("{summary}"),
                    None => println!("job {id} done: {}", row.reason),
                }
                return Ok(());
            }
            JobState::Failed | JobState::Cancelled => {
                if tty {
                    eprintln!();
                }
                return Err(CliError::new(format!(
                    "job {id} {}: {}",
                    row.state.as_str(),
                    row.reason
                )));
            }
            JobState::Queued | JobState::Running | JobState::Finishing => {
                if tty || last_line.elapsed() >= Duration::from_secs(5) {
                    let pct = row
                        .total_bytes
                        .filter(|t| *t > 0)
                        .map(|t| format!(" {:.0}%", row.done_bytes as f64 * 100.0 / t as f64))
                        .unwrap_or_default();
                    let rate = row
                        .rate_bytes_per_sec
                        .map(|r| format!(", {}/s", crate::units::Bytes(r)))
                        .unwrap_or_default();
                    let line = format!(
                        "job {id}: {}{pct} ({}{}){rate}",
                        row.state.as_str(),
                        crate::units::Bytes(row.done_bytes),
                        row.total_bytes
                            .map(|t| format!(" of {}", crate::units::Bytes(t)))
                            .unwrap_or_default()
                    );
                    if tty {
                        eprint!("\r\x1b[K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                    last_line = std::time::Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The store a mount point serves, from the mount table.
fn store_of(mountpoint: &Path) -> Result<PathBuf, CliError> {
    let path = canonical(mountpoint)?;
    mounts::mount_at(&path)?
        .map(|m| PathBuf::from(m.source))
        .ok_or_else(|| CliError::new(format!("{} is not mounted", path.display())))
}

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
                path.display(),
                e = e.chain()
            )));
        }
        return Err(CliError::new(format!(
            "{} is neither a snarf mount point nor a store: {e}",
            path.display(),
            e = e.chain()
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
    let text = e.chain().to_string();
    match e.disk_full_advice() {
        Some(advice) => CliError::new(format!("{text}\n{advice}")),
        None => CliError::new(text),
    }
}

/// `snarf backup`.
pub fn backup(args: BackupArgs) -> CliResult {
    if let Some(host) = &args.host {
        return super::host_job::run(&args, host);
    }
    if args.wait || args.detach {
        return submit(&args);
    }
    let target = resolve(&args.target)?;
    let store = match &target {
        Target::Mounted { store, .. } | Target::Direct { store } => store.clone(),
    };
    let job = args.job_label();
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
    let repo = Handle::open(&Location::of_arg(&repo_path)?.absolute())?;
    let (kind, origin) = match &args.remote_job {
        Some(from) => (
            ProcType::Remote,
            super::host_job::far_origin(std::env::var("SSH_CONNECTION").ok().as_deref(), from),
        ),
        None => (process_type()?, String::new()),
    };
    let keep = args.keep.policy()?;
    exit_on_signals()?;
    if args.remote_job.is_some() {
        super::host_job::stop_when_connection_closes();
    }
    let registry = Registry::new(store.join("run"));
    let registration = registry.register(
        NewEntry::new(kind)
            .host(origin)
            .repo(repo.location())
            .job(match &args.job_id {
                Some(id) => format!("{id} {job}"),
                None => job.clone(),
            })
            .state(ProcState::Running),
    )?;

    let mut opts = BackupOptions::new(&args.label());
    opts.converge = args.converge;
    if !args.volumes.is_empty() {
        opts.volumes = Some(args.volumes.clone());
    }
    opts.mode = args.mode;
    opts.compression = args.compression;
    opts.lock_wait = args.lock_wait.map(Duration::from_secs);
    if let Some(n) = args.threads {
        opts.workers = n.max(1);
    }
    let label = args.job_label();
    let mut shown = Shown {
        display: match args.remote_job {
            // The local end of `--host` shows these lines as they come.
            Some(_) => ProgressDisplay::new(&label, false).every(Duration::from_secs(1)),
            None => ProgressDisplay::new(&label, std::io::stderr().is_terminal()),
        },
        reporter: args
            .job_id
            .as_deref()
            .map(|id| Reporter::new(report::report_path(&store.join("run"), id))),
    };
    if let Some(r) = shown.reporter.as_mut() {
        r.write(JobState::Running, None, None, None, None);
    }

    let stop_idle = |daemon: Option<u32>| {
        if kind != ProcType::User {
            return;
        }
        // The mount daemon is never a victim, whether it said its pid in the welcome or
        // only left it in its record (a planted registry entry may name it).
        let recorded = crate::daemon::record::read(&store.join("run"))
            .filter(crate::daemon::record::is_running)
            .map(|r| r.pid);
        let so = StopOptions {
            protect: daemon.into_iter().chain(recorded).collect(),
            ..StopOptions::default()
        };
        match registry.stop_idle(&repo.location(), &so) {
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
            Err(e) => log::warn!("could not stop idle snarf processes: {}", e.chain()),
        }
    };

    let result = match client {
        Some(client) => {
            stop_idle(client.daemon_pid());
            pipeline::run(&client, &repo, &opts, &mut shown)
        }
        None => {
            stop_idle(None);
            direct(&store, &repo, &opts, &mut shown)
        }
    };
    // The job finished its display already; this covers one that failed before it began.
    shown.finish();
    // Retention once the backup is committed, still registered as the running job (so a
    // newer user job leaves a cron job's prune alone, as it leaves its backup).
    let pruned = match (&result, keep) {
        (Ok(_), Some(policy)) => {
            log::info!("pruning {} with {policy}", repo.location());
            Some((policy, repo.prune(&policy, false)))
        }
        _ => None,
    };
    let mut reporter = shown.reporter.take();
    let _ = registration.set_state(ProcState::Idle);
    drop(registration);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let e = job_error(e);
            if let Some(r) = reporter.as_mut() {
                r.write(JobState::Failed, None, None, Some(e.message.clone()), None);
            }
            return Err(e);
        }
    };
    let mut text = format_summary(&summary);
    let mut outcome = None;
    match pruned {
        None => {}
        Some((policy, Ok(r))) => {
            let removed = r.decisions.iter().filter(|d| !d.keep).count();
            let line = format!(
                "pruned with {policy}: {} backup(s) kept, {removed} removed, {} pack(s) and {} freed",
                r.decisions.len() - removed,
                r.packs_removed,
                Bytes(r.freed_bytes)
            );
            text.push_str(&line);
            text.push('\n');
            for d in &r.damaged {
                text.push_str(&format!("warning: {d}\n"));
            }
            outcome = Some(line);
        }
        Some((policy, Err(e))) => {
            // The backup stands; the failure is the job's, so a schedule records it.
            let message = format!(
                "backup {} was committed, but pruning {} with {policy} failed: {}; run `snarf prune {} {}` once that is fixed",
                summary.backup,
                repo.location(),
                e.chain(),
                repo.location(),
                policy.options().iter().map(|(k, n)| format!("--{k} {n}")).collect::<Vec<_>>().join(" ")
            );
            print!("{text}");
            if let Some(r) = reporter.as_mut() {
                r.write(
                    JobState::Failed,
                    None,
                    Some(summary.backup.to_string()),
                    Some(message.clone()),
                    Some(text.clone()),
                );
            }
            return Err(CliError::new(message));
        }
    }
    if let Some(r) = reporter.as_mut() {
        r.pruned = outcome;
        r.write(
            JobState::Done,
            None,
            Some(summary.backup.to_string()),
            None,
            Some(text.clone()),
        );
    }
    print!("{text}");
    Ok(())
}

/// Everything `snarf backup` reports a job's progress to: stderr, and for a job started
/// through control/jobs its report file.
struct Shown {
    display: ProgressDisplay,
    reporter: Option<Reporter>,
}

impl ProgressSink for Shown {
    fn report(&mut self, p: &Progress) {
        self.display.report(p);
        if let Some(r) = self.reporter.as_mut() {
            r.report(p);
        }
    }

    fn finish(&mut self) {
        self.display.finish();
    }
}

/// Keeps the report file of a job started through control/jobs up to date (at most once a
/// second while it runs).
struct Reporter {
    path: PathBuf,
    /// What the prune after the commit did, once it ran.
    pruned: Option<String>,
    last: Option<std::time::Instant>,
    progress: Progress,
}

impl Reporter {
    fn new(path: PathBuf) -> Reporter {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Reporter {
            path,
            pruned: None,
            last: None,
            progress: Default::default(),
        }
    }

    fn report(&mut self, p: &Progress) {
        self.progress = *p;
        let committing = p.done_snarfs == p.total_snarfs && p.total_snarfs > 0;
        if committing
            || self
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let state = if committing {
                JobState::Finishing
            } else {
                JobState::Running
            };
            self.write(state, Some(*p), None, None, None);
        }
    }

    fn write(
        &mut self,
        state: JobState,
        p: Option<Progress>,
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
            pruned: self.pruned.clone(),
        };
        if let Err(e) = r.write(&self.path) {
            log::warn!("cannot write the job report {}: {e}", self.path.display());
        }
    }
}

/// Direct mode: open the store, back up its persistent snapshot of that name or take a
/// volatile one (released at the close), close cleanly (so the next backup can be
/// incremental).
fn direct(
    store: &Path,
    repo: &Handle,
    opts: &BackupOptions,
    progress: &mut dyn ProgressSink,
) -> crate::jobs::Result<crate::jobs::Summary> {
    let holder = format!(
        "snarf backup {} (pid {})",
        opts.snapshot,
        std::process::id()
    );
    let st = Store::open(store, &holder)?;
    let eo = EngineOptions::from_store(&st);
    let engine = Arc::new(Engine::new(st, eo)?);
    let existing = engine
        .snapshot(&opts.snapshot)
        .ok()
        .filter(|s| s.is_persistent());
    let taken = match existing {
        // Nothing else writes meanwhile: the converge copy takes one pass.
        _ if opts.converge => Ok(()),
        Some(_) => Ok(()),
        None => engine
            .take_with(&opts.snapshot, crate::store::Durability::Volatile)
            .map(|_| ()),
    };
    let result = taken.map_err(crate::jobs::Error::from).and_then(|_| {
        let service = JobService::new(engine.clone(), None);
        let r = pipeline::run(&service, repo, opts, progress);
        drop(service);
        r
    });
    let closed = engine.close();
    let summary = result?;
    closed?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use crate::jobs::spec::BackupSpec;
    use crate::jobs::{BackupRequest, Mode};
    use crate::pids::ProcType;
    use clap::Parser;
    use std::path::{Path, PathBuf};

    /// A full disk gets its advice however the failing thing is named.
    #[test]
    fn a_full_disk_is_advised_whatever_the_names_say() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = crate::jobs::Error::io("spilling snapshot \"disk is full\"", full);
        let message = super::job_error(e).message;
        assert!(
            message.contains("a disk is full; nothing was committed"),
            "{message}"
        );
        let locked = crate::repo::Error::Locked {
            path: "/srv/No space left on device".into(),
            holder: "x".into(),
        };
        let message = super::job_error(locked.into()).message;
        assert!(!message.contains("disk is full"), "{message}");
    }

    /// The argv the daemon builds for a job parses back to exactly what was asked, whatever
    /// the names look like: nothing a user named is read as an option.
    #[test]
    fn hostile_names_in_a_daemon_job_argv_stay_positional() {
        for (snapshot, volume, repo) in [
            ("--help", "-v", "/srv/repo"),
            ("-x", "--version", "/srv/--repo=/etc"),
            ("--repo=/tmp/evil", "--", "-r"),
            ("--", "--mode=full", "/srv/repo"),
        ] {
            let req = BackupRequest {
                snapshot: snapshot.into(),
                converge: false,
                repo: None,
                volumes: Some(vec![volume.into(), "plain".into()]),
                mode: Mode::Incremental,
                kind: ProcType::User,
                keep: None,
            };
            let mut argv: Vec<std::ffi::OsString> = vec!["snarf".into()];
            argv.extend(
                BackupSpec {
                    mountpoint: Path::new("/mnt/-m"),
                    request: &req,
                    repository: Path::new(repo),
                    job_id: "17-3",
                }
                .argv(),
            );
            let cli = Cli::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
            let Command::Backup(args) = cli.command else {
                panic!("{argv:?} is not a backup command");
            };
            assert_eq!(args.snapshot.as_deref(), Some(snapshot), "{argv:?}");
            assert!(!args.converge);
            assert_eq!(args.target, PathBuf::from("/mnt/-m"));
            assert_eq!(args.volumes, vec![volume.to_string(), "plain".into()]);
            assert_eq!(args.repo, Some(PathBuf::from(repo)));
            assert_eq!(args.job_id.as_deref(), Some("17-3"));
            assert_eq!(args.mode, Mode::Incremental);
        }
    }

    /// A converge job's argv names no snapshot, and parses back as one.
    #[test]
    fn a_converge_job_argv_names_no_snapshot() {
        let mut req = BackupRequest::converge();
        req.volumes = Some(vec!["--help".into()]);
        let mut argv: Vec<std::ffi::OsString> = vec!["snarf".into()];
        argv.extend(
            BackupSpec {
                mountpoint: Path::new("/mnt/m"),
                request: &req,
                repository: Path::new("/srv/r"),
                job_id: "4-1",
            }
            .argv(),
        );
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Backup(args) = cli.command else {
            panic!("{argv:?} is not a backup command");
        };
        assert!(args.converge);
        assert_eq!(args.snapshot, None);
        assert_eq!(args.volumes, vec!["--help".to_string()]);
        assert_eq!(args.job_label(), crate::jobs::CONVERGE_LABEL);
        // A snapshot name and --converge together are refused.
        assert!(Cli::try_parse_from(["snarf", "backup", "--converge", "/m", "s"]).is_err());
        assert!(Cli::try_parse_from(["snarf", "backup", "/m"]).is_err());
    }
}
