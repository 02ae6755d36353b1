//! Per-volume chunk tables (format 1), one file per volume of a backup
//! (`backups/ID/vNNNN.tbl`): fixed 64-byte records, one per snarf, so a backup writes snarfs
//! in any order with pwrite and a reader maps byte offset X to record X / snarf_size without
//! loading the table:
//!
//! ```text
//! 0..8     magic "SNARFTB1"
//! 8..16    volume size in bytes, u64 LE
//! 16..20   snarf size, u32 LE
//! 20..64   reserved, zero
//! 64..     record i at 64 + 64 * i: the ChunkRef encoding (zero marker for zero snarfs)
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::chunk::{ChunkRef, REF_LEN};
use super::error::{Error, Fix, IoContext, Result};
use super::manifest::snarf_count;

/// Magic at the start of a table.
const MAGIC: &[u8; 8] = b"SNARFTB1";
/// Bytes before the first record.
const HEADER_LEN: u64 = 64;

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
    use crate::repo::manifest::{snarf_len, table_name};

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
}
