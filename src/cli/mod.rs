//! The `snarf` command line: parses arguments with clap, calls the layers below and prints.
//! Each group of commands lives in its own file; this one only dispatches.

mod backup_cmds;
mod control_cmds;
mod copy_cmd;
mod demo_cmd;
mod generate_cmd;
mod host_job;
mod key_cmds;
mod logging;
mod metrics_cmd;
mod mount_cmds;
mod mount_options;
mod numbers;
mod progress;
mod repo_cmds;
mod serve_cmd;
mod store_cmds;

use clap::{Parser, Subcommand};

/// Errors the command line reports: a message for a tired administrator, and an exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong and what to do about it.
    pub message: String,
    /// Process exit code.
    pub code: i32,
}

impl CliError {
    /// A failure with exit code 1.
    pub fn new(message: impl std::fmt::Display) -> CliError {
        CliError {
            message: message.to_string(),
            code: 1,
        }
    }
}

/// Converts any layer's error into a command-line failure, with its causes.
macro_rules! impl_from_layer_error {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> CliError {
                CliError::new(crate::chain::Chain::new(&e))
            }
        }
    )*};
}
impl_from_layer_error!(
    crate::store::Error,
    crate::snapshot::Error,
    crate::repo::Error,
    crate::pids::Error,
    crate::daemon::Error,
    crate::units::SizeParseError,
    std::io::Error
);

/// Result of a command.
pub type CliResult = Result<(), CliError>;

/// snarf: live frozen snapshots of a block store over FUSE, backed up into a
/// deduplicated, crash-safe repository.
#[derive(Debug, Parser)]
#[command(name = "snarf", version, about, long_about = None, propagate_version = true,
          after_long_help = "The mount options, fstab and the control files under the mount: snarf(8). Man pages and completions: snarf generate.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The snarf to run on the far host of ssh:// repositories (default: `snarf` on its
    /// PATH; also SNARF_REMOTE_PATH).
    #[arg(long, global = true, value_name = "PATH")]
    remote_path: Option<String>,
    /// File holding the passphrase of encrypted repositories (also SNARF_PASSWORD_FILE;
    /// else SNARF_PASSWORD, else a prompt on a terminal).
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new store: a directory for volumes, pre-image spill space and run state.
    Init(store_cmds::InitArgs),
    /// Show the whole idea on a throwaway store: write, snapshot, copy with cp, compare.
    Demo(demo_cmd::DemoArgs),
    /// Mount a store: live/ volumes, snapshots/, backups/ and control/ files.
    Mount(mount_cmds::MountArgs),
    /// Unmount a store, waiting until its daemon has flushed and closed it.
    Umount(mount_cmds::UmountArgs),
    /// Back up a snapshot into a repository (incremental when possible), as its own process.
    #[command(name = crate::jobs::spec::SUBCOMMAND)]
    Backup(backup_cmds::BackupArgs),
    /// Take, release or list snapshots of a mounted store.
    Snapshot(control_cmds::SnapshotArgs),
    /// Show a mount's volumes, snapshots, pre-image memory and disk, and throttling.
    Status(control_cmds::TableArgs),
    /// Show a mount's backup jobs with their state and progress.
    Jobs(control_cmds::TableArgs),
    /// Print a mount's metrics (Prometheus text format), or serve them with --listen.
    Metrics(metrics_cmd::MetricsArgs),
    /// Show the snarf processes registered for a store (by mount point or store path).
    Pids(control_cmds::PidsArgs),
    /// Show a mount's schedule: each line with its next run, last run and result (--set
    /// replaces it).
    Schedule(control_cmds::ScheduleArgs),
    /// Manage backup repositories (`snarf repo init REPO`).
    Repo(repo_cmds::RepoArgs),
    /// List the committed backups of a repository.
    Backups(repo_cmds::BackupsArgs),
    /// Restore volumes of a backup into a directory as sparse files, verifying every chunk.
    Restore(repo_cmds::RestoreArgs),
    /// Verify a repository's structure, and with --read-data every stored chunk.
    Check(repo_cmds::CheckArgs),
    /// Remove old backups by a retention policy and free the space only they used.
    Prune(repo_cmds::PruneArgs),
    /// Copy backups with their chunks from repository SRC into DST (any two of local,
    /// ssh://, s3://, encrypted or not), sending only what DST lacks; resumable.
    Copy(copy_cmd::CopyArgs),
    /// Repair a damaged repository (`snarf repair index REPO` rebuilds its index).
    Repair(repo_cmds::RepairArgs),
    /// Show each repository's finishing state (the crash-safe commit of backups and prunes).
    Finishing(repo_cmds::FinishingArgs),
    /// Write man pages or shell completions (for packagers and installers).
    Generate(generate_cmd::GenerateArgs),
    /// Serve a repository on stdin/stdout for a client over ssh (`ssh://` repositories).
    Serve(serve_cmd::ServeArgs),
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Some(p) = &cli.remote_path {
        crate::repo::backend::ssh::set_remote_path(p);
    }
    if let Some(p) = &cli.password_file {
        crate::repo::passphrase::set_password_file(p);
    }
    if !matches!(cli.command, Command::Mount(_) | Command::Umount(_)) {
        logging::to_stderr();
    }
    let result = match cli.command {
        Command::Init(args) => store_cmds::init(args),
        Command::Demo(args) => demo_cmd::demo(args),
        Command::Mount(args) => mount_cmds::mount(args),
        Command::Umount(args) => mount_cmds::umount(args),
        Command::Backup(args) => backup_cmds::backup(args),
        Command::Snapshot(args) => control_cmds::snapshot(args),
        Command::Status(args) => control_cmds::status(args),
        Command::Jobs(args) => control_cmds::jobs(args),
        Command::Pids(args) => control_cmds::pids(args),
        Command::Schedule(args) => control_cmds::schedule(args),
        Command::Metrics(args) => metrics_cmd::metrics(args),
        Command::Repo(args) => repo_cmds::repo(args),
        Command::Backups(args) => repo_cmds::backups(args),
        Command::Restore(args) => repo_cmds::restore(args),
        Command::Check(args) => repo_cmds::check(args),
        Command::Prune(args) => repo_cmds::prune(args),
        Command::Copy(args) => copy_cmd::copy(args),
        Command::Repair(args) => repo_cmds::repair(args),
        Command::Finishing(args) => repo_cmds::finishing(args),
        Command::Generate(args) => generate_cmd::generate(args),
        Command::Serve(args) => serve_cmd::serve(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("snarf: {}", e.message);
            e.code
        }
    }
}
