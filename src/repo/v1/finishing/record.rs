//! The finishing record (`finishing.json`) and its companion `last-finishing.json`: what is
//! being finished (a backup commit or a prune), the step to do next, and what the last
//! completed finishing did. The record's first durable write is the commit point.

use serde::{Deserialize, Serialize};

use super::super::error::{Error, Fix, Result};
use super::super::fault::FilePoints;
use super::super::fsx;
use super::super::ids::{now_secs, BackupId, PackId};
use super::super::lock::hostname;
use super::super::prune::Policy;
use super::super::Repo;
pub use crate::repo::report::{FinishingStatus, LastFinishing};

/// What the last completed finishing did.
pub(crate) const LAST_FILE: &str = "last-finishing.json";

/// What is being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A backup commit.
    Backup,
    /// A prune.
    Prune,
}

/// The steps, in order. A prune starts at `Retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Move tables into `backups/ID`, write the manifest.
    Manifest,
    /// Write the backup's index run; merge runs.
    Index,
    /// Point `current` at the backup.
    Current,
    /// Choose and delete backups the retention policy drops.
    Retention,
    /// Delete packs no committed backup references.
    Gc,
    /// Record the outcome and remove the record.
    Done,
}

impl Step {
    /// 1-based step number.
    pub fn number(self) -> u32 {
        self as u32 + 1
    }

    /// Step name as shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Step::Manifest => "manifest",
            Step::Index => "index",
            Step::Current => "current",
            Step::Retention => "retention",
            Step::Gc => "gc",
            Step::Done => "done",
        }
    }

    pub(super) fn record_points(self) -> FilePoints {
        match self {
            Step::Manifest => {
                FilePoints::pair("record.manifest.written", "record.manifest.renamed")
            }
            Step::Index => FilePoints::pair("record.index.written", "record.index.renamed"),
            Step::Current => FilePoints::pair("record.current.written", "record.current.renamed"),
            Step::Retention => {
                FilePoints::pair("record.retention.written", "record.retention.renamed")
            }
            Step::Gc => FilePoints::pair("record.gc.written", "record.gc.renamed"),
            Step::Done => FilePoints::pair("record.done.written", "record.done.renamed"),
        }
    }
}

/// The durable finishing record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Backup commit or prune.
    pub kind: Kind,
    /// The backup being committed (backups only).
    pub backup: Option<BackupId>,
    /// The step to do next.
    pub step: Step,
    /// When the finishing started, Unix seconds.
    pub started: u64,
    /// True once a process other than the one that started it has taken it over.
    pub resumed: bool,
    /// Process that started it.
    pub pid: u32,
    /// Host it started on.
    pub host: String,
    /// Retention policy to apply, if any.
    pub policy: Option<Policy>,
    /// Backups chosen for deletion; fixed before any is deleted, so a redo deletes the
    /// same ones even though the set of remaining backups has changed.
    pub doomed: Option<Vec<BackupId>>,
    /// Packs the backup wrote (hex ids), whose trailers become its index run.
    pub new_packs: Vec<String>,
}

impl Record {
    /// The record of a backup commit.
    pub fn for_backup(id: BackupId, packs: &[PackId], policy: Option<Policy>) -> Record {
        Record {
            kind: Kind::Backup,
            backup: Some(id),
            step: Step::Manifest,
            started: now_secs(),
            resumed: false,
            pid: std::process::id(),
            host: hostname(),
            policy,
            doomed: None,
            new_packs: packs.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The record of a prune with its decision already taken.
    pub fn for_prune(policy: Policy, doomed: Vec<BackupId>) -> Record {
        Record {
            kind: Kind::Prune,
            backup: None,
            step: Step::Retention,
            started: now_secs(),
            resumed: false,
            pid: std::process::id(),
            host: hostname(),
            policy: Some(policy),
            doomed: Some(doomed),
            new_packs: Vec::new(),
        }
    }
}

/// Largest finishing record read: a real one is a few KiB even with thousands of doomed
/// backups or new packs.
pub(super) const MAX_RECORD_BYTES: u64 = 64 << 20;

pub(super) fn read_record(repo: &Repo) -> Result<Option<Record>> {
    let path = repo.record_path();
    let damaged = |why: String| Error::Damaged {
        repo: repo.path().to_path_buf(),
        path: path.clone(),
        why,
        fix: Fix::Copy,
    };
    match fsx::read_optional_capped(&path, MAX_RECORD_BYTES)? {
        None => Ok(None),
        Some(d) if d.len() as u64 > MAX_RECORD_BYTES => Err(damaged(format!(
            "it is larger than {MAX_RECORD_BYTES} bytes, which no finishing record is"
        ))),
        // Backup ids are validated as they are parsed; pack ids when they are used.
        Some(d) => serde_json::from_slice(&d)
            .map(Some)
            .map_err(|e| damaged(e.to_string())),
    }
}

pub(super) fn write_record(repo: &Repo, rec: &Record, points: FilePoints) -> Result<()> {
    let json = serde_json::to_vec_pretty(rec)
        .map_err(|e| Error::BadArgument(format!("cannot encode the finishing record: {e}")))?;
    fsx::write_atomic(&repo.record_path(), &json, points)
}

/// Writes the first record of a finishing: from here on, it is committed.
pub(crate) fn begin(repo: &Repo, rec: &Record, points: FilePoints) -> Result<()> {
    write_record(repo, rec, points)
}

/// True when the finishing record on disk (readable or not) may name backup `id`: after a
/// failed [`begin`], whether the record reached its place and the backup is committed.
pub(crate) fn may_name_backup(repo: &Repo, id: &BackupId) -> bool {
    match read_record(repo) {
        Ok(rec) => rec.and_then(|r| r.backup).as_ref() == Some(id),
        Err(_) => true,
    }
}

/// The repository's finishing state.
pub fn status(repo: &Repo) -> Result<FinishingStatus> {
    match read_record(repo)? {
        Some(rec) => Ok(FinishingStatus::Active {
            kind: kind_name(rec.kind).into(),
            backup: rec.backup.map(|b| b.to_string()),
            step: rec.step.number(),
            step_name: rec.step.name().into(),
            started: rec.started,
            resumed: rec.resumed,
            holder: super::super::lock::current_holder(repo.path()),
        }),
        None => {
            let last = fsx::read_optional_capped(&repo.path().join(LAST_FILE), MAX_RECORD_BYTES)?
                .and_then(|d| serde_json::from_slice::<LastFinishing>(&d).ok())
                .filter(LastFinishing::is_sane);
            Ok(FinishingStatus::Idle(last))
        }
    }
}

pub(super) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Backup => "backup",
        Kind::Prune => "prune",
    }
}
