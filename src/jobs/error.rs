//! The jobs layer's error type: what went wrong in a backup job, worded for the person who
//! started it, with what to do.

/// Errors of backup jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the snapshot engine (no such snapshot, broken snapshot, I/O).
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// From the store.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// From the repository (locked, missing, damaged, disk full).
    #[error(transparent)]
    Repo(#[from] crate::repo::Error),
    /// From the process registry.
    #[error(transparent)]
    Pids(#[from] crate::pids::Error),
    /// The plan cannot be made as asked (e.g. mode=incremental without a usable base).
    #[error("{0}")]
    Plan(String),
    /// The repository was moved, deleted or unmounted while the job wrote to it.
    #[error("the repository {} disappeared during the backup (moved, deleted, or its disk unmounted): nothing was committed; put it back at that path and run the backup again ({detail})", .repo.display())]
    RepoGone {
        /// Where the repository was.
        repo: std::path::PathBuf,
        /// The failure that revealed it.
        detail: String,
    },
    /// A snapshot's snarf whose pre-image was freed after a backup stored it could not be
    /// read back from that repository.
    #[error("{0}")]
    FreedSnarf(String),
    /// The mount daemon stopped answering or closed the connection mid-job.
    #[error("the mount daemon went away during the backup ({0}); nothing was committed, the repository is unchanged; run the backup again once the store is mounted")]
    DaemonGone(String),
    /// The other end said something that does not follow the protocol.
    #[error("protocol error talking to the mount daemon: {0}")]
    Protocol(String),
    /// The daemon refused a request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// The job was stopped (a signal, or the daemon is shutting down).
    #[error("the backup was stopped: {0}; nothing was committed")]
    Stopped(String),
    /// No connected job has this id or pid.
    #[error("no job {0}; control/jobs lists them")]
    NoSuchJob(String),
    /// The job has ended; there is nothing left to cancel.
    #[error("job {0} has already ended")]
    JobEnded(String),
    /// The job is committing its backup, which is never undone.
    #[error("job {0} is committing its backup; a commit is never undone")]
    Committing(String),
    /// An I/O error with context.
    #[error("{context}")]
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

    /// Whether the error comes from a full disk somewhere below (an errno in the chain
    /// of causes, never words in a message).
    pub fn is_disk_full(&self) -> bool {
        crate::chain::is_disk_full(self)
    }

    /// What to do about the full disk the error comes from, if it comes from one: the
    /// repository's, or another (a job's temporary files, the store's).
    pub fn disk_full_advice(&self) -> Option<&'static str> {
        if !self.is_disk_full() {
            return None;
        }
        Some(match self {
            Error::Repo(_) => "the repository's disk is full: nothing was committed; free space (for example `snarf prune`) and run the backup again",
            _ => "a disk is full; nothing was committed: free space and run the backup again",
        })
    }
}

/// Result of the jobs layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn locked_at(path: &str) -> Error {
        crate::repo::Error::Locked {
            path: path.into(),
            holder: "snarf prune (pid 7)".into(),
        }
        .into()
    }

    #[test]
    fn a_full_repository_disk_is_told_by_its_errno_not_by_words() {
        // A repository whose path reads like a full disk is only locked.
        let e = locked_at("/srv/No space left on device (os error 28)/repo");
        assert!(!e.is_disk_full() && e.disk_full_advice().is_none(), "{e}");
        // A full disk the OS reports by kind alone is one.
        let full =
            crate::repo::Error::io("writing pack 1f", std::io::ErrorKind::StorageFull.into());
        let e = Error::from(full);
        assert!(e.is_disk_full());
        let advice = e.disk_full_advice().unwrap_or_default();
        assert!(advice.contains("the repository's disk is full"), "{advice}");
        // Full below the repository layer is a full disk too, but not the repository's.
        let e = Error::io("spilling", std::io::Error::from_raw_os_error(libc::ENOSPC));
        let advice = e.disk_full_advice().unwrap_or_default();
        assert!(advice.starts_with("a disk is full"), "{advice}");
    }
}
