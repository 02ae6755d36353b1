//! Backup manifests (format 1): `backups/ID/manifest.json` is the header of a backup: id,
//! time, snapshot, host, the caller's opaque `source` JSON, and its volumes, each with the
//! name of its chunk table (see `table`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Fix, IoContext, Result};
use super::ids::BackupId;
pub use super::table::Table;
pub use crate::repo::report::BackupStats;

/// Manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// A backup's header and volume list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup's id.
    pub id: BackupId,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Creation time, human readable (UTC).
    pub created_utc: String,
    /// Name of the snapshot it was taken from.
    pub snapshot: String,
    /// Host that wrote it.
    pub host: String,
    /// Caller's opaque data (the job layer keeps store id, volume ids and epochs here).
    pub source: serde_json::Value,
    /// The volumes, in the order they were added.
    pub volumes: Vec<VolumeEntry>,
    /// Counts of what this backup wrote.
    pub stats: BackupStats,
}

impl Manifest {
    /// Sum of volume sizes.
    pub fn total_size(&self) -> u64 {
        self.volumes.iter().map(|v| v.size).sum()
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

/// One volume of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Snarf size in bytes.
    pub snarf_size: u32,
    /// File name of its table in the backup folder.
    pub table: String,
    /// Snarfs that were all zeros.
    pub zero_snarfs: u64,
}

impl VolumeEntry {
    /// Number of snarfs (the last may be short).
    pub fn snarfs(&self) -> u64 {
        snarf_count(self.size, self.snarf_size)
    }
}

/// Number of snarfs of a volume.
pub fn snarf_count(size: u64, snarf_size: u32) -> u64 {
    size.div_ceil(snarf_size as u64)
}

/// Length of snarf `i` (the last one may be short).
pub fn snarf_len(size: u64, snarf_size: u32, i: u64) -> u32 {
    let start = i * snarf_size as u64;
    (size.saturating_sub(start)).min(snarf_size as u64) as u32
}

/// File name of the table of the `n`th volume.
pub fn table_name(n: usize) -> String {
    format!("v{n:04}.tbl")
}

/// True for a table file name as [`table_name`] makes them: `v` and at least four digits,
/// then `.tbl`. Nothing else read from a manifest or a backup folder is opened as a table.
pub fn is_table_name(name: &str) -> bool {
    name.strip_prefix('v')
        .and_then(|r| r.strip_suffix(".tbl"))
        .is_some_and(|digits| {
            (4..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Largest manifest read: no snarf manifest comes near it, and a hostile one (or a link to
/// /dev/zero) cannot make a reader allocate without end.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

impl Manifest {
    /// What a manifest read from disk must satisfy before any of its names becomes a path:
    /// the id is its folder's; volume names follow the store's naming rules and are unique;
    /// table names are ones snarf writes, each used once; every snarf size is non-zero; the
    /// snapshot and host names hold no control characters (they are printed one per line).
    pub fn validate(&self, folder: &BackupId) -> std::result::Result<(), String> {
        if &self.id != folder {
            return Err(format!(
                "it names backup {}, but it is the manifest of backup {folder}",
                self.id
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut tables = std::collections::HashSet::new();
        for v in &self.volumes {
            crate::store::validate_name("volume", &v.name).map_err(|e| e.to_string())?;
            if !names.insert(v.name.as_str()) {
                return Err(format!("it lists volume \"{}\" twice", v.name));
            }
            if !is_table_name(&v.table) || !tables.insert(v.table.as_str()) {
                return Err(format!(
                    "volume \"{}\" names the table \"{}\", which is not a table name snarf writes (vNNNN.tbl, each once)",
                    v.name,
                    v.table.escape_debug()
                ));
            }
            if v.snarf_size == 0 {
                return Err(format!("volume \"{}\" has a snarf size of 0", v.name));
            }
        }
        for (what, text) in [("snapshot", &self.snapshot), ("host", &self.host)] {
            if text.chars().any(char::is_control) {
                return Err(format!(
                    "its {what} name \"{}\" holds control characters",
                    text.escape_debug()
                ));
            }
        }
        Ok(())
    }
}

/// Path of backup `id`'s manifest in repository `repo`.
pub fn manifest_path(repo: &Path, id: &BackupId) -> PathBuf {
    repo.join("backups").join(id.as_str()).join("manifest.json")
}

/// Reads, parses and validates the manifest of backup `id` (see [`Manifest::validate`]).
pub fn read_manifest(repo: &Path, id: &BackupId) -> Result<Manifest> {
    let path = manifest_path(repo, id);
    let damaged = |why: String| Error::Damaged {
        repo: repo.to_path_buf(),
        path: path.clone(),
        why,
        fix: Fix::Check,
    };
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|f| std::io::Read::read_to_end(&mut f.take(MAX_MANIFEST_BYTES + 1), &mut data))
        .ctx(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(damaged(format!(
            "it is larger than {MAX_MANIFEST_BYTES} bytes, which no snarf manifest is"
        )));
    }
    let m: Manifest = serde_json::from_slice(&data).map_err(|e| damaged(e.to_string()))?;
    m.validate(id).map_err(damaged)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn manifest_round_trips_through_json() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            id: BackupId::generate(1_800_000_000),
            created: 1_800_000_000,
            created_utc: crate::repo::ids::format_utc(1_800_000_000),
            snapshot: "nightly".into(),
            host: "h".into(),
            source: serde_json::json!({"store": "abc", "epochs": [1, 2]}),
            volumes: vec![VolumeEntry {
                name: "vm1.img".into(),
                size: 1 << 30,
                snarf_size: 65536,
                table: table_name(0),
                zero_snarfs: 3,
            }],
            stats: BackupStats::default(),
        };
        let s = serde_json::to_vec(&m).unwrap();
        let back: Manifest = serde_json::from_slice(&s).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.volumes[0].snarfs(), 16384);
    }
}
