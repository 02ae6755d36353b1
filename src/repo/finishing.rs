//! Finishing: the commit that only goes forward (Burp's "atomic data jiggle"). A durable
//! record (`finishing.json`) names the backup or prune and its step; each step checks what is
//! already on disk and is safe to redo, so after a crash at any instant the next holder of the
//! lock reads the record and completes it. Also here: recovery of abandoned transfers (their
//! sealed packs are adopted into the index, torn ones deleted) and garbage collection.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Error, Fix, IoContext, Result};
use super::fault::{self, FilePoints};
use super::fsx;
use super::ids::{format_utc, now_secs, BackupId, PackId};
use super::index::{self, Index, MAX_RUNS};
use super::lock::{hostname, RepoLock};
use super::manifest::{read_manifest, Table};
use super::pack;
use super::prune::{self, Policy};
use super::writer::{DRAFT, PACK_LOG};
use super::Repo;

/// Marker file: some packs may be unreferenced; the next finishing collects them.
const GC_MARKER: &str = "gc-pending";
/// What the last completed finishing did.
const LAST_FILE: &str = "last-finishing.json";

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

    fn record_points(self) -> FilePoints {
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
    fn is_sane(&self) -> bool {
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
}

impl FinishingStatus {
    /// One line for people: "idle" or "backup 2026… step 2 (index), started …".
    pub fn describe(&self) -> String {
        match self {
            FinishingStatus::Idle(_) => "idle".into(),
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

/// Largest finishing record read: a real one is a few KiB even with thousands of doomed
/// backups or new packs.
const MAX_RECORD_BYTES: u64 = 64 << 20;

fn read_record(repo: &Repo) -> Result<Option<Record>> {
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

fn write_record(repo: &Repo, rec: &Record, points: FilePoints) -> Result<()> {
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
            holder: super::lock::current_holder(repo.path()),
        }),
        None => {
            let last = fsx::read_optional_capped(&repo.path().join(LAST_FILE), MAX_RECORD_BYTES)?
                .and_then(|d| serde_json::from_slice::<LastFinishing>(&d).ok())
                .filter(LastFinishing::is_sane);
            Ok(FinishingStatus::Idle(last))
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Backup => "backup",
        Kind::Prune => "prune",
    }
}

/// Completes a pending finishing and recovers abandoned transfers. The caller holds the lock.
pub(crate) fn settle(repo: &Repo, lock: &RepoLock) -> Result<Option<LastFinishing>> {
    let mut outcome = None;
    if let Some(mut rec) = read_record(repo)? {
        log::warn!(
            "{}: completing the interrupted finishing of {} {} from step {} ({})",
            repo.path().display(),
            kind_name(rec.kind),
            rec.backup.as_ref().map(|b| b.as_str()).unwrap_or("-"),
            rec.step.number(),
            rec.step.name()
        );
        rec.resumed = true;
        write_record(
            repo,
            &rec,
            FilePoints::pair("record.resumed.written", "record.resumed.renamed"),
        )?;
        outcome = Some(run(repo, lock, rec)?);
    }
    recover_transfers(repo)?;
    Ok(outcome)
}

/// Runs finishing from the record's step to the end.
pub(crate) fn run(repo: &Repo, _lock: &RepoLock, mut rec: Record) -> Result<LastFinishing> {
    let mut out = LastFinishing {
        kind: kind_name(rec.kind).into(),
        backup: rec.backup.as_ref().map(|b| b.to_string()),
        started: rec.started,
        resumed: rec.resumed,
        ..LastFinishing::default()
    };
    loop {
        match rec.step {
            Step::Manifest => {
                fault::point("finish.manifest");
                step_manifest(repo, &rec)?;
                advance(repo, &mut rec, Step::Index)?;
            }
            Step::Index => {
                fault::point("finish.index");
                step_index(repo, &rec)?;
                advance(repo, &mut rec, Step::Current)?;
            }
            Step::Current => {
                fault::point("finish.current");
                step_current(repo, &rec)?;
                advance(repo, &mut rec, Step::Retention)?;
            }
            Step::Retention => {
                fault::point("finish.retention");
                out.removed = step_retention(repo, &mut rec)?;
                advance(repo, &mut rec, Step::Gc)?;
            }
            Step::Gc => {
                fault::point("finish.gc");
                let forced = rec.kind == Kind::Prune;
                let gc = step_gc(repo, forced)?;
                out.packs_removed = gc.packs_removed;
                out.freed_bytes = gc.freed_bytes;
                out.damaged = gc.damaged;
                advance(repo, &mut rec, Step::Done)?;
            }
            Step::Done => {
                fault::point("finish.done");
                out.finished = now_secs();
                if let Some(doomed) = &rec.doomed {
                    out.removed = doomed.iter().map(|d| d.to_string()).collect();
                }
                let json = serde_json::to_vec_pretty(&out)
                    .map_err(|e| Error::BadArgument(e.to_string()))?;
                fsx::write_atomic(
                    &repo.path().join(LAST_FILE),
                    &json,
                    FilePoints::pair("last.written", "last.renamed"),
                )?;
                fsx::remove_if_exists(&repo.record_path())?;
                fault::point("record.removed");
                fsx::sync_dir(repo.path())?;
                return Ok(out);
            }
        }
    }
}

fn advance(repo: &Repo, rec: &mut Record, step: Step) -> Result<()> {
    rec.step = step;
    write_record(repo, rec, step.record_points())
}

fn backup_of(repo: &Repo, rec: &Record) -> Result<BackupId> {
    rec.backup.clone().ok_or_else(|| Error::Damaged {
        repo: repo.path().to_path_buf(),
        path: repo.record_path(),
        why: "a backup finishing record names no backup".into(),
        fix: Fix::Copy,
    })
}

/// Step 1: tables into `backups/ID`, then the manifest (which makes the backup visible),
/// then the transfer folder is removed.
fn step_manifest(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    let dest = repo.backups_dir().join(id.as_str());
    let tmp = repo.tmp_dir().join(id.as_str());
    let manifest = repo.manifest_path(&id);
    if !manifest.exists() {
        let draft_path = tmp.join(DRAFT);
        let draft = fsx::read_optional(&draft_path)?.ok_or_else(|| Error::Damaged {
            repo: repo.path().to_path_buf(),
            path: draft_path.clone(),
            why: format!("backup {id} is committed but its draft manifest is gone"),
            fix: Fix::Copy,
        })?;
        fsx::ensure_dir(&dest)?;
        fsx::remove_tmp_leftovers(&dest)?;
        let mut moved = false;
        for entry in std::fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tbl") {
                let to = dest.join(&name);
                std::fs::rename(entry.path(), &to)
                    .ctx(|| format!("moving {} to {}", entry.path().display(), to.display()))?;
                if !moved {
                    fault::point("finish.manifest.table-moved");
                    moved = true;
                }
            }
        }
        fsx::sync_dir(&dest)?;
        fsx::sync_dir(&tmp)?;
        fsx::write_atomic(
            &manifest,
            &draft,
            FilePoints::pair("manifest.written", "manifest.renamed"),
        )?;
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
        fault::point("finish.manifest.tmp-removed");
        fsx::sync_dir(&repo.tmp_dir())?;
    }
    Ok(())
}

/// Step 2: the backup's index run from its packs' trailers; merge runs past [`MAX_RUNS`].
fn step_index(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    let path = index::run_path(&repo.index_dir(), &format!("b-{id}"));
    if !path.exists() {
        let mut refs = Vec::new();
        for hex in &rec.new_packs {
            let pid = PackId::parse(hex).ok_or_else(|| Error::Damaged {
                repo: repo.path().to_path_buf(),
                path: repo.record_path(),
                why: format!("\"{hex}\" is not a pack id"),
                fix: Fix::Copy,
            })?;
            refs.extend(read_pack_refs(repo, &pid)?);
        }
        refs.sort_by_key(|r| r.id);
        index::write_run(
            &path,
            refs.into_iter().map(Ok),
            FilePoints::pair("index.written", "index.renamed"),
        )?;
    }
    let idx = Index::open(&repo.index_dir())?;
    if idx.run_count() > MAX_RUNS {
        // Entries of packs that are gone are dropped: kept, they would hide a chunk's
        // entry in a pack that exists behind one that cannot be read.
        let on_disk: HashSet<PackId> = packs_on_disk(repo)?.0.into_iter().map(|(p, _)| p).collect();
        idx.rewrite(
            |r| on_disk.contains(&r.pack),
            FilePoints::pair("compact.written", "compact.renamed"),
            "compact.removed",
        )?;
    }
    Ok(())
}

/// Every chunk of a sealed pack, from its verified trailer.
fn read_pack_refs(repo: &Repo, id: &PackId) -> Result<Vec<super::ChunkRef>> {
    let path = repo.pack_path(id);
    let file = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::PackMissing {
                repo: repo.path().to_path_buf(),
                pack: id.to_string(),
                path: path.clone(),
            }
        } else {
            Error::io(format!("opening {}", path.display()), e)
        }
    })?;
    let entries = pack::read_trailer(&file, id).map_err(|(offset, why)| Error::PackDamaged {
        repo: repo.path().to_path_buf(),
        pack: id.to_string(),
        offset,
        why,
    })?;
    Ok(entries.iter().map(|e| e.chunk_ref(*id)).collect())
}

/// Step 3: `current` names the backup.
fn step_current(repo: &Repo, rec: &Record) -> Result<()> {
    let id = backup_of(repo, rec)?;
    if repo.current()?.as_ref() != Some(&id) {
        fsx::write_atomic(
            &repo.path().join("current"),
            format!("{id}\n").as_bytes(),
            FilePoints::pair("current.written", "current.renamed"),
        )?;
    }
    Ok(())
}

/// Step 4: decide once which backups the policy drops, record that, delete them.
fn step_retention(repo: &Repo, rec: &mut Record) -> Result<Vec<String>> {
    let Some(policy) = rec.policy else {
        return Ok(Vec::new());
    };
    if rec.doomed.is_none() {
        let backups = repo.list_backups()?;
        let decisions = prune::select(&backups, &policy, repo.current()?.as_ref());
        rec.doomed = Some(
            decisions
                .into_iter()
                .filter(|d| !d.keep)
                .map(|d| d.id)
                .collect(),
        );
        write_record(
            repo,
            rec,
            FilePoints::pair(
                "record.retention-selected.written",
                "record.retention-selected.renamed",
            ),
        )?;
    }
    let doomed = rec.doomed.clone().unwrap_or_default();
    if !doomed.is_empty() {
        // Marked first, so packs the deleted backups leave behind are collected even if
        // this process dies between the deletion and the gc step.
        fsx::write_atomic(&repo.path().join(GC_MARKER), b"", FilePoints::NONE)?;
    }
    for (i, id) in doomed.iter().enumerate() {
        delete_backup(repo, id, i == 0)?;
    }
    Ok(doomed.iter().map(|d| d.to_string()).collect())
}

/// Deletes a backup: its manifest first (so it disappears at once), then the folder.
fn delete_backup(repo: &Repo, id: &BackupId, first: bool) -> Result<()> {
    let dir = repo.backups_dir().join(id.as_str());
    if fsx::remove_if_exists(&repo.manifest_path(id))? {
        if first {
            fault::point("retention.manifest-removed");
        }
        fsx::sync_dir(&dir)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        if first {
            fault::point("retention.removed");
        }
        fsx::sync_dir(&repo.backups_dir())?;
    }
    Ok(())
}

/// Packs pinned by [`Repo::pin`]: kept by gc whatever references them.
pub(crate) fn pinned_packs(repo: &Repo) -> Result<HashSet<PackId>> {
    let dir = repo.pins_dir();
    let mut packs = HashSet::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(packs),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Only pins `Repo::pin` can have written: a FIFO or a link to a device here must
        // not hang or flood gc.
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || crate::store::validate_name("pin", &name).is_err() {
            log::warn!(
                "{}: ignoring {}, which is not a pin snarf wrote",
                repo.path().display(),
                entry.path().display()
            );
            continue;
        }
        let data = fsx::read_optional_capped(&entry.path(), MAX_RECORD_BYTES)?.unwrap_or_default();
        packs.extend(
            String::from_utf8_lossy(&data)
                .lines()
                .filter_map(PackId::parse),
        );
    }
    Ok(packs)
}

/// What gc may rely on: the packs some backup's tables reference, plus pinned packs.
pub(crate) struct References {
    /// Referenced packs (about 16 bytes of memory per pack).
    pub packs: HashSet<PackId>,
    /// False when some table could not be read: then no pack is provably unreferenced.
    pub complete: bool,
    /// Damaged backups, each with what was done about it.
    pub damaged: Vec<String>,
}

/// The packs referenced by every backup folder's tables, plus pinned packs. The tables are
/// read directly, not through the manifest, so a backup whose manifest is damaged or
/// missing keeps its packs (restoring the manifest from a copy brings it back); a table
/// that cannot be read makes the set incomplete, and gc then deletes nothing.
pub(crate) fn referenced_packs(repo: &Repo, skip: &[BackupId]) -> Result<References> {
    let mut refs = References {
        packs: pinned_packs(repo)?,
        complete: true,
        damaged: Vec::new(),
    };
    for id in repo.backup_ids()? {
        if skip.contains(&id) {
            continue;
        }
        let dir = repo.backups_dir().join(id.as_str());
        let manifest = if repo.manifest_path(&id).exists() {
            read_manifest(repo.path(), &id).map(Some)
        } else {
            Ok(None)
        };
        let mut tables = table_files(&dir)?;
        let mut trouble = Vec::new();
        match &manifest {
            Ok(Some(m)) => {
                for v in &m.volumes {
                    if !tables.contains(&v.table) {
                        tables.push(v.table.clone());
                    }
                }
            }
            Ok(None) => trouble.push("it has no manifest".to_string()),
            Err(e) => trouble.push(format!("its manifest is damaged ({e})")),
        }
        let mut unreadable = Vec::new();
        for t in &tables {
            let path = dir.join(t);
            let read = Table::open(repo.path(), &path).and_then(|table| {
                table.for_each(|_, r| {
                    if let Some(r) = r.filter(|r| !r.is_zero()) {
                        refs.packs.insert(r.pack);
                    }
                    Ok(())
                })
            });
            match read {
                Ok(()) => {}
                // A table a valid manifest lists but that is gone references nothing.
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !path.exists() => {}
                Err(e) => unreadable.push(format!("table {t} cannot be read ({e})")),
            }
        }
        if !unreadable.is_empty() {
            refs.complete = false;
            trouble.extend(unreadable);
            refs.damaged.push(format!(
                "backup {id}: {}; gc deletes no pack until it is repaired, since any pack may be one it uses",
                trouble.join("; ")
            ));
        } else if !trouble.is_empty() {
            refs.damaged.push(format!(
                "backup {id}: {}; its {} table(s) were read directly and the packs they use are kept",
                trouble.join("; "),
                tables.len()
            ));
        }
    }
    Ok(refs)
}

/// Table files in a backup folder (regular files named as snarf names tables).
fn table_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if super::manifest::is_table_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Sealed packs with their sizes, and paths of torn `.part` files.
pub(crate) type PacksOnDisk = (Vec<(PackId, u64)>, Vec<std::path::PathBuf>);

/// Sealed packs on disk with their sizes, and torn `.part` files.
pub(crate) fn packs_on_disk(repo: &Repo) -> Result<PacksOnDisk> {
    let dir = repo.packs_dir();
    let mut sealed = Vec::new();
    let mut torn = Vec::new();
    for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(".pack") {
            if let Some(id) = PackId::parse(hex) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                sealed.push((id, len));
            }
        } else if name.strip_suffix(".part").and_then(PackId::parse).is_some() {
            torn.push(entry.path());
        }
    }
    Ok((sealed, torn))
}

/// What gc did.
struct GcOutcome {
    packs_removed: u64,
    freed_bytes: u64,
    damaged: Vec<String>,
}

/// Step 5: delete packs no backup references, after rewriting the index without them (so
/// the index never points at a deleted pack). Redoing recomputes the same set. Damaged
/// backups are reported by name and gone around: their packs are kept (all packs, if one of
/// their tables cannot be read), and the marker stays so a later gc frees what they held
/// once they are repaired or removed.
fn step_gc(repo: &Repo, forced: bool) -> Result<GcOutcome> {
    let marker = repo.path().join(GC_MARKER);
    let mut out = GcOutcome {
        packs_removed: 0,
        freed_bytes: 0,
        damaged: Vec::new(),
    };
    if !forced && !marker.exists() {
        return Ok(out);
    }
    let refs = referenced_packs(repo, &[])?;
    for d in &refs.damaged {
        log::warn!("{}: gc: {d}", repo.path().display());
    }
    out.damaged = refs.damaged;
    let (sealed, torn) = packs_on_disk(repo)?;
    let doomed: Vec<(PackId, u64)> = if refs.complete {
        sealed
            .into_iter()
            .filter(|(id, _)| !refs.packs.contains(id))
            .collect()
    } else {
        Vec::new()
    };
    if !doomed.is_empty() {
        Index::open(&repo.index_dir())?.rewrite(
            |r| refs.packs.contains(&r.pack),
            FilePoints::pair("gc.index.written", "gc.index.renamed"),
            "gc.index.removed",
        )?;
    }
    for (i, (id, len)) in doomed.iter().enumerate() {
        if fsx::remove_if_exists(&repo.pack_path(id))? {
            out.freed_bytes += len;
        }
        if i == 0 {
            fault::point("gc.pack-removed");
        }
    }
    out.packs_removed = doomed.len() as u64;
    // No writer runs while the lock is held, so a .part file is a torn leftover.
    for p in &torn {
        fsx::remove_if_exists(p)?;
    }
    fsx::sync_dir(&repo.packs_dir())?;
    if refs.complete && fsx::remove_if_exists(&marker)? {
        fsx::sync_dir(repo.path())?;
    } else if !refs.complete && !marker.exists() {
        fsx::write_atomic(&marker, b"", FilePoints::NONE)?;
    }
    Ok(out)
}

/// The transfer folders in `tmp/`: real folders named by a valid backup id. Anything else
/// there is not snarf's, is left alone and does not count as work for recovery: its name
/// must not become an index file name or lead recovery's reads and deletions elsewhere.
pub(crate) fn transfer_dirs(repo: &Repo) -> Result<Vec<BackupId>> {
    let tmp = repo.tmp_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
        let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
        let name = entry.file_name();
        let id = BackupId::parse(&name.to_string_lossy());
        match id {
            Some(id) if entry.file_type().is_ok_and(|t| t.is_dir()) => out.push(id),
            _ => log::warn!(
                "{}: ignoring {}, which is not a backup transfer folder",
                repo.path().display(),
                entry.path().display()
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// Recovers every abandoned transfer in `tmp/` (the caller holds the lock, so none is live).
fn recover_transfers(repo: &Repo) -> Result<()> {
    for id in transfer_dirs(repo)? {
        recover_transfer(repo, &id)?;
    }
    for dir in [
        repo.path().to_path_buf(),
        repo.index_dir(),
        repo.packs_dir(),
        repo.backups_dir(),
    ] {
        fsx::remove_tmp_leftovers(&dir)?;
    }
    let (_, torn) = packs_on_disk(repo)?;
    for p in &torn {
        fsx::remove_if_exists(p)?;
    }
    if !torn.is_empty() {
        fsx::sync_dir(&repo.packs_dir())?;
    }
    Ok(())
}

/// Adopts the sealed packs abandoned transfer `id` logged (an index run from their
/// trailers), deletes its torn pack, and removes its folder. Safe to redo. A transfer the
/// finishing record names is committed, not abandoned, and is left for finishing: whatever
/// failed after the record reached the disk (even its folder's fsync), its tables and draft
/// are what finishing needs.
pub(crate) fn recover_transfer(repo: &Repo, id: &BackupId) -> Result<()> {
    // An unreadable record might name it: it is kept then too.
    if may_name_backup(repo, id) {
        return Ok(());
    }
    let name = id.as_str();
    let dir = repo.tmp_dir().join(name);
    let log = fsx::read_optional(&dir.join(PACK_LOG))?.unwrap_or_default();
    let mut refs = Vec::new();
    // A torn last line is simply not a pack id.
    for pack_id in String::from_utf8_lossy(&log)
        .lines()
        .filter_map(PackId::parse)
    {
        fsx::remove_if_exists(&repo.packs_dir().join(pack::part_name(&pack_id)))?;
        if repo.pack_path(&pack_id).exists() {
            match read_pack_refs(repo, &pack_id) {
                Ok(r) => refs.extend(r),
                // Left for gc: unreferenced packs are deleted there.
                Err(e) => log::warn!("not adopting a pack of abandoned transfer {name}: {e}"),
            }
        }
    }
    if !refs.is_empty() {
        let run = index::run_path(&repo.index_dir(), &format!("a-{name}"));
        if !run.exists() {
            refs.sort_by_key(|r| r.id);
            index::write_run(
                &run,
                refs.into_iter().map(Ok),
                FilePoints::pair("adopt.written", "adopt.renamed"),
            )?;
        }
        fsx::write_atomic(&repo.path().join(GC_MARKER), b"", FilePoints::NONE)?;
        log::info!("adopted the sealed packs of abandoned transfer {name}");
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        fault::point("adopt.tmp-removed");
        fsx::sync_dir(&repo.tmp_dir())?;
    }
    Ok(())
}
