//! The files under `MOUNTPOINT/control/`: their names, which of them take commands, and the
//! usage text a rejected write reads back.

use std::fmt;

/// One file under `control/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlFile {
    /// `control/snapshot`: create and release snapshots.
    Snapshot,
    /// `control/jobs`: start and cancel backups; reads as the job table.
    Jobs,
    /// `control/pids`: the process registry (read-only).
    Pids,
    /// `control/finishing`: each repository's finishing state (read-only).
    Finishing,
    /// `control/status`: volumes, snapshots, pre-image budgets, throttling (read-only).
    Status,
    /// `control/jobs.json`: the job table as JSON (read-only).
    JobsJson,
    /// `control/pids.json`: the process registry as JSON (read-only).
    PidsJson,
    /// `control/finishing.json`: finishing states as JSON (read-only).
    FinishingJson,
    /// `control/status.json`: the status report as JSON (read-only).
    StatusJson,
    /// `control/metrics`: the mount's figures in the Prometheus text format (read-only).
    Metrics,
    /// `control/schedule`: the schedule file; a write replaces it whole.
    Schedule,
    /// `control/schedule-status`: each schedule line's next run, last run and result.
    ScheduleStatus,
}

/// Usage of `control/snapshot`.
const SNAPSHOT_USAGE: &str = "create NAME [volatile|persistent]\nrelease NAME";
/// Usage of `control/jobs`.
/// Usage of `control/schedule`.
const SCHEDULE_USAGE: &str = "MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK backup snapshot=auto|SNAPSHOT [repo=/ABSOLUTE/PATH|ssh://[USER@]HOST[:PORT]/PATH] [volumes=NAME,NAME...] [mode=full|incremental|auto] [keep-last=N] [keep-daily=N] [keep-weekly=N] [keep-monthly=N]\n@hourly|@daily|@weekly|@monthly|@yearly backup ...\n# a comment (times are UTC; the whole file in one write replaces the schedule)";
/// Usage of `control/jobs`.
const JOBS_USAGE: &str = "backup SNAPSHOT [repo=/ABSOLUTE/PATH|ssh://[USER@]HOST[:PORT]/PATH] [volumes=NAME,NAME...] [mode=full|incremental|auto] [type=user|cron] [keep-last=N] [keep-daily=N] [keep-weekly=N] [keep-monthly=N]\ncancel JOB-ID\nrestore BACKUP volume=NAME live [as=NEWNAME] [repo=/ABSOLUTE/PATH|ssh://[USER@]HOST[:PORT]/PATH]";

impl ControlFile {
    /// Every control file, in directory-listing order.
    pub const ALL: [ControlFile; 12] = [
        ControlFile::Snapshot,
        ControlFile::Jobs,
        ControlFile::Pids,
        ControlFile::Finishing,
        ControlFile::Status,
        ControlFile::JobsJson,
        ControlFile::PidsJson,
        ControlFile::FinishingJson,
        ControlFile::StatusJson,
        ControlFile::Metrics,
        ControlFile::Schedule,
        ControlFile::ScheduleStatus,
    ];

    /// The file name under `control/`.
    pub fn name(self) -> &'static str {
        match self {
            ControlFile::Snapshot => "snapshot",
            ControlFile::Jobs => "jobs",
            ControlFile::Pids => "pids",
            ControlFile::Finishing => "finishing",
            ControlFile::Status => "status",
            ControlFile::JobsJson => "jobs.json",
            ControlFile::PidsJson => "pids.json",
            ControlFile::FinishingJson => "finishing.json",
            ControlFile::StatusJson => "status.json",
            ControlFile::Metrics => "metrics",
            ControlFile::Schedule => "schedule",
            ControlFile::ScheduleStatus => "schedule-status",
        }
    }

    /// The control file called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ControlFile> {
        ControlFile::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether writes to this file carry commands (otherwise it is a read-only table).
    pub fn takes_commands(self) -> bool {
        matches!(self, ControlFile::Snapshot | ControlFile::Jobs)
    }

    /// Whether the file may be written: the command files, and the schedule, whose writes
    /// replace it.
    pub fn is_writable(self) -> bool {
        self.takes_commands() || self == ControlFile::Schedule
    }

    /// Whether this is the JSON twin of a table.
    pub fn is_json(self) -> bool {
        self.name().ends_with(".json")
    }

    /// What reading the file shows (or writing it does), one sentence for snarf(8).
    pub fn summary(self) -> &'static str {
        match self {
            ControlFile::Snapshot => "Create and release snapshots; reads as the snapshot table.",
            ControlFile::Jobs => "Start and cancel backup jobs; reads as the job table (id, type, state, progress, rate). A backup command reads back its job id.",
            ControlFile::Pids => "The snarf processes registered for the store, with their types.",
            ControlFile::Finishing => "Each repository's finishing state: idle, or the backup or prune being committed and its step.",
            ControlFile::Status => "Volumes, snapshots (and why one broke), pre-image memory and disk against their budgets, throttling.",
            ControlFile::JobsJson => "control/jobs as JSON.",
            ControlFile::PidsJson => "control/pids as JSON.",
            ControlFile::FinishingJson => "control/finishing as JSON.",
            ControlFile::StatusJson => "control/status as JSON.",
            ControlFile::Schedule => "The schedule the daemon runs (STORE/schedule): crontab lines (UTC) each followed by a backup command. A write replaces the whole file atomically; a schedule with a bad line is refused (EINVAL, the line numbers read back) and the old one stays in force.",
            ControlFile::ScheduleStatus => "Each schedule line with its next run, its last run and that run's result, then lines of STORE/schedule that do not run and why (snarf schedule MOUNT shows it).",
            ControlFile::Metrics => "Pre-image memory and disk against their budgets, throttling, broken snapshots, jobs, the last backup of each volume and live I/O per volume, in the Prometheus text format 0.0.4 (snarf metrics MOUNT --listen serves it over HTTP).",
        }
    }

    /// The accepted form of a write to this file, one command per line.
    pub fn usage(self) -> &'static str {
        match self {
            ControlFile::Snapshot => SNAPSHOT_USAGE,
            ControlFile::Jobs => JOBS_USAGE,
            ControlFile::Schedule => SCHEDULE_USAGE,
            _ => "(none: this file is read-only; read it with cat, and write commands to control/snapshot or control/jobs)",
        }
    }
}

impl fmt::Display for ControlFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control/{}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_two_files_take_commands() {
        for f in ControlFile::ALL {
            assert_eq!(ControlFile::from_name(f.name()), Some(f));
            assert_eq!(f.is_writable(), !f.usage().contains("read-only"));
        }
        assert_eq!(ControlFile::from_name("nope"), None);
        let writable: Vec<_> = ControlFile::ALL
            .into_iter()
            .filter(|f| f.takes_commands())
            .collect();
        assert_eq!(writable, [ControlFile::Snapshot, ControlFile::Jobs]);
        let writable: Vec<_> = ControlFile::ALL
            .into_iter()
            .filter(|f| f.is_writable())
            .collect();
        assert_eq!(
            writable,
            [
                ControlFile::Snapshot,
                ControlFile::Jobs,
                ControlFile::Schedule
            ]
        );
        assert_eq!(ControlFile::PidsJson.to_string(), "control/pids.json");
        assert!(ControlFile::StatusJson.is_json() && !ControlFile::Status.is_json());
    }
}
