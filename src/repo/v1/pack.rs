//! Pack files: many chunks in one file of tens of MiB, so a repository holds few files and
//! writes sequentially. A pack is self-describing: its trailer lists every chunk it holds,
//! and the footer's hash proves the trailer intact, so a pack left by a killed backup can be
//! adopted (indexed from its trailer) without anything else.
//!
//! ```text
//! 0..8     magic "SNARFPK1"
//! 8..24    pack id
//! 24..32   reserved, zero
//! 32..     stored chunk bytes, back to back
//! trailer  one 48-byte entry per chunk: id (32), offset u64 LE, stored len u32, raw len u32
//! footer   48 bytes: entry count u64 LE, blake3(pack id ‖ trailer) (32), magic "SNARFEND"
//! ```
//!
//! A pack is written as `packs/<id>.part` and renamed to `packs/<id>.pack` only after it is
//! complete and fsynced, so a `.pack` file is always sealed and a `.part` file is always torn.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::chunk::ChunkRef;
use super::error::{IoContext, Result};
use super::fault;
use super::fsx;
use super::ids::{ChunkId, PackId};

/// Magic at the start of a pack.
const MAGIC: &[u8; 8] = b"SNARFPK1";
/// Magic at the very end of a sealed pack.
const END_MAGIC: &[u8; 8] = b"SNARFEND";
/// Bytes before the first chunk.
pub const HEADER_LEN: u64 = 32;
/// Bytes of one trailer entry.
const ENTRY_LEN: usize = 48;
/// Bytes of the footer.
const FOOTER_LEN: u64 = 48;

/// File name of a sealed pack.
pub fn file_name(id: &PackId) -> String {
    format!("{id}.pack")
}

/// File name of a pack being written.
pub fn part_name(id: &PackId) -> String {
    format!("{id}.part")
}

/// One chunk listed in a pack's trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailerEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Offset of its stored bytes.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
}

impl TrailerEntry {
    /// The reference to this chunk in pack `pack`.
    pub fn chunk_ref(&self, pack: PackId) -> ChunkRef {
        ChunkRef {
            id: self.id,
            pack,
            offset: self.offset,
            stored_len: self.stored_len,
            raw_len: self.raw_len,
        }
    }

    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..32].copy_from_slice(&self.id.0);
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> TrailerEntry {
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[32..40]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        TrailerEntry {
            id: ChunkId(id),
            offset: u64::from_le_bytes(off),
            stored_len: u32_at(40),
            raw_len: u32_at(44),
        }
    }
}

/// A pack being filled.
pub struct PackWriter {
    id: PackId,
    dir: PathBuf,
    out: BufWriter<File>,
    len: u64,
    entries: Vec<TrailerEntry>,
}

impl PackWriter {
    /// Starts `dir/<id>.part`.
    pub fn create(dir: &Path, id: PackId) -> Result<PackWriter> {
        let path = dir.join(part_name(&id));
        let file = fsx::create_new(&path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&id.0);
        out.write_all(&header)
            .ctx(|| format!("writing {}", path.display()))?;
        Ok(PackWriter {
            id,
            dir: dir.to_path_buf(),
            out,
            len: HEADER_LEN,
            entries: Vec::new(),
        })
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a chunk's stored bytes and returns where it is.
    pub fn append(&mut self, id: ChunkId, stored: &[u8], raw_len: u32) -> Result<ChunkRef> {
        let offset = self.len;
        let dir = &self.dir;
        let pid = self.id;
        self.out
            .write_all(stored)
            .ctx(|| format!("writing {}", dir.join(part_name(&pid)).display()))?;
        self.len += stored.len() as u64;
        let e = TrailerEntry {
            id,
            offset,
            stored_len: stored.len() as u32,
            raw_len,
        };
        self.entries.push(e);
        Ok(e.chunk_ref(self.id))
    }

    /// Writes trailer and footer and fsyncs; the pack is complete but not yet published.
    pub fn finish(mut self) -> Result<FinishedPack> {
        let part = self.dir.join(part_name(&self.id));
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.id.0);
        for e in &self.entries {
            let b = e.encode();
            hasher.update(&b);
            self.out
                .write_all(&b)
                .ctx(|| format!("writing {}", part.display()))?;
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        footer[..8].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        footer[8..40].copy_from_slice(hasher.finalize().as_bytes());
        footer[40..].copy_from_slice(END_MAGIC);
        self.out
            .write_all(&footer)
            .ctx(|| format!("writing {}", part.display()))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("writing {}", part.display()))?;
        fault::point("pack.written");
        file.sync_all()
            .ctx(|| format!("syncing {}", part.display()))?;
        fault::point("pack.synced");
        let bytes = self.len + (self.entries.len() * ENTRY_LEN) as u64 + FOOTER_LEN;
        Ok(FinishedPack {
            id: self.id,
            dir: self.dir,
            entries: self.entries,
            bytes,
        })
    }
}

/// A complete, fsynced pack still under its `.part` name.
pub struct FinishedPack {
    /// Pack id.
    pub id: PackId,
    dir: PathBuf,
    /// Its chunks.
    pub entries: Vec<TrailerEntry>,
    /// File size.
    pub bytes: u64,
}

impl FinishedPack {
    /// Renames to `<id>.pack` and fsyncs the folder: from here on the pack is durable.
    pub fn publish(&self) -> Result<()> {
        let part = self.dir.join(part_name(&self.id));
        let sealed = self.dir.join(file_name(&self.id));
        std::fs::rename(&part, &sealed)
            .ctx(|| format!("renaming {} to {}", part.display(), sealed.display()))?;
        fault::point("pack.renamed");
        fsx::sync_dir(&self.dir)
    }
}

/// Reads and verifies the trailer of a sealed pack. The error gives the offset and problem.
pub fn read_trailer(
    file: &File,
    id: &PackId,
) -> std::result::Result<Vec<TrailerEntry>, (u64, String)> {
    let len = file
        .metadata()
        .map_err(|e| (0, format!("cannot stat it ({e})")))?
        .len();
    parse_trailer(len, id, &|buf, off| fsx::read_exact_at(file, buf, off))
}

/// Reads into a buffer at an offset (a file's pread, or a storage backend's range read).
pub type ReadAt<'a> = &'a dyn Fn(&mut [u8], u64) -> std::io::Result<()>;

/// [`read_trailer`] for a pack of `len` bytes read through `read_at` (format 2 reads format
/// 1 packs an upgrade kept through its storage backend).
pub fn parse_trailer(
    len: u64,
    id: &PackId,
    read_at: ReadAt<'_>,
) -> std::result::Result<Vec<TrailerEntry>, (u64, String)> {
    if len < HEADER_LEN + FOOTER_LEN {
        return Err((0, format!("it is only {len} bytes long")));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    read_at(&mut header, 0).map_err(|e| (0, format!("cannot read it ({e})")))?;
    if &header[..8] != MAGIC || header[8..24] != id.0 {
        return Err((
            0,
            "its header is not a snarf pack header with this id".into(),
        ));
    }
    let foot_at = len - FOOTER_LEN;
    let mut footer = [0u8; FOOTER_LEN as usize];
    read_at(&mut footer, foot_at)
        .map_err(|e| (foot_at, format!("cannot read its footer ({e})")))?;
    if &footer[40..] != END_MAGIC {
        return Err((foot_at, "its footer is missing (the pack is torn)".into()));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&footer[..8]);
    let count = u64::from_le_bytes(count);
    let trailer_len = count
        .checked_mul(ENTRY_LEN as u64)
        .filter(|t| *t <= foot_at - HEADER_LEN)
        .ok_or((
            foot_at,
            format!("its footer claims an impossible {count} chunks"),
        ))?;
    let trailer_at = foot_at - trailer_len;
    let mut trailer = vec![0u8; trailer_len as usize];
    read_at(&mut trailer, trailer_at)
        .map_err(|e| (trailer_at, format!("cannot read its trailer ({e})")))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&id.0);
    hasher.update(&trailer);
    if hasher.finalize().as_bytes() != &footer[8..40] {
        return Err((trailer_at, "its trailer fails its hash check".into()));
    }
    let entries: Vec<TrailerEntry> = trailer
        .chunks_exact(ENTRY_LEN)
        .map(TrailerEntry::decode)
        .collect();
    for e in &entries {
        if e.offset < HEADER_LEN || e.offset + e.stored_len as u64 > trailer_at {
            return Err((
                e.offset,
                format!(
                    "its trailer lists chunk {} outside the data area",
                    e.id.short()
                ),
            ));
        }
    }
    Ok(entries)
}

/// Reads the stored bytes of chunk `r` from its open pack file.
pub fn read_stored(file: &File, r: &ChunkRef) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; r.stored_len as usize];
    fsx::read_exact_at(file, &mut buf, r.offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pack_has_a_verifiable_trailer_and_readable_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let id = PackId::generate();
        let mut w = PackWriter::create(dir.path(), id).unwrap();
        let a = w.append(ChunkId::of(b"aaaa"), b"aaaa", 4).unwrap();
        let b = w.append(ChunkId::of(b"bb"), b"bb", 2).unwrap();
        assert_eq!(a.offset, HEADER_LEN);
        assert_eq!(b.offset, HEADER_LEN + 4);
        let f = w.finish().unwrap();
        assert!(dir.path().join(part_name(&id)).exists());
        f.publish().unwrap();
        let file = File::open(dir.path().join(file_name(&id))).unwrap();
        let entries = read_trailer(&file, &id).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].chunk_ref(id), b);
        assert_eq!(read_stored(&file, &b).unwrap(), b"bb");
        assert_eq!(file.metadata().unwrap().len(), f.bytes);
    }

    #[test]
    fn torn_or_tampered_trailers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = PackId::generate();
        let mut w = PackWriter::create(dir.path(), id).unwrap();
        w.append(ChunkId::of(b"x"), b"x", 1).unwrap();
        w.finish().unwrap().publish().unwrap();
        let path = dir.path().join(file_name(&id));
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        assert!(read_trailer(&File::open(&path).unwrap(), &id).is_err());
        let mut bad = full.clone();
        let at = full.len() - 48 - 10;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(read_trailer(&File::open(&path).unwrap(), &id).is_err());
        std::fs::write(&path, &full).unwrap();
        assert!(read_trailer(&File::open(&path).unwrap(), &PackId::generate()).is_err());
    }
}
