//! Errors of the mount and the errno each one becomes. Every match is exhaustive, with a
//! comment wherever the errno is not the obvious one, so a new error cannot slip through
//! as a silent EIO.

use crate::chain::ErrorChain;
use crate::daemon::policy::Denied;
use crate::jobs;
use crate::pids;
use crate::repo;
use crate::snapshot;
use crate::store;

/// An error answered to the kernel: the errno, and words for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    /// The errno returned to the caller.
    pub errno: i32,
    /// What went wrong, for the daemon's log.
    pub message: String,
}

impl FsError {
    /// An error with an errno and a message.
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }

    /// No such file or directory.
    pub fn not_found(what: impl Into<String>) -> FsError {
        FsError::new(libc::ENOENT, what)
    }

    /// A write under a read-only part of the mount.
    pub fn read_only(what: impl Into<String>) -> FsError {
        FsError::new(libc::EROFS, what)
    }

    /// Not allowed by the layout of the mount.
    pub fn not_permitted(what: impl Into<String>) -> FsError {
        FsError::new(libc::EPERM, what)
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    // Pass the OS's own errno through (ENOSPC, EDQUOT, EIO from the disk...), so a full
    // disk reads as "No space left on device", not a vague I/O error.
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The errno for a store error.
fn store_errno(e: &store::Error) -> i32 {
    match e {
        store::Error::NoSuchVolume(_) => libc::ENOENT,
        store::Error::VolumeExists(_) => libc::EEXIST,
        store::Error::BadName { name, .. } if name.len() > store::name::MAX_NAME_BYTES => {
            libc::ENAMETOOLONG
        }
        store::Error::BadName { .. } => libc::EINVAL,
        store::Error::Io { source, .. } => io_errno(source),
        store::Error::TooLarge { .. } => libc::EFBIG,
        store::Error::OutOfMemory { .. } => libc::ENOMEM,
        // These concern opening a store, which never happens through the mount; if one
        // does surface, the store itself is unusable.
        store::Error::NotAStore { .. }
        | store::Error::UnknownFormat { .. }
        | store::Error::BadSettings { .. }
        | store::Error::BadState { .. }
        | store::Error::BadSnarfSize { .. }
        | store::Error::NotEmpty { .. } => libc::EIO,
        store::Error::Busy { .. } => libc::EBUSY,
        // The backup's repository did not give a snarf not restored yet.
        store::Error::Fetch { .. } | store::Error::RestoreDamaged { .. } => libc::EIO,
        store::Error::Restoring { .. } => libc::EBUSY,
    }
}

impl From<store::Error> for FsError {
    fn from(e: store::Error) -> FsError {
        FsError::new(store_errno(&e), e.chain().to_string())
    }
}

/// The errno for a snapshot-engine error.
fn snapshot_errno(e: &snapshot::Error) -> i32 {
    match e {
        snapshot::Error::Store(inner) => store_errno(inner),
        snapshot::Error::NoSuchSnapshot(_) | snapshot::Error::NoSuchVolume { .. } => libc::ENOENT,
        snapshot::Error::SnapshotExists(_) => libc::EEXIST,
        snapshot::Error::VolumeReplaced(_) => libc::ENOENT,
        // A broken snapshot can no longer give the data it promised: an I/O error,
        // as a failed disk would give, with the reason in the log and status.
        snapshot::Error::Broken { .. } => libc::EIO,
        // Released under an open file: the file is gone, like an NFS stale handle.
        snapshot::Error::Released { .. } => libc::ESTALE,
        // Only reaches here when the repository could not serve the snarf either.
        snapshot::Error::StoredInBackup { .. } => libc::EIO,
        snapshot::Error::TooLarge { .. } => libc::EFBIG,
        // The volume that stops it is too large to serve (or its bookkeeping does
        // not fit in memory): the errno of that volume's own refusal.
        snapshot::Error::Unserved { why, .. } => store_errno(why),
        snapshot::Error::Io { source, .. } => io_errno(source),
        snapshot::Error::Internal(_) => libc::EIO,
    }
}

impl From<snapshot::Error> for FsError {
    fn from(e: snapshot::Error) -> FsError {
        FsError::new(snapshot_errno(&e), e.chain().to_string())
    }
}

/// The errno for a process-registry error (a job's bookkeeping; the mount's own requests
/// never consult the registry, so one surfacing here means the daemon's store is unwell).
fn pids_errno(e: &pids::Error) -> i32 {
    match e {
        pids::Error::Io { source, .. } => io_errno(source),
        // /proc could not be read, or the signal watcher not set up: nothing the caller
        // asked for is wrong, the machine is; an I/O error as a failing disk would give.
        pids::Error::Proc { .. } | pids::Error::Signals { .. } => libc::EIO,
        // The store's run/ folder went away under the daemon: the store is unusable.
        pids::Error::NoRunDir { .. } => libc::EIO,
        // The host-wide registry of `--host` jobs is the command line's, never the mount's;
        // reaching here would mean a folder nobody can fix through the mount.
        pids::Error::NoHostRunDir { .. } => libc::EACCES,
    }
}

/// The errno for a jobs-layer error (snapshot reads that fall back to a backup's
/// repository, and the job services behind the control files).
fn jobs_errno(e: &jobs::Error) -> i32 {
    match e {
        jobs::Error::Snapshot(inner) => snapshot_errno(inner),
        jobs::Error::Store(inner) => store_errno(inner),
        jobs::Error::Repo(inner) => repo_errno(inner),
        jobs::Error::Pids(inner) => pids_errno(inner),
        jobs::Error::Io { source, .. } => io_errno(source),
        // The repository could not give back a snarf a backup stored (missing, damaged
        // or unreadable): the data is not there, as with a failed disk.
        jobs::Error::FreedSnarf(_) => libc::EIO,
        // A released-snarf table that does not follow its format is damage, not a bad
        // request: EIO, with the table named in the log.
        jobs::Error::Protocol(_) => libc::EIO,
        // A cancel of the job server (control/jobs answers it in text, as the daemon's
        // refusal): should one surface as an errno, what kill(2) would say.
        jobs::Error::NoSuchJob(_) | jobs::Error::JobEnded(_) => libc::ESRCH,
        // Committing is never undone: busy, not failed.
        jobs::Error::Committing(_) => libc::EBUSY,
        // The rest happen only inside a running backup job, never on a request to the
        // mount; should one surface, the caller's data could not be given: EIO.
        jobs::Error::Plan(_)
        | jobs::Error::RepoGone { .. }
        | jobs::Error::DaemonGone(_)
        | jobs::Error::Refused(_)
        | jobs::Error::Stopped(_) => libc::EIO,
    }
}

impl From<jobs::Error> for FsError {
    fn from(e: jobs::Error) -> FsError {
        FsError::new(jobs_errno(&e), e.chain().to_string())
    }
}

/// The errno for a request the mount's rules refuse.
fn denied_errno(e: &Denied) -> i32 {
    match e {
        // Permission to write the file, as the kernel's own check of its bits would say.
        Denied::ControlWriter { .. } => libc::EACCES,
        // A chmod or chown the filesystem does not allow, as chown(2) answers.
        Denied::VolumeAttrs => libc::EPERM,
    }
}

impl From<Denied> for FsError {
    fn from(e: Denied) -> FsError {
        FsError::new(denied_errno(&e), e.chain().to_string())
    }
}

/// The errno for a repository error (reading `backups/`).
fn repo_errno(e: &repo::Error) -> i32 {
    match e {
        repo::Error::NoSuchBackup { .. } | repo::Error::NoSuchVolume { .. } => libc::ENOENT,
        repo::Error::Io { source, .. } => io_errno(source),
        repo::Error::VolumeData { source, .. } => repo_errno(source),
        repo::Error::FinishingStuck { source, .. } => repo_errno(source),
        // Damage, missing packs and a repository that is gone are what a failing disk
        // looks like to a reader: EIO, with the place named in the log.
        repo::Error::Damaged { .. }
        | repo::Error::PackMissing { .. }
        | repo::Error::PackDamaged { .. }
        | repo::Error::NotARepo { .. }
        | repo::Error::UnknownFormat { .. } => libc::EIO,
        // A remote repository that cannot be reached is a failing disk to a reader too.
        repo::Error::Connection { .. }
        | repo::Error::S3 { .. }
        | repo::Error::NoConditionalWrites { .. }
        | repo::Error::LeaseLost { .. } => libc::EIO,
        // The far side refuses that repository to this key.
        repo::Error::Refused { .. } => libc::EACCES,
        // An encrypted repository the mount was given no (or the wrong) passphrase for.
        repo::Error::PassphraseNeeded { .. }
        | repo::Error::SourcePassphraseNeeded { .. }
        | repo::Error::WrongPassphrase { .. } => libc::EACCES,
        // Only writers meet these; a reader that does is out of its depth.
        repo::Error::NotEmpty { .. }
        | repo::Error::BadArgument(_)
        | repo::Error::Locked { .. }
        | repo::Error::LockTimeout { .. }
        | repo::Error::Incomplete { .. }
        | repo::Error::DestinationExists { .. }
        | repo::Error::UpgradeInterrupted { .. } => libc::EIO,
    }
}

impl From<repo::Error> for FsError {
    fn from(e: repo::Error) -> FsError {
        FsError::new(repo_errno(&e), e.chain().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_expected_errno() {
        let e: FsError = snapshot::Error::Store(store::Error::NoSuchVolume("v".into())).into();
        assert_eq!(e.errno, libc::ENOENT);
        let e: FsError = snapshot::Error::SnapshotExists("s".into()).into();
        assert_eq!(e.errno, libc::EEXIST);
        let e: FsError = snapshot::Error::Broken {
            name: "s".into(),
            reason: "r".into(),
        }
        .into();
        assert_eq!(e.errno, libc::EIO);
        assert!(e.message.contains("broken"));
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e: FsError = snapshot::Error::io("writing", full).into();
        assert_eq!(e.errno, libc::ENOSPC);
        let e: FsError = store::Error::BadName {
            kind: "volume",
            name: "x".repeat(300),
            rule: "too long",
        }
        .into();
        assert_eq!(e.errno, libc::ENAMETOOLONG);
    }

    #[test]
    fn job_errors_keep_the_errno_of_the_layer_below() {
        let released = snapshot::Error::Released { name: "s".into() };
        let e: FsError = jobs::Error::Snapshot(released).into();
        assert_eq!(e.errno, libc::ESTALE);
        let gone = repo::Error::NoSuchBackup {
            repo: "/r".into(),
            id: "b".into(),
        };
        let e: FsError = jobs::Error::Repo(gone).into();
        assert_eq!(e.errno, libc::ENOENT);
        // The OS's own errno comes through a job's I/O error, as through every other layer.
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e: FsError = jobs::Error::io("writing a released table", full).into();
        assert_eq!(e.errno, libc::ENOSPC);
        let quota = std::io::Error::from_raw_os_error(libc::EDQUOT);
        let e: FsError = jobs::Error::Pids(pids::Error::io("writing run/pids", quota)).into();
        assert_eq!(e.errno, libc::EDQUOT);
        let e: FsError = jobs::Error::FreedSnarf("snarf 3 is missing".into()).into();
        assert_eq!(e.errno, libc::EIO);
        assert!(e.message.contains("snarf 3"), "{}", e.message);
    }
}
