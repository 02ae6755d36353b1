//! Commands that are thin clients of a mount's control files: `snarf snapshot`,
//! `snarf status`, `snarf jobs`, `snarf pids`, `snarf schedule`. They write the same one-line commands and
//! read the same tables a script would, so the CLI and scripts share one contract.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::control;
use crate::pids::Registry;

/// Arguments of `snarf snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Take a snapshot of every volume at once (like mkdir MOUNTPOINT/snapshots/NAME).
    Create {
        /// Where the store is mounted.
        mountpoint: PathBuf,
        /// Name of the new snapshot.
        name: String,
    },
    /// Release a snapshot (like rmdir MOUNTPOINT/snapshots/NAME).
    Release {
        /// Where the store is mounted.
        mountpoint: PathBuf,
        /// Name of the snapshot.
        name: String,
    },
    /// List the snapshots, with their state and pre-images held.
    List {
        /// Where the store is mounted.
        mountpoint: PathBuf,
    },
}

/// Arguments of commands that show one table of a mount.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Where the store is mounted.
    mountpoint: PathBuf,
    /// Print JSON (the file's .json twin) instead of the aligned table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `snarf pids`.
#[derive(Debug, Args)]
pub struct PidsArgs {
    /// A mount point, or a store directory (works without a mount). Without it: this
    /// host's own registry of `snarf backup --host` jobs (type sshpipe), /run/snarf/pids
    /// for root, $XDG_RUNTIME_DIR/snarf/pids otherwise.
    path: Option<PathBuf>,
    /// Print JSON instead of the aligned table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `snarf schedule`.
#[derive(Debug, Args)]
#[command(after_help = "\
The schedule is STORE/schedule, also MOUNTPOINT/control/schedule: one job per line,
crontab time fields in UTC, then a backup command of control/jobs, for example

  # minute hour day-of-month month day-of-week  job
  0 2 * * *  backup snapshot=auto repo=/srv/repo
  @hourly    backup snapshot=auto volumes=db.img mode=incremental

snapshot=auto takes a snapshot for each run and releases it when the job ends. Jobs run
as type cron; a line whose last run is still going skips its time. Times missed while
the mount was down are caught up once at the next mount, never more.")]
pub struct ScheduleArgs {
    /// Where the store is mounted.
    mountpoint: PathBuf,
    /// Replace the schedule with this file (`-` for standard input) first; a schedule with
    /// a bad line is refused whole, naming the line, and the old one stays in force.
    #[arg(long, value_name = "FILE")]
    set: Option<PathBuf>,
}

/// The control folder of a mount, or an error that says what the path is instead.
pub fn control_dir(mountpoint: &Path) -> Result<PathBuf, CliError> {
    let dir = mountpoint.join("control");
    if dir.join("status").exists() {
        return Ok(dir);
    }
    Err(CliError::new(format!(
        "{} is not a snarf mount point (it has no control/ folder); mount a store there with `snarf mount STORE {0}`",
        mountpoint.display()
    )))
}

/// Writes one command to a control file; returns the answer read back on the same
/// descriptor, or the reason the command was refused.
pub fn send(mountpoint: &Path, file: &str, command: &str) -> Result<String, CliError> {
    send_text(mountpoint, file, format!("{command}\n").as_bytes())
}

/// Writes `text` to a control file in one write; the answer, or the reason it was refused.
fn send_text(mountpoint: &Path, file: &str, text: &[u8]) -> Result<String, CliError> {
    let path = control_dir(mountpoint)?.join(file);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", path.display())))?;
    let written = f.write_all(text);
    let mut answer = String::new();
    let read = f.read_to_string(&mut answer);
    match written {
        Ok(()) => {
            read.map_err(|e| {
                CliError::new(format!("reading the answer from {}: {e}", path.display()))
            })?;
            Ok(answer)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !answer.trim().is_empty() => {
            Err(CliError::new(answer.trim_end()))
        }
        Err(e) => Err(CliError::new(format!("writing to {}: {e}", path.display()))),
    }
}

/// Reads a control file's table.
pub fn read_table(mountpoint: &Path, file: &str) -> Result<String, CliError> {
    let path = control_dir(mountpoint)?.join(file);
    std::fs::read_to_string(&path)
        .map_err(|e| CliError::new(format!("reading {}: {e}", path.display())))
}

/// `snarf snapshot`.
pub fn snapshot(args: SnapshotArgs) -> CliResult {
    match args.action {
        SnapshotAction::Create { mountpoint, name } => {
            print!(
                "{}",
                send(
                    &mountpoint,
                    "snapshot",
                    &format!("create {}", crate::control::words::quote_word(&name))
                )?
            )
        }
        SnapshotAction::Release { mountpoint, name } => {
            print!(
                "{}",
                send(
                    &mountpoint,
                    "snapshot",
                    &format!("release {}", crate::control::words::quote_word(&name))
                )?
            )
        }
        SnapshotAction::List { mountpoint } => print!("{}", read_table(&mountpoint, "snapshot")?),
    }
    Ok(())
}

/// `snarf status`.
pub fn status(args: TableArgs) -> CliResult {
    let file = if args.json { "status.json" } else { "status" };
    print!("{}", read_table(&args.mountpoint, file)?);
    Ok(())
}

/// `snarf jobs`.
pub fn jobs(args: TableArgs) -> CliResult {
    let file = if args.json { "jobs.json" } else { "jobs" };
    print!("{}", read_table(&args.mountpoint, file)?);
    Ok(())
}

/// `snarf schedule`.
pub fn schedule(args: ScheduleArgs) -> CliResult {
    if let Some(file) = &args.set {
        let text = if file.as_os_str() == "-" {
            let mut t = Vec::new();
            std::io::stdin()
                .read_to_end(&mut t)
                .map_err(|e| CliError::new(format!("reading the schedule from stdin: {e}")))?;
            t
        } else {
            std::fs::read(file)
                .map_err(|e| CliError::new(format!("reading {}: {e}", file.display())))?
        };
        print!("{}", send_text(&args.mountpoint, "schedule", &text)?);
    }
    print!("{}", read_table(&args.mountpoint, "schedule-status")?);
    Ok(())
}

/// `snarf pids`: from the mount's control file, or straight from a store's registry.
pub fn pids(args: PidsArgs) -> CliResult {
    let entries = match &args.path {
        Some(path) if path.join("control").exists() => {
            let file = if args.json { "pids.json" } else { "pids" };
            print!("{}", read_table(path, file)?);
            return Ok(());
        }
        Some(path) => {
            crate::store::Settings::load(path)?;
            Registry::new(path.join("run")).list()?
        }
        None => crate::pids::host::registry()?.list()?,
    };
    let rows: Vec<control::PidRow> = entries.iter().map(Into::into).collect();
    if args.json {
        print!("{}", control::render_pids_json(&rows));
    } else {
        print!("{}", control::render_pids(&rows));
    }
    Ok(())
}
