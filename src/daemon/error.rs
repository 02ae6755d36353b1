//! The daemon layer's error type: why a write to a control file was not carried out. A
//! write that is not a command of its file is the grammar's [`Rejection`]; a command the
//! daemon could not carry out is [`Error::Refused`], naming the file, with the cause. Either
//! way [`Error::answer`] is the text read back on the same descriptor.

use crate::chain::ErrorChain;
use crate::control::{ControlFile, Rejection};
use crate::jobs::JobState;

/// Errors of the daemon layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write is not a command of its file.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A command of `file` that could not be carried out.
    #[error("{file}")]
    Refused {
        /// The file written to.
        file: ControlFile,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// From the snapshot engine (no such snapshot or volume, a name taken, a broken one).
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// From the repository a job would write to.
    #[error(transparent)]
    Repo(#[from] crate::repo::Error),
    /// A schedule written to control/schedule that was not taken.
    #[error(transparent)]
    Schedule(#[from] super::schedule::ScheduleError),
    /// A converge backup was asked into a format 1 repository.
    #[error("converge backups need a format 2 repository, and {repo} is format {format}; upgrade it first with snarf repo upgrade, on the host where it is a local folder")]
    ConvergeNeedsFormat2 {
        /// The repository.
        repo: String,
        /// Its format.
        format: u32,
    },
    /// This daemon serves no mount, so a job has nothing to back up from.
    #[error("this daemon cannot start jobs (it is not serving a mount)")]
    NotServing,
    /// A backup names no repository and the mount has none.
    #[error("no repository given and none configured: add repo=/PATH, or mount with --repo (or snarf init --repo)")]
    NoRepository,
    /// No job has this id.
    #[error("no job with id {0}; see control/jobs for the ids")]
    NoSuchJob(String),
    /// The job has ended; there is nothing left to cancel.
    #[error("job {id} has already ended ({})", .state.as_str())]
    JobEnded {
        /// The job.
        id: String,
        /// How it ended.
        state: JobState,
    },
    /// An I/O error with context.
    #[error("{context}")]
    Io {
        /// What was being done.
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

    /// A command of `file` that failed for `why`.
    pub fn refused(file: ControlFile, why: impl Into<Error>) -> Error {
        Error::Refused {
            file,
            source: Box::new(why.into()),
        }
    }

    /// The text read back after the failed write: the reason, then the accepted form,
    /// ending in a newline.
    pub fn answer(&self) -> String {
        match self {
            Error::Rejected(r) => r.message(),
            Error::Refused { file, .. } => format!(
                "{}\naccepted commands (one per write):\n{}",
                self.chain(),
                file.usage()
            ),
            other => format!("{}\n", other.chain()),
        }
    }
}

/// Result of the daemon layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::control::ControlFile::{Jobs, Snapshot};
    use crate::daemon::Daemon;
    use crate::snapshot::{Engine, EngineOptions};
    use crate::store::{InitOptions, Store};

    fn daemon(dir: &std::path::Path) -> Daemon {
        let root = dir.join("s");
        Store::init(&root, &InitOptions::default()).unwrap();
        let store = Store::open(&root, "test").unwrap();
        let opts = EngineOptions::from_store(&store);
        Daemon::new(Arc::new(Engine::new(store, opts).unwrap()))
    }

    /// The reason, then the accepted form, exactly as a reader of the descriptor sees it.
    fn refusal(file: crate::control::ControlFile, reason: &str) -> String {
        format!(
            "{file}: {reason}\naccepted commands (one per write):\n{}",
            file.usage()
        )
    }

    #[test]
    fn a_refused_command_answers_its_reason_then_the_accepted_form() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        assert_eq!(
            d.control_write(Snapshot, b"create s\n").unwrap(),
            "created snapshot s\n"
        );
        let e = d.control_write(Snapshot, b"create s\n").unwrap_err();
        assert_eq!(
            e.answer(),
            refusal(
                Snapshot,
                "a snapshot named \"s\" already exists; release it first or choose another name"
            )
        );
        let e = d.control_write(Snapshot, b"release nope").unwrap_err();
        assert_eq!(e.answer(), refusal(Snapshot, "no snapshot named \"nope\""));
        let e = d.control_write(Jobs, b"backup s").unwrap_err();
        assert_eq!(
            e.answer(),
            refusal(
                Jobs,
                "no repository given and none configured: add repo=/PATH, or mount with --repo (or snarf init --repo)"
            )
        );
        // No mount: nothing to start a job from, whatever the repository.
        let e = d
            .control_write(Jobs, b"backup s repo=/nowhere")
            .unwrap_err();
        assert_eq!(
            e.answer(),
            refusal(
                Jobs,
                "this daemon cannot start jobs (it is not serving a mount)"
            )
        );
        let e = d.control_write(Jobs, b"cancel 7-1").unwrap_err();
        assert_eq!(
            e.answer(),
            refusal(Jobs, "no job with id 7-1; see control/jobs for the ids")
        );
        // Not a command at all: the grammar's own message.
        let e = d.control_write(Jobs, b"destroy x").unwrap_err();
        let rejection = crate::control::parse(Jobs, b"destroy x").unwrap_err();
        assert_eq!(e.answer(), rejection.message());
    }
}
