//! What repository operations report, whatever the format: a check's problems and counts,
//! a restore's progress, the finishing state, a backup's counts. Both formats fill the same
//! types, so callers need not know which format a repository has.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ids::{format_utc, BackupId, PackId};

/// One thing wrong, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The backup affected, if any.
    pub backup: Option<String>,
    /// The volume affected, if any.
    pub volume: Option<String>,
    /// Byte offset in the volume, if any.
    pub offset: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.backup {
            write!(f, "backup {b}")?;
            if let Some(v) = &self.volume {
                write!(f, ", volume \"{v}\"")?;
            }
            if let Some(o) = self.offset {
                write!(f, ", byte offset {o}")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.what)
    }
}

/// Progress of a check.
#[derive(Debug, Clone)]
pub struct CheckProgress {
    /// "packs", "index", "data" or "backups".
    pub phase: &'static str,
    /// Units done in this phase.
    pub done: u64,
    /// Units in this phase.
    pub total: u64,
}

/// The result of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Committed backups checked.
    pub backups: u64,
    /// Volumes checked.
    pub volumes: u64,
    /// Snarf records checked.
    pub snarfs: u64,
    /// Sealed packs.
    pub packs: u64,
    /// Chunks in packs.
    pub chunks: u64,
    /// Chunks read and hash-checked (with `read_data`).
    pub chunks_read: u64,
    /// Index records.
    pub index_records: u64,
    /// Packs no committed backup references (not an error: the next gc removes them).
    pub unreferenced_packs: Vec<PackId>,
    /// Everything wrong; empty means the repository is sound.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn problem(&mut self, what: String) {
        self.problems.push(Problem {
            backup: None,
            volume: None,
            offset: None,
            what,
        });
    }
}

/// Progress of a restore.
#[derive(Debug, Clone)]
pub struct RestoreProgress {
    /// Volume being restored.
    pub volume: String,
    /// Bytes done over all volumes.
    pub done: u64,
    /// Bytes to do over all volumes.
    pub total: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Total bytes of the volumes.
    pub bytes: u64,
    /// Bytes left as holes (zero snarfs).
    pub hole_bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// What a finishing did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFinishing {
    /// "backup" or "prune".
    pub kind: String,
    /// The backup committed, if a backup.
    pub backup: Option<String>,
    /// When it started, Unix seconds.
    pub started: u64,
    /// When it completed, Unix seconds.
    pub finished: u64,
    /// Whether it was resumed after an interruption.
    pub resumed: bool,
    /// Backups deleted by retention.
    pub removed: Vec<String>,
    /// Packs deleted.
    pub packs_removed: u64,
    /// Bytes freed by deleting packs.
    pub freed_bytes: u64,
    /// Damaged backups gc went around, each with what it kept for them.
    #[serde(default)]
    pub damaged: Vec<String>,
}

impl LastFinishing {
    /// True when every backup it names is a valid id: it is printed one record per line.
    pub(crate) fn is_sane(&self) -> bool {
        let valid = |s: &String| BackupId::parse(s).is_some();
        matches!(self.kind.as_str(), "backup" | "prune")
            && self.backup.as_ref().is_none_or(valid)
            && self.removed.iter().all(valid)
            && self.damaged.iter().all(|d| !d.contains('\n'))
    }
}

/// Finishing state of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishingStatus {
    /// Nothing under way; what the last finishing did, if known.
    Idle(Option<LastFinishing>),
    /// A finishing is under way or was interrupted.
    Active {
        /// "backup" or "prune".
        kind: String,
        /// The backup being committed.
        backup: Option<String>,
        /// Step number (1-6).
        step: u32,
        /// Step name.
        step_name: String,
        /// When it started, Unix seconds.
        started: u64,
        /// Whether it was resumed after an interruption.
        resumed: bool,
        /// The process holding the lock now, if any.
        holder: Option<String>,
    },
    /// Format 2, which has no finishing record (a backup commits by creating one object):
    /// what a cut left for the next writer to complete.
    Upkeep {
        /// `state/gc-pending`: a prune's gc was cut short; the next backup or prune
        /// completes it.
        gc_pending: bool,
        /// Sealed packs no index run lists: the uploads of interrupted backups, which the
        /// next backup adopts (or gc collects past the grace period if nothing uses them).
        unadopted_packs: u64,
    },
}

impl FinishingStatus {
    /// One line for people: "idle" or "backup 2026… step 2 (index), started …".
    pub fn describe(&self) -> String {
        match self {
            FinishingStatus::Idle(_) => "idle".into(),
            FinishingStatus::Upkeep {
                gc_pending,
                unadopted_packs,
            } => upkeep_note(*gc_pending, *unadopted_packs),
            FinishingStatus::Active {
                kind,
                backup,
                step,
                step_name,
                started,
                resumed,
                ..
            } => format!(
                "{kind} {} at step {step} ({step_name}), started {} UTC{}",
                backup.as_deref().unwrap_or("-"),
                format_utc(*started),
                if *resumed { ", resumed" } else { "" }
            ),
        }
    }
}

/// What a format 2 repository has pending, for people.
pub fn upkeep_note(gc_pending: bool, unadopted_packs: u64) -> String {
    let mut parts = Vec::new();
    if gc_pending {
        parts.push("a gc was cut short; the next backup or prune completes it".to_string());
    }
    if unadopted_packs > 0 {
        parts.push(format!(
            "{unadopted_packs} pack(s) of interrupted backups not indexed yet; the next backup adopts them"
        ));
    }
    if parts.is_empty() {
        return "format 2: no finishing record (a backup commits by creating one object); nothing pending".into();
    }
    format!("format 2: {}", parts.join("; "))
}

/// What a backup added to the repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupStats {
    /// Chunks this backup stored for the first time.
    pub new_chunks: u64,
    /// Bytes of pack data those chunks take.
    pub new_stored_bytes: u64,
    /// Uncompressed bytes of those chunks.
    pub new_raw_bytes: u64,
    /// Snarfs that were already in the repository (deduplicated or reused).
    pub dedup_snarfs: u64,
    /// Snarfs that were all zeros.
    pub zero_snarfs: u64,
    /// Packs this backup wrote.
    pub packs: u64,
}
