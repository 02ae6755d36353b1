//! Commands on a backup repository: create one, list its backups, restore, check, prune,
//! repair its index, and show finishing state (its keys: `key_cmds`). `snarf backup` itself lives with the job
//! commands.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::key_cmds::{self, KeyArgs, SlotOptions};
use super::{CliError, CliResult};
use crate::chain::ErrorChain;
use crate::control;
use crate::repo::handle::InitOptions;
use crate::repo::{self, Handle, Location, Policy};
use crate::units::{parse_size, Bytes};

/// Arguments of `snarf repo`.
#[derive(Debug, Args)]
pub struct RepoArgs {
    #[command(subcommand)]
    command: RepoCommand,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Create a new, empty backup repository.
    Init(RepoInitArgs),
    /// Migrate a format 1 repository to format 2 in place (packs stay; safe to interrupt
    /// and run again).
    Upgrade(RepoUpgradeArgs),
    /// List, add or remove the passphrases of an encrypted repository.
    Key(KeyArgs),
}

/// Arguments of `snarf repo upgrade`.
#[derive(Debug, Args)]
struct RepoUpgradeArgs {
    /// The format 1 repository (a local folder).
    repo: PathBuf,
}

/// Arguments of `snarf repo init`.
#[derive(Debug, Args)]
struct RepoInitArgs {
    /// Directory for the repository (created if missing; must be empty).
    repo: PathBuf,
    /// zstd compression level for stored chunks: 1 (fastest) to 19 (smallest). Chunks that
    /// do not get smaller are stored uncompressed whatever the level.
    #[arg(long, default_value_t = repo::DEFAULT_COMPRESSION, value_name = "LEVEL")]
    compression: i32,
    /// Size at which a pack file is sealed (e.g. 32M). Bigger packs mean fewer files.
    #[arg(long, default_value = "32M", value_parser = parse_size, value_name = "SIZE")]
    pack_size: u64,
    /// Repository format: 2, the default (objects, tree manifests, frames of 16 snarfs
    /// compressed together; local, ssh:// or s3://), or 1 (one table per volume, one compressed
    /// chunk per snarf; a local folder only), for hosts that still run an older snarf.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=2))]
    format: u32,
    /// Encrypt and authenticate everything stored (AES-256-GCM; format 2 only). The
    /// passphrase comes from --password-file FILE, SNARF_PASSWORD or a prompt; without it
    /// nothing can be read back, so keep it (or add a second with `snarf repo key add`).
    #[arg(long)]
    encryption: bool,
    #[command(flatten)]
    slot: SlotOptions,
}

/// Opens the repository named on the command line, in whichever format it is.
fn open(arg: &std::path::Path) -> Result<Handle, repo::Error> {
    Handle::open(&Location::of_arg(arg)?)
}

/// Arguments of `snarf backups`.
#[derive(Debug, Args)]
pub struct BackupsArgs {
    /// The repository.
    repo: PathBuf,
    /// Print the manifests as a JSON array instead of a table (for scripts).
    #[arg(long)]
    json: bool,
}

/// Arguments of `snarf restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The repository.
    repo: PathBuf,
    /// The backup id, as listed by `snarf backups`.
    backup: String,
    /// Restore only this volume (default: all volumes of the backup; required with --live).
    #[arg(long, value_name = "NAME", required_if_eq("live", "true"))]
    volume: Option<String>,
    /// Directory to write the volumes into, one sparse file per volume (created if
    /// missing; existing files are never overwritten).
    #[arg(required_unless_present = "live", conflicts_with = "live")]
    dest: Option<PathBuf>,
    /// Live restore: the volume appears at once as MOUNT/live/NAME, readable and writable;
    /// snarfs not yet copied are read from the backup on demand while the mount copies the
    /// rest in the background (progress in MOUNT/control/jobs; resumed after a restart).
    #[arg(long, value_name = "MOUNT", requires = "volume")]
    live: Option<PathBuf>,
    /// With --live: the new volume's name (default: the backup's name for it).
    #[arg(long = "as", value_name = "NEWNAME", requires = "live")]
    as_name: Option<String>,
}

/// Arguments of `snarf check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The repository.
    repo: PathBuf,
    /// Also read every chunk, decompress it and verify its hash (reads all stored data).
    #[arg(long)]
    read_data: bool,
}

/// Arguments of `snarf prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The repository.
    repo: PathBuf,
    /// Keep the newest N backups.
    #[arg(long, value_name = "N", value_parser = keep_count())]
    keep_last: u32,
    /// Also keep the newest backup of each of the last N days that have backups (UTC).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = keep_count())]
    keep_daily: u32,
    /// Also keep the newest backup of each of the last N ISO weeks that have backups.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = keep_count())]
    keep_weekly: u32,
    /// Also keep the newest backup of each of the last N months that have backups.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = keep_count())]
    keep_monthly: u32,
    /// Only show what would be kept and removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `snarf repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    command: RepairCommand,
}

#[derive(Debug, Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the packs' own records (and repo.json, if it is missing or
    /// damaged), then complete any pending finishing. Safe to interrupt and run again.
    Index(RepairIndexArgs),
}

/// Arguments of `snarf repair index`.
#[derive(Debug, Args)]
struct RepairIndexArgs {
    /// The repository.
    repo: PathBuf,
}

/// A retention count: 0 to [`repo::retention::MAX_KEEP`].
pub fn keep_count() -> clap::builder::RangedU64ValueParser<u32> {
    clap::builder::RangedU64ValueParser::<u32>::new()
        .range(0..=u64::from(repo::retention::MAX_KEEP))
}

/// Arguments of `snarf finishing`.
#[derive(Debug, Args)]
pub struct FinishingArgs {
    /// One or more repositories.
    #[arg(required = true)]
    repos: Vec<PathBuf>,
    /// Print JSON (the same as control/finishing.json on a mount).
    #[arg(long)]
    json: bool,
}

/// Prints rows as aligned columns, the first row being the header.
fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Progress on stderr: a self-rewriting line on a terminal, plain lines at most every few
/// seconds otherwise (so logs of cron jobs stay short).
struct Progress {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn update(&mut self, label: &str, done: u64, total: u64, bytes: bool) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|t| t.elapsed() < every) && done < total {
            return;
        }
        self.last = Some(Instant::now());
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let amount = if bytes {
            format!("{} of {}", Bytes(done), Bytes(total))
        } else {
            format!("{done} of {total}")
        };
        if self.tty {
            const WIDTH: usize = 30;
            let filled = ((pct / 100.0) * WIDTH as f64) as usize;
            let bar: String =
                "#".repeat(filled.min(WIDTH)) + &"-".repeat(WIDTH - filled.min(WIDTH));
            eprint!("\r\x1b[K{label} [{bar}] {pct:5.1}% {amount}");
            self.drawn = true;
        } else {
            eprintln!("{label}: {pct:.0}% ({amount})");
        }
    }

    fn finish(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// `snarf repo ...`.
pub fn repo(args: RepoArgs) -> CliResult {
    match args.command {
        RepoCommand::Init(a) => {
            let location = Location::of_arg(&a.repo)?;
            if a.encryption && a.format == 1 {
                return Err(CliError::new(format!(
                    "{}: a format 1 repository cannot be encrypted; leave out --format 1 (format 2 is the default)",
                    a.repo.display()
                )));
            }
            let opts = InitOptions {
                format: a.format,
                compression: a.compression,
                pack_target: a.pack_size,
                encryption: if a.encryption {
                    Some(key_cmds::first_key(&a.repo, &a.slot)?)
                } else {
                    None
                },
            };
            Handle::init(&location, &opts)?;
            println!(
                "created {}repository {} (format {}, zstd level {}, packs of {})",
                if a.encryption { "encrypted " } else { "" },
                a.repo.display(),
                opts.format,
                opts.compression,
                Bytes(opts.pack_target)
            );
            Ok(())
        }
        RepoCommand::Upgrade(a) => upgrade(a),
        RepoCommand::Key(a) => key_cmds::key(a),
    }
}

/// `snarf repo upgrade`.
fn upgrade(a: RepoUpgradeArgs) -> CliResult {
    let location = Location::of_arg(&a.repo)?;
    let path = location.local_path().ok_or_else(|| {
        CliError::new(format!(
            "{}: only a local folder can be upgraded",
            a.repo.display()
        ))
    })?;
    let r = repo::upgrade::upgrade(path, location.backend()?, &repo::upgrade::step_point)?;
    if r.was_format_2 {
        println!("{} is a format 2 repository already", a.repo.display());
    } else {
        println!(
            "upgraded {} to format 2: {} backup(s) converted{}; its packs are kept as they are",
            a.repo.display(),
            r.backups + r.already,
            if r.already > 0 {
                format!(" ({} by an earlier, interrupted run)", r.already)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// `snarf backups`: one line per committed backup.
pub fn backups(args: BackupsArgs) -> CliResult {
    let repo = open(&args.repo)?;
    if args.json {
        let all = repo.list_backups()?;
        let text = serde_json::to_string_pretty(&all)
            .map_err(|e| CliError::new(format!("cannot encode the backup list: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let mut rows = vec![
        ["ID", "TIME (UTC)", "SNAPSHOT", "VOLUMES", "SIZE", "STORED"]
            .map(String::from)
            .to_vec(),
    ];
    for m in repo.list_backups()? {
        rows.push(vec![
            m.id.to_string(),
            m.created_utc.clone(),
            m.snapshot.clone(),
            m.volumes.len().to_string(),
            Bytes(m.total_size()).to_string(),
            Bytes(m.stats.new_stored_bytes).to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `snarf restore`.
pub fn restore(args: RestoreArgs) -> CliResult {
    if let Some(mount) = &args.live {
        return restore_live(&args, mount);
    }
    let Some(dest) = &args.dest else {
        return Err(CliError::new(
            "snarf restore needs a destination folder, or --live MOUNT".to_string(),
        ));
    };
    let repo = open(&args.repo)?;
    let mut progress = Progress::new();
    let result = repo.restore(&args.backup, args.volume.as_deref(), dest, &mut |p| {
        progress.update(&format!("restoring {}", p.volume), p.done, p.total, true)
    });
    progress.finish();
    let s = result?;
    println!(
        "restored {} volume(s) of backup {} into {}: {} ({} as holes) in {:.1} s",
        s.files.len(),
        args.backup,
        dest.display(),
        Bytes(s.bytes),
        Bytes(s.hole_bytes),
        s.seconds
    );
    Ok(())
}

/// `snarf restore --live MOUNT`: hands the restore to the mount through `control/jobs`.
fn restore_live(args: &RestoreArgs, mount: &std::path::Path) -> CliResult {
    let Some(volume) = args.volume.clone() else {
        return Err(CliError::new(
            "snarf restore --live needs --volume NAME".to_string(),
        ));
    };
    // A local folder made absolute (the daemon runs elsewhere); a URL as written.
    let repo = match crate::repo::Location::of_arg(&args.repo)? {
        crate::repo::Location::Local(_) => {
            std::path::absolute(&args.repo).unwrap_or_else(|_| args.repo.clone())
        }
        crate::repo::Location::Ssh(_) | crate::repo::Location::S3(_) => args.repo.clone(),
    };
    let request = crate::control::RestoreRequest {
        backup: args.backup.clone(),
        volume,
        name: args.as_name.clone(),
        repo: Some(repo),
    };
    let name = request.new_name().to_string();
    // The grammar's own rendering of the command, so it parses back to this request.
    let command = crate::control::Command::Restore(request).to_string();
    let id = super::control_cmds::send(mount, "jobs", &command)?
        .trim()
        .to_string();
    println!(
        "{}/live/{name} is served now; job {id} copies the rest (see {}/control/jobs)",
        mount.display(),
        mount.display()
    );
    Ok(())
}

/// `snarf check`: exits non-zero if anything is wrong.
pub fn check(args: CheckArgs) -> CliResult {
    let repo = open(&args.repo)?;
    let mut progress = Progress::new();
    let result = repo.check(args.read_data, &mut |p| {
        progress.update(&format!("checking {}", p.phase), p.done, p.total, false)
    });
    progress.finish();
    let r = result?;
    for p in &r.problems {
        println!("DAMAGED  {p}");
    }
    println!(
        "checked {} backups, {} volumes, {} snarfs, {} packs with {} chunks, {} index records{}",
        r.backups,
        r.volumes,
        r.snarfs,
        r.packs,
        r.chunks,
        r.index_records,
        if args.read_data {
            format!("; read and verified {} chunks", r.chunks_read)
        } else {
            String::new()
        }
    );
    if !r.unreferenced_packs.is_empty() {
        println!(
            "{} pack(s) are referenced by no backup; the next prune removes them",
            r.unreferenced_packs.len()
        );
    }
    if r.is_ok() {
        println!("no problems found");
        Ok(())
    } else {
        Err(CliError::new(format!(
            "{} problem(s) found in {}; each DAMAGED line says what is wrong and what to do",
            r.problems.len(),
            args.repo.display()
        )))
    }
}

/// `snarf prune`.
pub fn prune(args: PruneArgs) -> CliResult {
    let repo = open(&args.repo)?;
    let policy = Policy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
    };
    let r = repo.prune(&policy, args.dry_run)?;
    let mut rows = vec![["ACTION", "ID", "TIME (UTC)", "REASON"]
        .map(String::from)
        .to_vec()];
    for d in &r.decisions {
        rows.push(vec![
            if d.keep {
                "keep"
            } else if r.dry_run {
                "would remove"
            } else {
                "remove"
            }
            .to_string(),
            d.id.to_string(),
            repo::ids::format_utc(d.created),
            d.reason.clone(),
        ]);
    }
    print_table(&rows);
    for d in &r.damaged {
        println!("warning: {d}");
    }
    let removed = r.decisions.iter().filter(|d| !d.keep).count();
    println!(
        "{}{} backup(s) kept, {removed} removed, {} pack(s) and {} freed",
        if r.dry_run { "dry run: " } else { "" },
        r.decisions.len() - removed,
        r.packs_removed,
        Bytes(r.freed_bytes)
    );
    Ok(())
}

/// `snarf repair ...`.
pub fn repair(args: RepairArgs) -> CliResult {
    match args.command {
        RepairCommand::Index(a) => repair_index(a),
    }
}

/// `snarf repair index`: exits non-zero if the repository still cannot be written to.
fn repair_index(args: RepairIndexArgs) -> CliResult {
    if let Ok(Handle::V2(_)) = open(&args.repo) {
        return Err(CliError::new(format!(
            "{} is a format 2 repository, whose index needs no rebuilding by hand: the next backup indexes the packs of killed writers from their trailers, and `snarf check {}` names any damage",
            args.repo.display(),
            args.repo.display()
        )));
    }
    let mut progress = Progress::new();
    let result = repo::repair::repair_index(&args.repo, &mut |p| {
        progress.update("reading pack trailers", p.done, p.total, false)
    });
    progress.finish();
    let r = result?;
    if let Some(what) = &r.config_rebuilt {
        println!("{what}");
    }
    for d in &r.damaged_packs {
        println!("DAMAGED  {d}: its chunks are not indexed; `snarf check {} --read-data` names the backups that use it", args.repo.display());
    }
    println!(
        "rebuilt the index of {} from {} pack(s): {} chunk(s) indexed, {} old index run(s) replaced",
        args.repo.display(),
        r.packs,
        r.chunks,
        r.runs_replaced
    );
    match r.still_stuck {
        None => Ok(()),
        Some(why) => Err(CliError::new(why)),
    }
}

/// `snarf finishing`: one line per repository.
pub fn finishing(args: FinishingArgs) -> CliResult {
    let mut rows = Vec::new();
    let mut failed = None;
    for path in &args.repos {
        let shown = path.display().to_string();
        // Opened without completing anything, so an interrupted finishing shows as it is.
        match Location::of_arg(path)
            .and_then(|l| Handle::open_quiet(&l))
            .and_then(|r| r.finishing_status())
        {
            Ok(status) => rows.push(control::FinishingRow::from_status(&shown, &status)),
            Err(e) => {
                rows.push(control::FinishingRow::unreadable(
                    &shown,
                    &e.chain().to_string(),
                ));
                failed = Some(e);
            }
        }
    }
    if args.json {
        print!("{}", control::render_finishing_json(&rows));
    } else {
        print!("{}", control::render_finishing(&rows));
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
