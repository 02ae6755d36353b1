//! `snarf copy SRC DST`: copies backups with their chunks from one repository into another
//! (the 3-2-1 rule: a local repository for fast restores, a copy off-site). The work is in
//! `repo::copy`; this file parses the arguments, gets the two passphrases from their own
//! sources and prints what was sent.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::progress::ProgressDisplay;
use super::CliResult;
use crate::jobs::{Progress, ProgressSink};
use crate::repo::copy::{self, CopyOptions};
use crate::repo::{passphrase, Handle, Location};
use crate::units::Bytes;

/// Arguments of `snarf copy`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Passphrases: DST's comes from the usual sources (--password-file FILE, SNARF_PASSWORD_FILE, \
SNARF_PASSWORD, a prompt); SRC's from its own: --from-password-file FILE, \
SNARF_FROM_PASSWORD_FILE, SNARF_FROM_PASSWORD, a prompt. A passphrase is asked for only if its \
repository is encrypted.

A backup DST has already (same id) is skipped, so running the same copy again sends nothing, \
and a copy that was interrupted resumes: the packs it uploaded are adopted by the next run, \
which sends only the rest. Each backup commits through DST's own finishing under DST's lock.

Example, nightly off-site copy from cron:
  15 3 * * *  SNARF_PASSWORD_FILE=/etc/snarf/s3.pw snarf copy /srv/backups s3://bucket/host1 --latest 7")]
pub struct CopyArgs {
    /// The repository to copy from (a folder, ssh://HOST/PATH or s3://BUCKET/PREFIX; format
    /// 1 or 2).
    src: PathBuf,
    /// The repository to copy into (format 2; made with `snarf repo init`).
    dst: PathBuf,
    /// Copy only this backup (as `snarf backups SRC` lists it); repeat for more.
    #[arg(long = "backup", value_name = "ID")]
    backups: Vec<String>,
    /// Copy only the newest N backups of SRC (of those chosen with --backup, if given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    latest: Option<u64>,
    /// File holding SRC's passphrase, if it is encrypted (also SNARF_FROM_PASSWORD_FILE,
    /// else SNARF_FROM_PASSWORD, else a prompt on a terminal).
    #[arg(long, value_name = "FILE")]
    from_password_file: Option<PathBuf>,
    /// Seconds to wait for DST's lock if another job holds it, up to 604800 (default:
    /// fail at once, naming the holder).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=super::numbers::MAX_WAIT_SECS))]
    lock_wait: Option<u64>,
    /// Print what was copied and sent as JSON on stdout (for scripts).
    #[arg(long)]
    json: bool,
}

/// `snarf copy`.
pub fn copy(args: CopyArgs) -> CliResult {
    let src_at = Location::of_arg(&args.src)?;
    let dst_at = Location::of_arg(&args.dst)?;
    let src_name = src_at.to_string();
    let from_file = args.from_password_file.clone();
    let src = Handle::open_asking(&src_at, &|| {
        passphrase::for_copy_source(&src_name, from_file.as_deref())
    })?;
    let dst = Handle::open(&dst_at)?;
    let opts = CopyOptions {
        backups: args.backups.clone(),
        latest: args
            .latest
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        lock_wait: args.lock_wait.map(Duration::from_secs),
        command: format!("snarf copy {} {}", src.location(), dst.location()),
    };
    let mut display = ProgressDisplay::new(
        &format!("copy to {}", dst.location()),
        std::io::stderr().is_terminal(),
    );
    let result = copy::copy(&src, &dst, &opts, &mut |p| {
        display.report(&Progress {
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
            done_snarfs: p.done_snarfs,
            total_snarfs: p.total_snarfs,
            elapsed: p.elapsed,
        })
    });
    display.finish();
    let report = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(std::io::Error::from)?
        );
        return Ok(());
    }
    for c in &report.copied {
        println!(
            "copied backup {}: sent {} chunks ({} raw, {} stored), {} snarfs already in {}",
            c.id,
            c.sent_chunks,
            Bytes(c.sent_raw_bytes),
            Bytes(c.sent_stored_bytes),
            c.present_snarfs,
            dst.location()
        );
    }
    for id in &report.present {
        println!("backup {id} is in {} already", dst.location());
    }
    println!(
        "copied {} backup(s) from {} to {} ({} there already): sent {} chunks, {} stored",
        report.copied.len(),
        src.location(),
        dst.location(),
        report.present.len(),
        report.sent_chunks(),
        Bytes(report.sent_stored_bytes())
    );
    Ok(())
}
