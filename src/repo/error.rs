//! The repository layer's one error type. Every message names the thing that is wrong and
//! what the administrator can do about it.

use std::path::PathBuf;

/// Errors of the repository layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory has no repository format file.
    #[error("{path} is not a snarf repository (it has no repo.json); create one with `snarf repo init {path}`")]
    NotARepo {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// The repository was written by a different format version.
    #[error("{path} is a snarf repository of format version {found}, but this snarf reads only version {supported}; use a snarf release that supports version {found}")]
    UnknownFormat {
        /// The repository directory.
        path: PathBuf,
        /// Version found.
        found: u64,
        /// Version this build reads.
        supported: u64,
    },
    /// `init` was pointed at a directory that already holds something.
    #[error("{path} already exists and is not empty; choose a new or empty directory for the repository")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A bad option or argument, with the rule it breaks.
    #[error("{0}")]
    BadArgument(String),
    /// A file of the repository (format file, index run, manifest, table, finishing record)
    /// cannot be parsed or holds something it must not (such as an unsafe name).
    #[error("{path} is damaged: {why}; {}", fix.advice(repo))]
    Damaged {
        /// The repository.
        repo: PathBuf,
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// What the administrator can do about it.
        fix: Fix,
    },
    /// A pending finishing (or the recovery of an abandoned transfer) cannot be completed,
    /// so nothing new can be written until it is; read-only commands still work.
    #[error("repository {repo}: {what} cannot be completed, and until it is nothing new can be written to the repository (read-only commands still work: `snarf backups {repo}`, `snarf restore {repo} ID DIR`, `snarf check {repo}`)")]
    FinishingStuck {
        /// The repository.
        repo: PathBuf,
        /// What is pending, e.g. "the finishing of backup X at step 5 (gc)".
        what: String,
        /// Why it fails.
        #[source]
        source: Box<Error>,
    },
    /// Another live process holds the repository lock.
    #[error("repository {path} is locked by {holder}; wait for it to finish")]
    Locked {
        /// The repository.
        path: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// The lock stayed taken for the whole wait.
    #[error("repository {path} stayed locked for {secs:.0} s by {holder}; wait for it to finish or try again later")]
    LockTimeout {
        /// The repository.
        path: PathBuf,
        /// Who holds it.
        holder: String,
        /// Seconds waited.
        secs: f64,
    },
    /// No committed backup has that id.
    #[error("repository {repo} has no backup {id}; list them with `snarf backups {repo}`")]
    NoSuchBackup {
        /// The repository.
        repo: PathBuf,
        /// The id asked for.
        id: String,
    },
    /// The backup has no volume of that name.
    #[error("backup {backup} has no volume \"{volume}\"; its volumes are: {known}")]
    NoSuchVolume {
        /// The backup.
        backup: String,
        /// The name asked for.
        volume: String,
        /// The volumes it has, comma-separated.
        known: String,
    },
    /// A pack file referenced by the index or a backup is gone.
    #[error("pack {pack} is missing (expected at {path}); run `snarf check {repo}` to see which backups are affected")]
    PackMissing {
        /// The repository.
        repo: PathBuf,
        /// Pack id.
        pack: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// A pack file's contents do not match what was written.
    #[error(
        "pack {pack} is damaged at offset {offset}: {why}; run `snarf check {repo} --read-data`"
    )]
    PackDamaged {
        /// The repository.
        repo: PathBuf,
        /// Pack id.
        pack: String,
        /// Byte offset in the pack.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// Data of a backup cannot be read back correctly; names the exact place.
    #[error("backup {backup}, volume \"{volume}\", byte offset {offset}")]
    VolumeData {
        /// The backup.
        backup: String,
        /// The volume.
        volume: String,
        /// Byte offset of the snarf in the volume.
        offset: u64,
        /// The underlying problem.
        #[source]
        source: Box<Error>,
    },
    /// A snarf of a volume was never written before commit.
    #[error("backup {backup} cannot be committed: volume \"{volume}\" has no data for snarf {snarf} (byte offset {offset}); put or reuse every snarf before commit")]
    Incomplete {
        /// The backup being written.
        backup: String,
        /// The volume.
        volume: String,
        /// Snarf index.
        snarf: u64,
        /// Its byte offset.
        offset: u64,
    },
    /// `snarf repo upgrade` was cut short: the repository is between formats until it is
    /// run again.
    #[error("{path} is being upgraded to format 2 and the upgrade was interrupted; run `snarf repo upgrade {path}` again to complete it (nothing is lost meanwhile)")]
    UpgradeInterrupted {
        /// The repository.
        path: PathBuf,
    },
    /// A restore would overwrite an existing file.
    #[error("{path} already exists; remove it or restore into another directory")]
    DestinationExists {
        /// The file in the way.
        path: PathBuf,
    },
    /// The far side (`snarf serve`) refused the request, e.g. a path outside its
    /// `--restrict-to` folders.
    #[error("{repo}: the far side refused it: {why}")]
    Refused {
        /// The repository (its URL).
        repo: String,
        /// Why, as the far side said it.
        why: String,
    },
    /// The connection to a remote repository could not be made or was lost.
    #[error("{repo}: {why}; {fix}")]
    Connection {
        /// The repository (its URL).
        repo: String,
        /// What happened.
        why: String,
        /// What to do about it.
        fix: String,
    },
    /// The repository is encrypted and no passphrase was given.
    #[error("repository {repo} is encrypted and no passphrase was given: set SNARF_PASSWORD, give --password-file FILE (password-file= on a mount), or run on a terminal to be asked")]
    PassphraseNeeded {
        /// The repository.
        repo: String,
    },
    /// `snarf copy`'s source repository is encrypted and no passphrase was given for it.
    #[error("repository {repo}, the source of the copy, is encrypted and no passphrase was given for it: set SNARF_FROM_PASSWORD, give --from-password-file FILE (or SNARF_FROM_PASSWORD_FILE), or run on a terminal to be asked")]
    SourcePassphraseNeeded {
        /// The repository.
        repo: String,
    },
    /// No key slot of the repository opens with the passphrase given.
    #[error("the passphrase given does not open repository {repo}: none of its key slots ({slots}) accepts it; check the passphrase (a damaged slot is refused the same way)")]
    WrongPassphrase {
        /// The repository.
        repo: String,
        /// The key slots tried, by file.
        slots: String,
    },
    /// A request to an S3 repository failed (after the client's own retries).
    #[error("{repo}: {op} {key} failed; {fix}")]
    S3 {
        /// The repository (its s3:// URL).
        repo: String,
        /// What was being done, e.g. "reading".
        op: &'static str,
        /// The object's key in the bucket.
        key: String,
        /// What the administrator can do about it.
        fix: S3Fix,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The S3 server accepted a conditional write it should have refused, so it cannot hold
    /// a repository safely.
    #[error("{repo}: the S3 server ignores conditional writes (a PutObject with If-None-Match: * replaced an existing object); snarf needs conditional PutObject (If-None-Match and If-Match, as AWS S3 has since 2024) for its commit points and lock: use a server that supports it")]
    NoConditionalWrites {
        /// The repository (its s3:// URL).
        repo: String,
    },
    /// This process's lease on an S3 repository's lock was lost (another process took the
    /// lock over), so it writes nothing more.
    #[error("repository {repo}: this process lost its lock lease ({why}), so it writes nothing more to the repository; nothing committed is affected, run the command again")]
    LeaseLost {
        /// The repository (its s3:// URL).
        repo: String,
        /// How it was lost.
        why: &'static str,
    },
    /// An I/O error, with what was being done.
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

    /// Wraps a data error with the backup, volume and byte offset it concerns.
    pub fn at(self, backup: &str, volume: &str, offset: u64) -> Error {
        Error::VolumeData {
            backup: backup.to_string(),
            volume: volume.to_string(),
            offset,
            source: Box::new(self),
        }
    }
}

/// What to do about a damaged file: each kind of file has its own way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// The index and `repo.json` are rebuilt from the packs' own records.
    RepairIndex,
    /// A backup's manifest or table: `check` names what it affects; a copy restores it.
    Check,
    /// The finishing record or a committed backup's draft: only a copy brings it back.
    Copy,
}

impl Fix {
    /// The advice for a damaged file of repository `repo`.
    pub fn advice(&self, repo: &std::path::Path) -> String {
        let repo = repo.display();
        match self {
            Fix::RepairIndex => format!(
                "run `snarf repair index {repo}`, which rebuilds it from the packs' own records"
            ),
            Fix::Check => format!(
                "run `snarf check {repo}` to see which backups it affects, and restore the file from a copy if you have one"
            ),
            Fix::Copy => format!(
                "restore the file from a copy if you have one; read-only commands (`snarf backups {repo}`, `snarf restore`, `snarf check {repo}`) still work"
            ),
        }
    }
}

/// What to do about a failed S3 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Fix {
    /// The server refused the credentials or the request.
    Credentials,
    /// The bucket does not exist.
    Bucket,
    /// The server could not be reached or answered with an error.
    Endpoint,
    /// The server lacks a feature snarf needs.
    Feature,
}

impl std::fmt::Display for S3Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            S3Fix::Credentials => "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile in ~/.aws/credentials) and that the bucket's policy lets them read, write, list and delete",
            S3Fix::Bucket => "the bucket does not exist: create it first (for example `aws s3 mb s3://BUCKET`), or check the bucket name and AWS_ENDPOINT_URL",
            S3Fix::Endpoint => "check that AWS_ENDPOINT_URL (or the region's AWS endpoint) reaches the S3 server and that it is up; the request was retried before giving up",
            S3Fix::Feature => "the S3 server lacks a feature snarf needs (conditional PutObject with If-None-Match and If-Match, ranged GET, multipart upload): use a server that has them",
        })
    }
}

/// Result of repository operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds "what was being done" to an I/O result.
pub(crate) trait IoContext<T> {
    /// Maps an I/O error into [`Error::Io`] with a lazily built context.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
