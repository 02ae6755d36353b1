//! The command line of a backup job process, as one spec: the daemon builds a job's
//! arguments and environment from [`BackupSpec`], and `snarf backup` names its options and
//! reads its environment with the same constants, so the two cannot drift apart.
//!
//! Every option is written `--key=value`, then `--`, then the positional arguments. Names
//! come from users (a snapshot may be called `--help`, a volume `-v`), so nothing they chose
//! can be read as an option.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use super::vocab::BackupRequest;

/// The subcommand that runs one backup job.
pub const SUBCOMMAND: &str = "backup";
/// The environment variable naming the process type a job registers as (`user` when
/// unset); the cron runner sets it to `cron`, the daemon to the type its requester gave.
pub const PROCESS_TYPE_ENV: &str = "SNARF_PROCESS_TYPE";

/// Option names of `snarf backup`, without their leading `--`.
pub mod opt {
    /// The repository.
    pub const REPO: &str = "repo";
    /// One volume to back up (repeated for more).
    pub const VOLUME: &str = "volume";
    /// Full, incremental or auto.
    pub const MODE: &str = "mode";
    /// A converge backup of the live volumes (no snapshot named).
    pub const CONVERGE: &str = "converge";
    /// The id of a job started through `control/jobs`.
    pub const JOB_ID: &str = "job-id";
    /// Runs the job as the far end of `snarf backup --host`; the value names the host that
    /// asked (see `cli::host_job`).
    pub const REMOTE_JOB: &str = "remote-job";
}

/// One job process the daemon starts for a `backup` command of `control/jobs`.
#[derive(Debug, Clone, Copy)]
pub struct BackupSpec<'a> {
    /// The mount point the job backs up from.
    pub mountpoint: &'a Path,
    /// What was asked.
    pub request: &'a BackupRequest,
    /// The repository, resolved (the request's, or the mount's default).
    pub repository: &'a Path,
    /// The job's id in `control/jobs`.
    pub job_id: &'a str,
}

impl BackupSpec<'_> {
    /// The process's arguments, after the executable: options, `--`, positionals.
    pub fn argv(&self) -> Vec<OsString> {
        let option = |key: &str, value: &OsStr| {
            let mut a = OsString::from(format!("--{key}="));
            a.push(value);
            a
        };
        let req = self.request;
        let mut argv: Vec<OsString> = vec![
            SUBCOMMAND.into(),
            option(opt::REPO, self.repository.as_os_str()),
            option(opt::JOB_ID, OsStr::new(self.job_id)),
            option(opt::MODE, OsStr::new(req.mode.as_str())),
        ];
        for v in req.volumes.iter().flatten() {
            argv.push(option(opt::VOLUME, OsStr::new(v)));
        }
        // Retention after the commit: `--keep-daily=14`, the names of `snarf prune`.
        for (key, n) in req.keep.iter().flat_map(|p| p.options()) {
            argv.push(option(key, OsStr::new(&n.to_string())));
        }
        if req.converge {
            argv.push(format!("--{}", opt::CONVERGE).into());
        }
        argv.push("--".into());
        argv.push(self.mountpoint.as_os_str().to_owned());
        if !req.converge {
            argv.push(req.snapshot.clone().into());
        }
        argv
    }

    /// The environment the process needs beside the daemon's own: the process type it
    /// registers as.
    pub fn env(&self) -> [(&'static str, &'static str); 1] {
        [(PROCESS_TYPE_ENV, self.request.kind.as_str())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Mode;
    use crate::pids::ProcType;

    #[test]
    fn options_come_first_then_a_double_dash_then_the_names() {
        let mut req = BackupRequest::new("--help");
        req.volumes = Some(vec!["-v".into()]);
        req.mode = Mode::Full;
        req.kind = ProcType::Cron;
        req.keep = Some(crate::repo::retention::Policy {
            keep_daily: 14,
            keep_monthly: 2,
            ..Default::default()
        });
        let spec = BackupSpec {
            mountpoint: Path::new("/mnt/x"),
            request: &req,
            repository: Path::new("/srv/r"),
            job_id: "7-1",
        };
        let argv: Vec<String> = spec
            .argv()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv,
            [
                "backup",
                "--repo=/srv/r",
                "--job-id=7-1",
                "--mode=full",
                "--volume=-v",
                "--keep-daily=14",
                "--keep-monthly=2",
                "--",
                "/mnt/x",
                "--help"
            ]
        );
        assert_eq!(spec.env(), [("SNARF_PROCESS_TYPE", "cron")]);
    }
}
