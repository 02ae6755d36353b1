//! The words of backup jobs, in one place for every layer above: what a backup is asked to
//! do ([`BackupRequest`], its [`Mode`]) and where a job is in its life ([`JobState`]).
//! `control` parses and renders them, the daemon starts and lists jobs with them, the
//! command line takes them as options; none of those keeps its own copy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pids::ProcType;

/// How much a backup reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every snarf.
    Full,
    /// Only snarfs changed since the volume's last backup; fails when that cannot be known.
    Incremental,
    /// Incremental where possible, full otherwise.
    #[default]
    Auto,
}

impl Mode {
    /// Every mode, in the order help texts list them.
    pub const ALL: [Mode; 3] = [Mode::Full, Mode::Incremental, Mode::Auto];

    /// The word used on the command line and in control commands.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Auto => "auto",
        }
    }

    /// The mode a word names, if it names one (exactly, lowercase).
    pub fn from_word(word: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == word)
    }

    /// What the mode does, in one line of help.
    pub fn help(self) -> &'static str {
        match self {
            Mode::Full => "Read every snarf",
            Mode::Incremental => {
                "Read only snarfs changed since the volume's last backup; fail if that is unknown"
            }
            Mode::Auto => "Incremental where the changed-snarf tracking allows, full otherwise",
        }
    }
}

/// What a backup job is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRequest {
    /// The snapshot to back up (`converge` labels a converge backup, which names none).
    pub snapshot: String,
    /// A converge backup of the live volumes instead of a snapshot's.
    pub converge: bool,
    /// Repository (absolute path); `None` means the store's default repository.
    pub repo: Option<PathBuf>,
    /// Volumes to include; `None` means every volume of the snapshot.
    pub volumes: Option<Vec<String>>,
    /// Full, incremental, or let snarf choose.
    pub mode: Mode,
    /// The process type the job registers as: `user` unless a cron runner says `cron`.
    pub kind: ProcType,
    /// Retention applied to the repository once the backup is committed (`keep-*=N`
    /// options); `None`: nothing is pruned.
    pub keep: Option<crate::repo::retention::Policy>,
}

impl BackupRequest {
    /// A converge backup of every live volume, to the default repository, in auto mode,
    /// as a `user` job.
    pub fn converge() -> BackupRequest {
        BackupRequest {
            converge: true,
            ..BackupRequest::new(CONVERGE_LABEL)
        }
    }

    /// A request for every volume of `snapshot`, to the default repository, in auto mode,
    /// as a `user` job.
    pub fn new(snapshot: &str) -> BackupRequest {
        BackupRequest {
            snapshot: snapshot.to_string(),
            converge: false,
            repo: None,
            volumes: None,
            mode: Mode::Auto,
            kind: ProcType::User,
            keep: None,
        }
    }
}

/// What a converge backup is called where a snapshot's name would stand (listings, the
/// backup's recorded snapshot), in parentheses so that a user's snapshot called
/// `converge` reads differently in a listing.
pub const CONVERGE_LABEL: &str = "(converge)";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to start.
    Queued,
    /// Transferring data.
    Running,
    /// Committing the backup (goes forward even after a crash).
    Finishing,
    /// Committed.
    Done,
    /// Ended with an error (see the reason).
    Failed,
    /// Cancelled before it committed.
    Cancelled,
}

impl JobState {
    /// The lowercase word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Finishing => "finishing",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has not ended yet.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Finishing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_words_round_trip_and_match_serde() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_word(m.as_str()), Some(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        assert_eq!(Mode::from_word("Full"), None);
        assert_eq!(Mode::from_word(""), None);
        assert_eq!(Mode::default(), Mode::Auto);
    }

    #[test]
    fn job_state_words_match_serde() {
        use JobState::*;
        for s in [Queued, Running, Finishing, Done, Failed, Cancelled] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.is_active(), matches!(s, Queued | Running | Finishing));
        }
    }
}
