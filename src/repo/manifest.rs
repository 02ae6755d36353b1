//! Backup manifests and per-volume chunk tables. A manifest (`backups/ID/manifest.json`) is
//! the header of a backup: id, time, snapshot, host, the caller's opaque `source` JSON, and
//! its volumes. Each volume's chunks are in a table file (`backups/ID/vNNNN.tbl`) of fixed
//! 64-byte records, one per snarf, so a backup writes snarfs in any order with pwrite and a
//! reader maps byte offset X to record X / snarf_size without loading the table:
//!
//! ```text
//! 0..8     magic "SNARFTB1"
//! 8..16    volume size in bytes, u64 LE
//! 16..20   snarf size, u32 LE
//! 20..64   reserved, zero
//! 64..     record i at 64 + 64 * i: the ChunkRef encoding (zero marker for zero snarfs)
//! ```

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunk::{ChunkRef, REF_LEN};
use super::error::{Error, Fix, IoContext, Result};
use super::ids::BackupId;

/// Magic at the start of a table.
const MAGIC: &[u8; 8] = b"SNARFTB1";
/// Bytes before the first record.
const HEADER_LEN: u64 = 64;
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

/// A volume's chunk table file.
pub struct Table {
    path: PathBuf,
    file: File,
    size: u64,
    snarf_size: u32,
    count: u64,
}

impl Table {
    /// Creates a table (all records blank) for a volume of `size` bytes.
    pub fn create(path: &Path, size: u64, snarf_size: u32) -> Result<Table> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .ctx(|| format!("creating {}", path.display()))?;
        let count = snarf_count(size, snarf_size);
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&size.to_le_bytes());
        header[16..20].copy_from_slice(&snarf_size.to_le_bytes());
        file.write_all_at(&header, 0)
            .and_then(|_| file.set_len(HEADER_LEN + count * REF_LEN as u64))
            .ctx(|| format!("writing {}", path.display()))?;
        Ok(Table {
            path: path.to_path_buf(),
            file,
            size,
            snarf_size,
            count,
        })
    }

    /// Opens a table for reading.
    pub fn open(repo: &Path, path: &Path) -> Result<Table> {
        let damaged = |why: String| Error::Damaged {
            repo: repo.to_path_buf(),
            path: path.to_path_buf(),
            why,
            fix: Fix::Check,
        };
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| damaged(format!("its header cannot be read ({e})")))?;
        if &header[..8] != MAGIC {
            return Err(damaged("it is not a snarf chunk table".into()));
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let size = u64::from_le_bytes(s);
        let snarf_size = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        if snarf_size == 0 {
            return Err(damaged("its snarf size is zero".into()));
        }
        let count = snarf_count(size, snarf_size);
        let len = file
            .metadata()
            .ctx(|| format!("reading {}", path.display()))?
            .len();
        // Checked: the header is read from disk and may claim an absurd size.
        let need = count
            .checked_mul(REF_LEN as u64)
            .and_then(|n| n.checked_add(HEADER_LEN));
        if need != Some(len) {
            return Err(damaged(format!(
                "it is {len} bytes long, but a volume of {size} bytes needs {count} records"
            )));
        }
        Ok(Table {
            path: path.to_path_buf(),
            file,
            size,
            snarf_size,
            count,
        })
    }

    /// Volume size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Snarf size.
    pub fn snarf_size(&self) -> u32 {
        self.snarf_size
    }

    /// Number of records.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Path of the table file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes record `i`.
    pub fn put(&self, i: u64, r: &ChunkRef) -> Result<()> {
        self.file
            .write_all_at(&r.encode(), HEADER_LEN + i * REF_LEN as u64)
            .ctx(|| format!("writing {}", self.path.display()))
    }

    /// Writes records `first..first + refs.len()` in one write.
    pub fn put_run(&self, first: u64, refs: &[ChunkRef]) -> Result<()> {
        let mut buf = Vec::with_capacity(refs.len() * REF_LEN);
        for r in refs {
            buf.extend_from_slice(&r.encode());
        }
        self.file
            .write_all_at(&buf, HEADER_LEN + first * REF_LEN as u64)
            .ctx(|| format!("writing {}", self.path.display()))
    }

    /// Reads records `first..first + n` in one read; `None` for those never written.
    pub fn get_run(&self, first: u64, n: u64) -> Result<Vec<Option<ChunkRef>>> {
        let mut buf = vec![0u8; n as usize * REF_LEN];
        self.file
            .read_exact_at(&mut buf, HEADER_LEN + first * REF_LEN as u64)
            .ctx(|| format!("reading {}", self.path.display()))?;
        Ok(buf
            .chunks_exact(REF_LEN)
            .map(|rec| {
                let mut b = [0u8; REF_LEN];
                b.copy_from_slice(rec);
                ChunkRef::decode(&b)
            })
            .collect())
    }

    /// Reads record `i`; `None` if it was never written.
    pub fn get(&self, i: u64) -> Result<Option<ChunkRef>> {
        let mut b = [0u8; REF_LEN];
        self.file
            .read_exact_at(&mut b, HEADER_LEN + i * REF_LEN as u64)
            .ctx(|| format!("reading {}", self.path.display()))?;
        Ok(ChunkRef::decode(&b))
    }

    /// Streams all records in order, `batch` records per read.
    pub fn for_each(&self, mut f: impl FnMut(u64, Option<ChunkRef>) -> Result<()>) -> Result<()> {
        const BATCH: u64 = 1024;
        let mut buf = vec![0u8; BATCH as usize * REF_LEN];
        let mut i = 0;
        while i < self.count {
            let n = BATCH.min(self.count - i);
            let bytes = &mut buf[..n as usize * REF_LEN];
            self.file
                .read_exact_at(bytes, HEADER_LEN + i * REF_LEN as u64)
                .ctx(|| format!("reading {}", self.path.display()))?;
            for (k, rec) in bytes.chunks_exact(REF_LEN).enumerate() {
                let mut b = [0u8; REF_LEN];
                b.copy_from_slice(rec);
                f(i + k as u64, ChunkRef::decode(&b))?;
            }
            i += n;
        }
        Ok(())
    }

    /// Fsyncs the table.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .ctx(|| format!("syncing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::{ChunkId, PackId};

    #[test]
    fn table_records_written_in_any_order_read_back_at_random() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(table_name(0));
        let t = Table::create(&p, 10 * 4096 + 100, 4096).unwrap();
        assert_eq!(t.count(), 11);
        assert_eq!(snarf_len(t.size(), 4096, 10), 100);
        assert_eq!(snarf_len(t.size(), 4096, 9), 4096);
        let r = |i: u64| ChunkRef {
            id: ChunkId::of(&i.to_le_bytes()),
            pack: PackId([7; 16]),
            offset: i,
            stored_len: 10,
            raw_len: 4096,
        };
        for i in [7u64, 3, 10, 0] {
            t.put(i, &r(i)).unwrap();
        }
        t.put(5, &ChunkRef::zero(4096)).unwrap();
        t.sync().unwrap();
        let t = Table::open(dir.path(), &p).unwrap();
        assert_eq!(t.get(7).unwrap(), Some(r(7)));
        assert!(t.get(5).unwrap().unwrap().is_zero());
        assert_eq!(t.get(1).unwrap(), None);
        let mut seen = Vec::new();
        t.for_each(|i, rec| {
            if rec.is_some() {
                seen.push(i);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![0, 3, 5, 7, 10]);
    }

    #[test]
    fn truncated_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        Table::create(&p, 5 * 4096, 4096).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(100).unwrap();
        assert!(Table::open(dir.path(), &p).is_err());
    }

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
