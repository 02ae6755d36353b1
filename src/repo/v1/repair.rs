//! `snarf repair index`: the index is rebuilt from the packs' own records, as restic's
//! `repair index` does. Every sealed pack carries a trailer listing its chunks, protected by
//! a hash, so the index is derived data: the rebuilt runs list every chunk of every pack
//! whose trailer verifies, and replace every run there was, damaged or not.
//!
//! `repo.json` is rebuilt too when it is missing or damaged in a folder that has a
//! repository's folders. What it held cannot all be recovered: the format version can (this
//! layout is format 1, the only one), the creation time is taken from the oldest readable
//! backup, but the compression level and pack size are not recorded anywhere else and get
//! their defaults. They only affect chunks written from then on. A `repo.json` of another
//! format version is not damage and is never replaced.
//!
//! Crash safety: the repository lock is held throughout; the new runs are written under new
//! names and made durable before any old run is removed, and the format file is replaced
//! atomically, so a kill -9 at any instant leaves a repository whose backups restore and on
//! which `repair index` can simply be run again. Pending finishing is completed afterwards
//! (a damaged index is what usually keeps it from completing).

use std::path::Path;

use super::chunk::{ChunkRef, REF_LEN};
use super::config::{self, Config, DEFAULT_COMPRESSION, DEFAULT_PACK_TARGET, FORMAT_VERSION};
use super::error::{Error, Fix, Result};
use super::fault::{self, FilePoints};
use super::finishing;
use super::fsx;
use super::ids::{format_utc, now_secs, PackId};
use super::index::{self, Index, MAX_RUNS};
use super::lock::RepoLock;
use super::manifest::read_manifest;
use super::pack;
use super::reader;
use super::Repo;
use crate::chain::ErrorChain;

/// Records sorted in memory before a run is written: 64 MiB of records, so the rebuild of
/// any repository stays within a fixed amount of memory (runs are merged by streaming).
const RUN_RECORDS: usize = (64 << 20) / REF_LEN;

/// Progress of a repair: packs read so far.
#[derive(Debug, Clone)]
pub struct RepairProgress {
    /// Packs read.
    pub done: u64,
    /// Packs to read.
    pub total: u64,
}

/// What a repair did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// Sealed packs whose trailers were read into the index.
    pub packs: u64,
    /// Chunks the rebuilt index lists.
    pub chunks: u64,
    /// Index runs replaced.
    pub runs_replaced: u64,
    /// Packs whose trailer did not verify, each with why: their chunks are not indexed (no
    /// later backup deduplicates against them); `check --read-data` names what uses them.
    pub damaged_packs: Vec<String>,
    /// If `repo.json` was rebuilt: what was written and what had to be guessed.
    pub config_rebuilt: Option<String>,
    /// If pending finishing still cannot be completed afterwards: why.
    pub still_stuck: Option<String>,
}

/// Rebuilds the index of the repository at `path` (and its `repo.json`, if that is missing
/// or damaged; see the module documentation).
pub fn repair_index(
    path: &Path,
    progress: &mut dyn FnMut(&RepairProgress),
) -> Result<RepairReport> {
    let damaged_config = match config::read(path) {
        Ok(_) => None,
        Err(Error::Damaged {
            fix: Fix::RepairIndex,
            why,
            ..
        }) => Some(why),
        Err(e) => return Err(e),
    };
    let lock = RepoLock::try_acquire(path, "snarf repair index")?;
    let mut report = RepairReport::default();
    if let Some(why) = damaged_config {
        report.config_rebuilt = Some(rebuild_config(path, &why)?);
    }
    let repo = Repo::open_quiet(path)?;
    rebuild(&repo, &mut report, progress)?;
    if let Err(e) = repo.settle_locked(&lock) {
        report.still_stuck = Some(e.chain().to_string());
    }
    Ok(report)
}

/// Writes a new `repo.json` for a repository whose own is missing or damaged; returns what
/// was written and what was guessed.
fn rebuild_config(path: &Path, why: &str) -> Result<String> {
    // The creation time is the oldest readable backup's; the folders are the repository's
    // (checked by `config::read` before it called this damage).
    let ids = std::fs::read_dir(path.join("backups"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| super::BackupId::parse(&e.file_name().to_string_lossy()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let oldest = ids
        .iter()
        .filter_map(|id| read_manifest(path, id).ok())
        .map(|m| m.created)
        .min();
    let config = Config {
        format: FORMAT_VERSION,
        compression: DEFAULT_COMPRESSION,
        pack_target: DEFAULT_PACK_TARGET,
        created: oldest.unwrap_or_else(now_secs),
    };
    config::write(
        path,
        &config,
        FilePoints::pair("repair.config.written", "repair.config.renamed"),
    )?;
    log::warn!("{}: rebuilt repo.json ({why})", path.display());
    Ok(format!(
        "repo.json could not be used ({why}); it was rebuilt: format {FORMAT_VERSION} (the layout of these files), created {} UTC ({}), zstd level {DEFAULT_COMPRESSION} and packs of {} MiB (the defaults: the old settings are recorded nowhere else; they only affect chunks written from now on)",
        format_utc(config.created),
        if oldest.is_some() {
            "its oldest backup"
        } else {
            "no backup could be read, so now"
        },
        DEFAULT_PACK_TARGET >> 20
    ))
}

/// Replaces every index run with runs built from the packs' trailers.
fn rebuild(
    repo: &Repo,
    report: &mut RepairReport,
    progress: &mut dyn FnMut(&RepairProgress),
) -> Result<()> {
    // A lost index (or transfer) folder is rebuilt like a damaged one.
    for f in config::FOLDERS {
        fsx::ensure_dir(&repo.path().join(f))?;
    }
    let dir = repo.index_dir();
    let old = index::run_names(&dir)?;
    let (mut sealed, _) = finishing::packs_on_disk(repo)?;
    sealed.sort();
    let total = sealed.len() as u64;
    let mut batch: Vec<ChunkRef> = Vec::new();
    let mut new_runs = Vec::new();
    for (i, (id, _)) in sealed.iter().enumerate() {
        progress(&RepairProgress {
            done: i as u64,
            total,
        });
        match pack_refs(repo, id) {
            Ok(refs) => {
                report.packs += 1;
                batch.extend(refs);
            }
            Err(why) => {
                log::warn!("{}: repair index: pack {id}: {why}", repo.path().display());
                report.damaged_packs.push(format!("pack {id}: {why}"));
            }
        }
        if batch.len() >= RUN_RECORDS {
            report.chunks += write_batch(&dir, &mut batch, &mut new_runs)?;
        }
    }
    if !batch.is_empty() {
        report.chunks += write_batch(&dir, &mut batch, &mut new_runs)?;
    }
    progress(&RepairProgress { done: total, total });
    // Only now, with every new run durable, do the old ones go.
    for (i, name) in old.iter().filter(|n| !new_runs.contains(n)).enumerate() {
        fsx::remove_if_exists(&dir.join(name))?;
        report.runs_replaced += 1;
        if i == 0 {
            fault::point("repair.old-removed");
        }
    }
    fsx::remove_tmp_leftovers(&dir)?;
    fsx::sync_dir(&dir)?;
    let idx = Index::open(&dir)?;
    if idx.run_count() > MAX_RUNS {
        // Duplicates across batches are merged away; the merge is itself redo-safe.
        idx.rewrite(
            |_| true,
            FilePoints::pair("repair.run.written", "repair.run.renamed"),
            "repair.old-removed",
        )?;
    }
    Ok(())
}

/// The verified trailer of one pack as index records, or why it cannot be used.
fn pack_refs(repo: &Repo, id: &PackId) -> std::result::Result<Vec<ChunkRef>, String> {
    let file = reader::open_pack(repo, id).map_err(|e| e.chain().to_string())?;
    let entries = pack::read_trailer(&file, id)
        .map_err(|(offset, why)| format!("damaged at offset {offset}: {why}"))?;
    Ok(entries.iter().map(|e| e.chunk_ref(*id)).collect())
}

/// Sorts a batch of records and writes it as a new run; returns the records written.
fn write_batch(dir: &Path, batch: &mut Vec<ChunkRef>, new_runs: &mut Vec<String>) -> Result<u64> {
    batch.sort_by_key(|r| r.id);
    let stem = format!("r-{}", &PackId::generate().to_string()[..16]);
    let path = index::run_path(dir, &stem);
    let n = index::write_run(
        &path,
        batch.drain(..).map(Ok),
        FilePoints::pair("repair.run.written", "repair.run.renamed"),
    )?;
    if let Some(name) = path.file_name() {
        new_runs.push(name.to_string_lossy().into_owned());
    }
    Ok(n)
}
