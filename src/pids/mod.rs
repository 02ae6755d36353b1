//! The process registry in the store's `run/` folder: every snarf process that runs a job
//! registers with its type (user, cron, remote, sshpipe) so stale and idle ones can be found.
//! An entry is identified by pid, process start time and boot id, so a reused pid is never
//! mistaken for a live snarf process; the file is changed only under a lock, replaced
//! atomically, cleaned of dead entries at every change and deleted when empty.
//!
//! The registry file `run/pids` is JSON lines, one process per line, in registration order:
//!
//! ```text
//! {"pid":4242,"start_time":81234,"boot_id":"6f1c…","type":"user","state":"idle","job":"","repo":"/srv/repo","registered":1714557600,"cmdline":["snarf","backup","nightly"],"pid_ns":4026531836}
//! ```
//!
//! `start_time` is field 22 of /proc/PID/stat (clock ticks since boot), `boot_id` is
//! /proc/sys/kernel/random/boot_id, `pid_ns` the inode of /proc/PID/ns/pid (a pid means
//! another process in another PID namespace), `type` is user|cron|remote|sshpipe, `state` is
//! idle|running|finishing, `registered` is seconds since the Unix epoch, `host` (only for jobs
//! over ssh) the other host: who started a `remote` job, where an `sshpipe` job runs.
//! Unknown fields are ignored and `job`, `repo`, `cmdline`, `host` may be missing, so the
//! format can grow. Besides the stores' registries there is one host-wide registry
//! ([`host`]) of the local ends of `snarf backup --host` jobs. Changes are
//! made under an flock on `run/pids.lock`; the lock file is deleted with the registry.
//!
//! Modules: [`entry`] (the entry and the file format), [`procfs`] (reading /proc),
//! [`registry`] (the locked file), [`host`] (the host-wide registry of `sshpipe` jobs),
//! [`registration`] (a process's own entry and signals),
//! [`idle`] (whom a new user job stops, as a pure function), [`stop`] (carrying it out).

pub mod entry;
pub mod host;
pub mod idle;
pub mod procfs;
pub mod registration;
pub mod registry;
pub mod stop;

#[cfg(test)]
mod process_tests;

use std::path::{Path, PathBuf};

pub use entry::{Entry, ProcState, ProcType};
pub use idle::{plan_stop_idle, IdleSweep, StopReason, Victim};
pub use procfs::{ProcFs, ProcessInfo, ProcessSource, HELPER_ENV};
pub use registration::{exit_on_signals, NewEntry, Registration};
pub use registry::Registry;
pub use stop::{terminate, Outcome, StopOptions, Stopped};

/// Errors of the process registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run folder is missing.
    #[error("the run folder {path} does not exist; give the run/ folder of an existing store (create one with `snarf init`)")]
    NoRunDir {
        /// The folder.
        path: PathBuf,
    },
    /// The host-wide registry (of `--host` jobs) has no usable folder.
    #[error("the host-wide registry of `snarf backup --host` jobs (shown by `snarf pids`) cannot be used: {why}; run as root (it is /run/snarf/pids), or log in so XDG_RUNTIME_DIR names your own runtime folder")]
    NoHostRunDir {
        /// What is wrong.
        why: String,
    },
    /// /proc could not tell who a process is.
    #[error("cannot identify processes, for which snarf needs /proc mounted (mount -t proc proc /proc): {context}")]
    Proc {
        /// What snarf was reading.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SIGTERM/SIGINT handling could not be set up.
    #[error("cannot watch for SIGTERM and SIGINT, so the process does not start (it would leave its registry entry behind when stopped)")]
    Signals {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a registry file failed.
    #[error("{context} (check the store's run/ folder is writable)")]
    Io {
        /// What snarf was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A /proc error with context.
    pub fn proc(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Proc {
            context: context.into(),
            source,
        }
    }
}

/// Result of the registry layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Marks a command about to be spawned as a helper of the store whose run folder is
/// `run_dir`, so a later [`Registry::stop_idle`] may stop it if it is left behind.
pub fn mark_helper(cmd: &mut std::process::Command, run_dir: &Path) {
    cmd.env(HELPER_ENV, run_dir);
}
