//! Packs (format 2): frames of blobs in one object of tens of MiB, uploaded through the
//! backend (a pack is visible only once complete) and self-describing: the sealed trailer
//! lists every blob, so a pack left by a killed backup can be adopted into the index from
//! its trailer alone. Format 1 packs (`pack`) are read by their own module.
//!
//! ```text
//! 0..8     magic "SNARFPK2"
//! 8..24    pack id
//! 24..32   reserved, zero
//! 32..     frames, back to back, each sealed as text number = its offset
//! trailer  sealed as text number u64::MAX: one 64-byte blob record per blob
//! footer   48 bytes: sealed trailer length u64 LE, blake3(pack id ‖ sealed trailer),
//!          magic "SNARFEN2"
//! ```
//!
//! A blob record (also the 64-byte encoding of a [`BlobRef`] in index runs and tree pages),
//! little-endian:
//!
//! ```text
//! 0..32   blob id
//! 32..48  pack id
//! 48..53  frame offset in the pack, u40 (packs are at most 4 GiB and a frame)
//! 53..57  sealed frame length, u32
//! 57..60  offset of the blob in the frame's raw bytes, u24
//! 60      kind: 0 data, 1 tree page
//! 61..64  blob length, u24 (0 only in a blank record)
//! ```

use super::frame::{self, Seal};
use crate::repo::backend::{Backend, Key, Upload};
use crate::repo::error::{Error, Result};
use crate::repo::ids::{ChunkId, PackId};

/// Magic at the start of a pack.
const MAGIC: &[u8; 8] = b"SNARFPK2";
/// Magic at the very end.
const END_MAGIC: &[u8; 8] = b"SNARFEN2";
/// Bytes before the first frame.
pub const HEADER_LEN: u64 = 32;
/// Bytes of the footer.
const FOOTER_LEN: u64 = 48;
/// Bytes of one encoded [`BlobRef`].
pub const REF_LEN: usize = 64;
/// The text number of the trailer, which no frame can have.
const TRAILER_TEXT: u64 = u64::MAX;
/// Largest blob: 8 MiB (a snarf is at most 1 MiB, a page far less).
pub const MAX_BLOB: u32 = 8 << 20;

/// What a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A snarf's data.
    Data,
    /// A tree page.
    Page,
}

/// Where a blob is: its frame in a pack and its place in the frame's raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// The blob's id.
    pub id: ChunkId,
    /// What it is.
    pub kind: BlobKind,
    /// The pack.
    pub pack: PackId,
    /// Offset of the sealed frame in the pack.
    pub frame_offset: u64,
    /// Length of the sealed frame.
    pub frame_len: u32,
    /// Offset of the blob in the frame's raw bytes.
    pub within: u32,
    /// The blob's length.
    pub len: u32,
}

impl BlobRef {
    /// The 64-byte record (see the module documentation).
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut b = [0u8; REF_LEN];
        b[0..32].copy_from_slice(&self.id.0);
        b[32..48].copy_from_slice(&self.pack.0);
        b[48..53].copy_from_slice(&self.frame_offset.to_le_bytes()[..5]);
        b[53..57].copy_from_slice(&self.frame_len.to_le_bytes());
        b[57..60].copy_from_slice(&self.within.to_le_bytes()[..3]);
        b[60] = match self.kind {
            BlobKind::Data => 0,
            BlobKind::Page => 1,
        };
        b[61..64].copy_from_slice(&self.len.to_le_bytes()[..3]);
        b
    }

    /// Decodes a record; `None` if it is blank or impossible (an unknown kind, a blob
    /// larger than [`MAX_BLOB`], a frame inside the header or empty).
    pub fn decode(b: &[u8; REF_LEN]) -> Option<BlobRef> {
        let le = |s: &[u8]| {
            let mut x = [0u8; 8];
            x[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(x)
        };
        let kind = match b[60] {
            0 => BlobKind::Data,
            1 => BlobKind::Page,
            _ => return None,
        };
        let r = BlobRef {
            id: ChunkId(b[0..32].try_into().ok()?),
            pack: PackId(b[32..48].try_into().ok()?),
            frame_offset: le(&b[48..53]),
            frame_len: le(&b[53..57]) as u32,
            within: le(&b[57..60]) as u32,
            kind,
            len: le(&b[61..64]) as u32,
        };
        (r.len > 0 && r.len <= MAX_BLOB && r.frame_offset >= HEADER_LEN && r.frame_len > 0)
            .then_some(r)
    }
}

/// The associated data binding a sealed text to its pack and to what it is.
fn ad(pack: &PackId, what: &str) -> Vec<u8> {
    let mut a = Key::Pack(*pack).name().into_bytes();
    a.push(0);
    a.extend_from_slice(what.as_bytes());
    a
}

/// A pack being uploaded.
pub struct PackWriter {
    id: PackId,
    out: Box<dyn Upload>,
    len: u64,
    blobs: Vec<BlobRef>,
}

impl PackWriter {
    /// Starts uploading pack `id` to `backend`.
    pub fn create(backend: &dyn Backend, id: PackId) -> Result<PackWriter> {
        let mut out = backend.upload(&Key::Pack(id))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&id.0);
        out.write(&header)?;
        Ok(PackWriter {
            id,
            out,
            len: HEADER_LEN,
            blobs: Vec::new(),
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

    /// True when no frame was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Appends one frame of `blobs` (each: id, kind, raw bytes; given in frame order),
    /// compressed at `level` and sealed; returns where each blob is.
    pub fn append_frame(
        &mut self,
        seal: &dyn Seal,
        level: i32,
        blobs: &[(ChunkId, BlobKind, &[u8])],
    ) -> Result<Vec<BlobRef>> {
        let mut raw = Vec::with_capacity(blobs.iter().map(|b| b.2.len()).sum());
        let mut places = Vec::with_capacity(blobs.len());
        for (id, kind, data) in blobs {
            let len = u32::try_from(data.len())
                .ok()
                .filter(|&n| n > 0 && n <= MAX_BLOB)
                .ok_or_else(|| {
                    Error::BadArgument(format!(
                        "a blob must be 1 byte to 8 MiB, not {}",
                        data.len()
                    ))
                })?;
            places.push((*id, *kind, raw.len() as u32, len));
            raw.extend_from_slice(data);
        }
        if raw.len() > frame::MAX_FRAME_RAW {
            return Err(Error::BadArgument(format!(
                "a frame of {} raw bytes is larger than {} bytes",
                raw.len(),
                frame::MAX_FRAME_RAW
            )));
        }
        let offset = self.len;
        if offset >= 1 << 40 {
            return Err(Error::BadArgument(format!(
                "pack {} is full (1 TiB)",
                self.id
            )));
        }
        let sealed = seal.seal(
            &self.id.0,
            offset,
            &ad(&self.id, "frame"),
            frame::encode(&raw, level),
        )?;
        let frame_len = u32::try_from(sealed.len())
            .map_err(|_| Error::BadArgument("a sealed frame of more than 4 GiB".into()))?;
        self.out.write(&sealed)?;
        self.len += sealed.len() as u64;
        let refs: Vec<BlobRef> = places
            .into_iter()
            .map(|(id, kind, within, len)| BlobRef {
                id,
                kind,
                pack: self.id,
                frame_offset: offset,
                frame_len,
                within,
                len,
            })
            .collect();
        self.blobs.extend_from_slice(&refs);
        Ok(refs)
    }

    /// Writes the sealed trailer and footer and finishes the upload: from here on the pack
    /// is durable and visible. Returns its blobs and size.
    pub fn finish(mut self, seal: &dyn Seal) -> Result<(Vec<BlobRef>, u64)> {
        let mut trailer = Vec::with_capacity(self.blobs.len() * REF_LEN);
        for b in &self.blobs {
            trailer.extend_from_slice(&b.encode());
        }
        let sealed = seal.seal(&self.id.0, TRAILER_TEXT, &ad(&self.id, "trailer"), trailer)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.id.0);
        hasher.update(&sealed);
        let mut footer = [0u8; FOOTER_LEN as usize];
        footer[..8].copy_from_slice(&(sealed.len() as u64).to_le_bytes());
        footer[8..40].copy_from_slice(hasher.finalize().as_bytes());
        footer[40..].copy_from_slice(END_MAGIC);
        self.out.write(&sealed)?;
        self.out.write(&footer)?;
        let size = self.len + sealed.len() as u64 + FOOTER_LEN;
        self.out.finish()?;
        Ok((self.blobs, size))
    }
}

/// Reads and verifies the trailer of pack `id` of `size` bytes. The error gives the offset
/// and the problem.
pub fn read_trailer(
    backend: &dyn Backend,
    seal: &dyn Seal,
    id: &PackId,
    size: u64,
) -> std::result::Result<Vec<BlobRef>, (u64, String)> {
    let key = Key::Pack(*id);
    let read = |off: u64, len: u64| {
        backend
            .read_range(&key, off, len)
            .map_err(|e| (off, format!("it cannot be read ({e})")))
    };
    if size < HEADER_LEN + FOOTER_LEN {
        return Err((0, format!("it is only {size} bytes long")));
    }
    let header = read(0, HEADER_LEN)?;
    if &header[..8] != MAGIC || header[8..24] != id.0 {
        return Err((
            0,
            "its header is not a format 2 pack header with this id".into(),
        ));
    }
    let foot_at = size - FOOTER_LEN;
    let footer = read(foot_at, FOOTER_LEN)?;
    if &footer[40..] != END_MAGIC {
        return Err((foot_at, "its footer is missing (the pack is torn)".into()));
    }
    let tlen = u64::from_le_bytes(
        footer[..8]
            .try_into()
            .map_err(|_| (foot_at, "footer".to_string()))?,
    );
    if tlen > foot_at - HEADER_LEN {
        return Err((
            foot_at,
            format!("its footer claims an impossible trailer of {tlen} bytes"),
        ));
    }
    let trailer_at = foot_at - tlen;
    let sealed = read(trailer_at, tlen)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&id.0);
    hasher.update(&sealed);
    if hasher.finalize().as_bytes() != &footer[8..40] {
        return Err((trailer_at, "its trailer fails its hash check".into()));
    }
    let plain = seal
        .open(&id.0, TRAILER_TEXT, &ad(id, "trailer"), sealed)
        .map_err(|why| (trailer_at, format!("its trailer is not authentic ({why})")))?;
    if plain.len() % REF_LEN != 0 {
        return Err((
            trailer_at,
            "its trailer is not a whole number of records".into(),
        ));
    }
    let mut out = Vec::with_capacity(plain.len() / REF_LEN);
    for rec in plain.chunks_exact(REF_LEN) {
        let mut b = [0u8; REF_LEN];
        b.copy_from_slice(rec);
        let r = BlobRef::decode(&b)
            .filter(|r| r.pack == *id && r.frame_offset + u64::from(r.frame_len) <= trailer_at)
            .ok_or((
                trailer_at,
                "its trailer lists a blob outside its frames".to_string(),
            ))?;
        out.push(r);
    }
    Ok(out)
}

/// The raw bytes of the frame holding `r` (opened, decompressed); the caller caches them.
pub fn read_frame(backend: &dyn Backend, seal: &dyn Seal, r: &BlobRef) -> Result<Vec<u8>> {
    let damaged = |why: String| Error::PackDamaged {
        repo: backend.location().into(),
        pack: r.pack.to_string(),
        offset: r.frame_offset,
        why,
    };
    let sealed = backend.read_range(&Key::Pack(r.pack), r.frame_offset, u64::from(r.frame_len))?;
    let plain = seal
        .open(&r.pack.0, r.frame_offset, &ad(&r.pack, "frame"), sealed)
        .map_err(|why| damaged(format!("its frame is not authentic ({why})")))?;
    frame::decode(&plain).map_err(damaged)
}

/// The bytes of blob `r` out of its frame's raw bytes, checked against its id.
pub fn blob_of(seal: &dyn Seal, frame_raw: &[u8], r: &BlobRef, location: &str) -> Result<Vec<u8>> {
    let end = r.within as usize + r.len as usize;
    let damaged = |why: String| Error::PackDamaged {
        repo: location.into(),
        pack: r.pack.to_string(),
        offset: r.frame_offset,
        why,
    };
    let data = frame_raw.get(r.within as usize..end).ok_or_else(|| {
        damaged(format!(
            "blob {} lies past the end of its frame",
            r.id.short()
        ))
    })?;
    if seal.blob_id(data) != r.id {
        return Err(damaged(format!(
            "blob {} fails its hash check",
            r.id.short()
        )));
    }
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalDir;
    use crate::repo::v2::frame::Plain;

    #[test]
    fn records_round_trip_and_impossible_ones_are_refused() {
        let r = BlobRef {
            id: ChunkId::of(b"x"),
            kind: BlobKind::Page,
            pack: PackId::generate(),
            frame_offset: (1 << 39) + 5,
            frame_len: 123_456,
            within: (1 << 20) + 3,
            len: MAX_BLOB,
        };
        assert_eq!(BlobRef::decode(&r.encode()), Some(r));
        assert_eq!(BlobRef::decode(&[0; REF_LEN]), None);
        let mut bad = r.encode();
        bad[61] = 7;
        assert_eq!(BlobRef::decode(&bad), None);
        let mut big = r;
        big.len = MAX_BLOB + 1;
        assert_eq!(BlobRef::decode(&big.encode()), None);
    }

    #[test]
    fn a_pack_of_frames_reads_back_blob_by_blob_and_tampering_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.create_layout().unwrap();
        let id = PackId::generate();
        let mut w = PackWriter::create(&b, id).unwrap();
        let text: Vec<Vec<u8>> = (0..16u8)
            .map(|i| format!("snarf {i} ").repeat(6000).into_bytes())
            .collect();
        let blobs: Vec<(ChunkId, BlobKind, &[u8])> = text
            .iter()
            .map(|t| (ChunkId::of(t), BlobKind::Data, t.as_slice()))
            .collect();
        let refs = w.append_frame(&Plain, 3, &blobs).unwrap();
        let page = b"a page".to_vec();
        let more = w
            .append_frame(&Plain, 3, &[(ChunkId::of(&page), BlobKind::Page, &page)])
            .unwrap();
        assert!(b.list(crate::repo::backend::Kind::Pack).unwrap().is_empty());
        let (all, size) = w.finish(&Plain).unwrap();
        assert_eq!(all.len(), 17);
        assert_eq!(b.size(&Key::Pack(id)).unwrap(), Some(size));
        // One frame for 16 blobs, compressed far below 16 x 48 KiB.
        assert!(refs.iter().all(|r| r.frame_offset == HEADER_LEN));
        assert!(refs[0].frame_len < 20_000, "{}", refs[0].frame_len);
        let trailer = read_trailer(&b, &Plain, &id, size).unwrap();
        assert_eq!(trailer, all);
        let raw = read_frame(&b, &Plain, &refs[5]).unwrap();
        assert_eq!(blob_of(&Plain, &raw, &refs[5], "r").unwrap(), text[5]);
        let raw = read_frame(&b, &Plain, &more[0]).unwrap();
        assert_eq!(blob_of(&Plain, &raw, &more[0], "r").unwrap(), page);
        // A wrong id for the bytes is found; so is a flipped byte of the trailer or frame.
        let mut wrong = refs[5];
        wrong.id = ChunkId::of(b"other");
        assert!(blob_of(&Plain, &raw, &wrong, "r").is_err());
        let path = b.path_of(&Key::Pack(id));
        let good = std::fs::read(&path).unwrap();
        let mut t = good.clone();
        let at = t.len() - 48 - 10;
        t[at] ^= 1;
        std::fs::write(&path, &t).unwrap();
        assert!(read_trailer(&b, &Plain, &id, size).is_err());
        let mut f = good;
        f[HEADER_LEN as usize + 10] ^= 0xff;
        std::fs::write(&path, &f).unwrap();
        let hit =
            read_frame(&b, &Plain, &refs[5]).and_then(|raw| blob_of(&Plain, &raw, &refs[5], "r"));
        assert!(hit.is_err(), "a damaged frame must not give data");
        assert!(read_trailer(&b, &Plain, &PackId::generate(), size).is_err());
    }

    #[test]
    fn an_encrypted_pack_holds_no_plaintext_and_every_flipped_byte_is_detected() {
        use crate::repo::v2::crypto::{Aead, MasterKey};
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.create_layout().unwrap();
        let seal = Aead::new(MasterKey::generate().unwrap());
        let id = PackId::generate();
        let mut w = PackWriter::create(&b, id).unwrap();
        let secret = b"TOP SECRET snarf volume text ".repeat(2000);
        let bid = seal.blob_id(&secret);
        let refs = w
            .append_frame(&seal, 3, &[(bid, BlobKind::Data, &secret)])
            .unwrap();
        let (_, size) = w.finish(&seal).unwrap();
        let path = b.path_of(&Key::Pack(id));
        let good = std::fs::read(&path).unwrap();
        assert!(
            !good.windows(10).any(|x| x == b"TOP SECRET"),
            "plaintext in the pack"
        );
        assert!(
            !good.windows(32).any(|x| x == ChunkId::of(&secret).0),
            "a plain id in the pack"
        );
        let raw = read_frame(&b, &seal, &refs[0]).unwrap();
        assert_eq!(blob_of(&seal, &raw, &refs[0], "r").unwrap(), secret);
        for at in (HEADER_LEN as usize..good.len()).step_by(7) {
            let mut t = good.clone();
            t[at] ^= 0x01;
            std::fs::write(&path, &t).unwrap();
            let trailer = read_trailer(&b, &seal, &id, size);
            let blob =
                read_frame(&b, &seal, &refs[0]).and_then(|raw| blob_of(&seal, &raw, &refs[0], "r"));
            assert!(
                trailer.is_err() || blob.is_err(),
                "a flip at {at} went unnoticed"
            );
        }
    }
}
