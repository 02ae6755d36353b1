//! Packs (format 2): frames of blobs in one object of tens of MiB, uploaded through the
//! backend (a pack is visible only once complete) and self-describing: the sealed trailer
//! lists every blob, so a pack left by a killed backup can be adopted into the index from
//! its trailer alone.
//!
//! ```text
//! 0..8     magic "SNARFPK2"
//! 8..24    pack id
//! 24..32   creation time, Unix seconds u64 LE (gc keeps young unreferenced packs)
//! 32..     frames, back to back, each sealed as text number = its offset
//! trailer  sealed as text number u64::MAX: one 64-byte blob record per blob (its
//!          associated data includes the header, so the header is authenticated too)
//! footer   48 bytes: sealed trailer length u64 LE, blake3(pack id ‖ sealed trailer),
//!          magic "SNARFEN2"
//! ```
//!
//! A blob record is the 64-byte encoding of a [`ChunkRef`] (see `chunk`). Format 1 packs
//! (`packs/<id>.pack`, kept by `snarf repo upgrade`) are read here too: their chunks are
//! [`BlobKind::Legacy`] blobs, each its own "frame".

use super::chunk::{BlobKind, ChunkRef, MAX_BLOB, PACK_HEADER_LEN as HEADER_LEN, REF_LEN};
use super::frame::{self, Seal};
use crate::chain::ErrorChain;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::repo::backend::{Backend, Finishing, Key, Upload};
use crate::repo::error::{Error, Result};
use crate::repo::ids::{ChunkId, PackId};

/// Magic at the start of a pack.
const MAGIC: &[u8; 8] = b"SNARFPK2";
/// Magic at the very end.
const END_MAGIC: &[u8; 8] = b"SNARFEN2";

/// Bytes of the footer.
const FOOTER_LEN: u64 = 48;
/// The text number of the trailer, which no frame can have.
const TRAILER_TEXT: u64 = u64::MAX;

/// The associated data binding a sealed text to its pack and to what it is.
fn ad(pack: &PackId, what: &str) -> Vec<u8> {
    let mut a = Key::Pack(*pack).name().into_bytes();
    a.push(0);
    a.extend_from_slice(what.as_bytes());
    a
}

/// The associated data of a pack's trailer: it binds the header as well.
fn trailer_ad(pack: &PackId, header: &[u8]) -> Vec<u8> {
    let mut a = ad(pack, "trailer");
    a.push(0);
    a.extend_from_slice(header);
    a
}

/// A pack being uploaded.
pub struct PackWriter {
    id: PackId,
    header: [u8; HEADER_LEN as usize],
    out: Box<dyn Upload>,
    len: u64,
    blobs: Vec<ChunkRef>,
}

impl PackWriter {
    /// Starts uploading pack `id` to `backend`.
    pub fn create(backend: &dyn Backend, id: PackId) -> Result<PackWriter> {
        let mut out = backend.upload(&Key::Pack(id))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&id.0);
        header[24..32].copy_from_slice(&crate::repo::ids::now_secs().to_le_bytes());
        out.write(&header)?;
        Ok(PackWriter {
            id,
            header,
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
        seal: &Arc<dyn Seal>,
        level: i32,
        blobs: &[(ChunkId, BlobKind, &[u8])],
    ) -> Result<Vec<ChunkRef>> {
        let mut raw = Vec::with_capacity(blobs.iter().map(|b| b.2.len()).sum());
        let mut places = Vec::with_capacity(blobs.len());
        for (id, kind, data) in blobs {
            places.push((*id, *kind, data.len()));
            raw.extend_from_slice(data);
        }
        self.append_joined(seal, level, &places, &raw)
    }

    /// [`PackWriter::append_frame`] for blobs already laid end to end in `raw` (each: id,
    /// kind, length; in frame order), so a writer that gathers a frame copies it once.
    pub fn append_joined(
        &mut self,
        seal: &Arc<dyn Seal>,
        level: i32,
        blobs: &[(ChunkId, BlobKind, usize)],
        raw: &[u8],
    ) -> Result<Vec<ChunkRef>> {
        self.append_encoded(seal, blobs, raw.len(), frame::encode(raw, level))
    }

    /// [`PackWriter::append_joined`] for a frame of `raw_len` raw bytes already encoded
    /// ([`frame::encode`], by the writer's compression threads). Its offset, and so its
    /// nonce, is known here; it is sealed by the upload ([`Upload::write_later`]: on the
    /// upload thread of a pipelined one), so the cipher's time overlaps the caller's work.
    pub fn append_encoded(
        &mut self,
        seal: &Arc<dyn Seal>,
        blobs: &[(ChunkId, BlobKind, usize)],
        raw_len: usize,
        encoded: Vec<u8>,
    ) -> Result<Vec<ChunkRef>> {
        let mut places = Vec::with_capacity(blobs.len());
        let mut at = 0usize;
        for &(id, kind, n) in blobs {
            let len = u32::try_from(n)
                .ok()
                .filter(|&n| n > 0 && n <= MAX_BLOB)
                .ok_or_else(|| {
                    Error::BadArgument(format!("a blob must be 1 byte to 8 MiB, not {n}"))
                })?;
            places.push((id, kind, at as u32, len));
            at += n;
        }
        if at != raw_len {
            return Err(Error::BadArgument(format!(
                "a frame's blobs add up to {at} bytes, not its {raw_len}"
            )));
        }
        if raw_len > frame::MAX_FRAME_RAW {
            return Err(Error::BadArgument(format!(
                "a frame of {raw_len} raw bytes is larger than {} bytes",
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
        let sealed_len = encoded.len() + seal.overhead();
        let frame_len = u32::try_from(sealed_len)
            .map_err(|_| Error::BadArgument("a sealed frame of more than 4 GiB".into()))?;
        if seal.is_plain() {
            self.out.write_owned(encoded)?;
        } else {
            let (seal, pack) = (seal.clone(), self.id);
            self.out.write_later(
                sealed_len,
                Box::new(move || seal.seal(&pack.0, offset, &ad(&pack, "frame"), encoded)),
            )?;
        }
        self.len += sealed_len as u64;
        let refs: Vec<ChunkRef> = places
            .into_iter()
            .map(|(id, kind, within, raw_len)| ChunkRef {
                id,
                kind,
                pack: self.id,
                offset,
                stored_len: frame_len,
                within,
                raw_len,
            })
            .collect();
        self.blobs.extend_from_slice(&refs);
        Ok(refs)
    }

    /// Writes the sealed trailer and footer and finishes the upload: from here on the pack
    /// is durable and visible. Returns its blobs and size.
    pub fn finish(self, seal: &dyn Seal) -> Result<(Vec<ChunkRef>, u64)> {
        let sealed = self.finish_later(seal)?;
        sealed.finishing.wait()?;
        Ok((sealed.refs, sealed.size))
    }

    /// Writes the sealed trailer and footer and requests the upload's finish without
    /// waiting for it ([`Upload::finish_later`]): the pack is durable once the returned
    /// [`SealedPack`] says so, not before.
    pub fn finish_later(mut self, seal: &dyn Seal) -> Result<SealedPack> {
        let mut trailer = Vec::with_capacity(self.blobs.len() * REF_LEN);
        for b in &self.blobs {
            trailer.extend_from_slice(&b.encode());
        }
        let sealed = seal.seal(
            &self.id.0,
            TRAILER_TEXT,
            &trailer_ad(&self.id, &self.header),
            trailer,
        )?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.id.0);
        hasher.update(&sealed);
        let mut footer = [0u8; FOOTER_LEN as usize];
        footer[..8].copy_from_slice(&(sealed.len() as u64).to_le_bytes());
        footer[8..40].copy_from_slice(hasher.finalize().as_bytes());
        footer[40..].copy_from_slice(END_MAGIC);
        let size = self.len + sealed.len() as u64 + FOOTER_LEN;
        let mut tail = sealed;
        tail.extend_from_slice(&footer);
        self.out.write_owned(tail)?;
        Ok(SealedPack {
            id: self.id,
            refs: self.blobs,
            size,
            finishing: self.out.finish_later()?,
        })
    }
}

/// A pack written whole whose upload is finishing: its blobs are durable only once
/// [`Sealing::settle`] returns it.
pub struct SealedPack {
    id: PackId,
    refs: Vec<ChunkRef>,
    size: u64,
    finishing: Box<dyn Finishing>,
}

/// Packs a backup writer sealed are finishing (on ssh: the far side fsyncs them) while it
/// compresses the next: at most this many, so what is not yet durable stays bounded.
pub const IN_FLIGHT: usize = 2;

/// Sealed packs whose uploads are finishing, oldest first.
#[derive(Default)]
pub struct Sealing {
    packs: VecDeque<SealedPack>,
}

impl Sealing {
    /// True if pack `id` is sealed but not yet durable.
    pub fn holds(&self, id: &PackId) -> bool {
        self.packs.iter().any(|p| p.id == *id)
    }

    /// Adds a pack that is finishing.
    pub fn push(&mut self, p: SealedPack) {
        self.packs.push_back(p);
    }

    /// The packs that are durable now, oldest first, with their blobs: those finished
    /// already, and the oldest waited for while more than `keep` are finishing. Packs
    /// become durable in the order they were sealed (a later one is not returned before an
    /// earlier one). The first failure is returned, and its pack and those after it are
    /// never reported durable.
    pub fn settle(&mut self, keep: usize) -> Result<Vec<(PackId, Vec<ChunkRef>)>> {
        let mut done = Vec::new();
        loop {
            let over = self.packs.len() > keep;
            let Some(front) = self.packs.front_mut() else {
                break;
            };
            if !over && !front.finishing.ready() {
                break;
            }
            let Some(p) = self.packs.pop_front() else {
                break;
            };
            if let Err(e) = p.finishing.wait() {
                self.packs.clear();
                return Err(e);
            }
            done.push((p.id, p.refs));
        }
        Ok(done)
    }

    /// How many packs are finishing.
    pub fn len(&self) -> usize {
        self.packs.len()
    }

    /// True when no pack is finishing.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }
}

/// The key of the pack holding `r`: a format 1 pack for a legacy blob.
pub fn pack_key(r: &ChunkRef) -> Key {
    match r.kind {
        BlobKind::Legacy => Key::LegacyPack(r.pack),
        _ => Key::Pack(r.pack),
    }
}

/// When pack `key` was written (Unix seconds), from its header; `None` for a format 1 pack,
/// which is older than any format 2 repository.
pub fn created(backend: &dyn Backend, key: &Key) -> Result<Option<u64>> {
    if matches!(key, Key::LegacyPack(_)) {
        return Ok(None);
    }
    let h = backend.read_range(key, 0, HEADER_LEN)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[24..32]);
    Ok(Some(u64::from_le_bytes(b)))
}

/// Reads and verifies the trailer of pack `key` of `size` bytes (a format 2 pack, or a
/// format 1 pack an upgrade kept, whose chunks become legacy blobs; only a plain
/// repository has those). The error gives the offset and the problem.
pub fn read_trailer(
    backend: &dyn Backend,
    seal: &dyn Seal,
    key: &Key,
    size: u64,
) -> std::result::Result<Vec<ChunkRef>, (u64, String)> {
    let id = match key {
        Key::Pack(id) => id,
        Key::LegacyPack(id) => return read_legacy_trailer(backend, seal, key, id, size),
        _ => return Err((0, format!("{key} is not a pack"))),
    };
    let read = |off: u64, len: u64| {
        backend
            .read_range(key, off, len)
            .map_err(|e| (off, format!("it cannot be read ({})", e.chain())))
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
        .open(&id.0, TRAILER_TEXT, &trailer_ad(id, &header), sealed)
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
        let r = ChunkRef::decode(&b)
            .filter(|r| r.pack == *id && r.offset + u64::from(r.stored_len) <= trailer_at)
            .ok_or((
                trailer_at,
                "its trailer lists a blob outside its frames".to_string(),
            ))?;
        out.push(r);
    }
    Ok(out)
}

fn read_legacy_trailer(
    backend: &dyn Backend,
    seal: &dyn Seal,
    key: &Key,
    id: &PackId,
    size: u64,
) -> std::result::Result<Vec<ChunkRef>, (u64, String)> {
    if !seal.is_plain() {
        return Err((
            0,
            "a format 1 pack cannot be part of an encrypted repository".into(),
        ));
    }
    let read_at = |buf: &mut [u8], off: u64| {
        let data = backend
            .read_range(key, off, buf.len() as u64)
            .map_err(|e| std::io::Error::other(e.chain().to_string()))?;
        buf.copy_from_slice(&data);
        Ok(())
    };
    let entries = crate::repo::v1::pack::parse_trailer(size, id, &read_at)?;
    entries
        .into_iter()
        .map(|e| {
            let r = ChunkRef {
                id: e.id,
                kind: BlobKind::Legacy,
                pack: *id,
                offset: e.offset,
                stored_len: e.stored_len,
                within: 0,
                raw_len: e.raw_len,
            };
            ChunkRef::decode(&r.encode()).ok_or((
                e.offset,
                format!(
                    "its trailer lists chunk {} that format 2 cannot address",
                    e.id.short()
                ),
            ))
        })
        .collect()
}

/// The raw bytes of the frame holding `r` (opened, decompressed); the caller caches them.
/// A legacy blob's frame is the chunk itself.
pub fn read_frame(backend: &dyn Backend, seal: &dyn Seal, r: &ChunkRef) -> Result<Vec<u8>> {
    let damaged = |why: String| Error::PackDamaged {
        repo: backend.location().into(),
        pack: r.pack.to_string(),
        offset: r.offset,
        why,
    };
    if r.kind == BlobKind::Legacy {
        if !seal.is_plain() {
            return Err(damaged(
                "a format 1 chunk cannot be part of an encrypted repository".into(),
            ));
        }
        let stored = backend.read_range(&pack_key(r), r.offset, u64::from(r.stored_len))?;
        return if r.stored_len < r.raw_len {
            zstd::bulk::decompress(&stored, r.raw_len as usize)
                .map_err(|e| damaged(format!("chunk {} does not decompress ({e})", r.id.short())))
        } else {
            Ok(stored)
        };
    }
    let sealed = backend.read_range(&Key::Pack(r.pack), r.offset, u64::from(r.stored_len))?;
    let plain = seal
        .open(&r.pack.0, r.offset, &ad(&r.pack, "frame"), sealed)
        .map_err(|why| damaged(format!("its frame is not authentic ({why})")))?;
    frame::decode(&plain).map_err(damaged)
}

/// The bytes of blob `r` out of its frame's raw bytes, checked against its id.
pub fn blob_of(seal: &dyn Seal, frame_raw: &[u8], r: &ChunkRef, location: &str) -> Result<Vec<u8>> {
    let end = r.within as usize + r.raw_len as usize;
    let damaged = |why: String| Error::PackDamaged {
        repo: location.into(),
        pack: r.pack.to_string(),
        offset: r.offset,
        why,
    };
    let data = frame_raw.get(r.within as usize..end).ok_or_else(|| {
        damaged(format!(
            "blob {} lies past the end of its frame",
            r.id.short()
        ))
    })?;
    let id = match r.kind {
        // Format 1 chunk ids are plain blake3 (legacy blobs exist only in plain repositories).
        BlobKind::Legacy => ChunkId::of(data),
        _ => seal.blob_id(data),
    };
    if id != r.id {
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
        let refs = w.append_frame(&plain(), 3, &blobs).unwrap();
        let page = b"a page".to_vec();
        let more = w
            .append_frame(&plain(), 3, &[(ChunkId::of(&page), BlobKind::Page, &page)])
            .unwrap();
        assert!(b.list(crate::repo::backend::Kind::Pack).unwrap().is_empty());
        let (all, size) = w.finish(&Plain).unwrap();
        assert_eq!(all.len(), 17);
        assert_eq!(b.size(&Key::Pack(id)).unwrap(), Some(size));
        // One frame for 16 blobs, compressed far below 16 x 48 KiB.
        assert!(refs.iter().all(|r| r.offset == HEADER_LEN));
        assert!(refs[0].stored_len < 20_000, "{}", refs[0].stored_len);
        let trailer = read_trailer(&b, &Plain, &Key::Pack(id), size).unwrap();
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
        assert!(read_trailer(&b, &Plain, &Key::Pack(id), size).is_err());
        let mut f = good;
        f[HEADER_LEN as usize + 10] ^= 0xff;
        std::fs::write(&path, &f).unwrap();
        let hit =
            read_frame(&b, &Plain, &refs[5]).and_then(|raw| blob_of(&Plain, &raw, &refs[5], "r"));
        assert!(hit.is_err(), "a damaged frame must not give data");
        assert!(read_trailer(&b, &Plain, &Key::Pack(PackId::generate()), size).is_err());
    }

    #[test]
    fn an_encrypted_pack_holds_no_plaintext_and_every_flipped_byte_is_detected() {
        encrypted_pack_holds_no_plaintext_and_every_flipped_byte_is_detected(false);
    }

    #[test]
    fn an_encrypted_pack_sealed_on_the_upload_thread_is_the_same_pack() {
        encrypted_pack_holds_no_plaintext_and_every_flipped_byte_is_detected(true);
    }

    fn plain() -> Arc<dyn Seal> {
        Arc::new(Plain)
    }

    /// With `pipelined`, the frames are sealed by the upload thread (`write_later`), several
    /// of them waiting at once, and must read back as when sealed in place.
    fn encrypted_pack_holds_no_plaintext_and_every_flipped_byte_is_detected(pipelined: bool) {
        use crate::repo::backend::Pipelined;
        use crate::repo::v2::crypto::{Aead, MasterKey};
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.create_layout().unwrap();
        let seal: Arc<dyn Seal> = Arc::new(Aead::new(MasterKey::generate().unwrap()));
        let id = PackId::generate();
        let through: Box<dyn Backend> = if pipelined {
            Box::new(Pipelined::new(Arc::new(LocalDir::new(dir.path()))).unwrap())
        } else {
            Box::new(LocalDir::new(dir.path()))
        };
        let mut w = PackWriter::create(through.as_ref(), id).unwrap();
        let mut earlier = Vec::new();
        for n in 0..5u8 {
            let text = vec![n; 3000 + usize::from(n)];
            let r = w
                .append_frame(&seal, 3, &[(seal.blob_id(&text), BlobKind::Data, &text)])
                .unwrap();
            earlier.push((r[0], text));
        }
        let secret = b"TOP SECRET snarf volume text ".repeat(2000);
        let bid = seal.blob_id(&secret);
        let refs = w
            .append_frame(&seal, 3, &[(bid, BlobKind::Data, &secret)])
            .unwrap();
        let (_, size) = w.finish(seal.as_ref()).unwrap();
        drop(through);
        let path = b.path_of(&Key::Pack(id));
        let good = std::fs::read(&path).unwrap();
        for (r, text) in &earlier {
            let raw = read_frame(&b, seal.as_ref(), r).unwrap();
            assert_eq!(&blob_of(seal.as_ref(), &raw, r, "r").unwrap(), text);
        }
        assert!(
            !good.windows(10).any(|x| x == b"TOP SECRET"),
            "plaintext in the pack"
        );
        assert!(
            !good.windows(32).any(|x| x == ChunkId::of(&secret).0),
            "a plain id in the pack"
        );
        let raw = read_frame(&b, seal.as_ref(), &refs[0]).unwrap();
        assert_eq!(blob_of(seal.as_ref(), &raw, &refs[0], "r").unwrap(), secret);
        for at in (HEADER_LEN as usize..good.len()).step_by(7) {
            let mut t = good.clone();
            t[at] ^= 0x01;
            std::fs::write(&path, &t).unwrap();
            let trailer = read_trailer(&b, seal.as_ref(), &Key::Pack(id), size);
            let any_blob_refused = earlier.iter().map(|e| &e.0).chain(&refs).any(|r| {
                read_frame(&b, seal.as_ref(), r)
                    .and_then(|raw| blob_of(seal.as_ref(), &raw, r, "r"))
                    .is_err()
            });
            assert!(
                trailer.is_err() || any_blob_refused,
                "a flip at {at} went unnoticed"
            );
        }
    }
    #[test]
    fn format_1_packs_read_as_legacy_blobs_in_plain_repositories_only() {
        use crate::repo::v1::pack::PackWriter as V1Writer;
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.create_layout().unwrap();
        let id = PackId::generate();
        let text = b"format one chunk ".repeat(4000);
        let random: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut w = V1Writer::create(&dir.path().join("packs"), id).unwrap();
        let z = crate::repo::v1::chunk::compress(&text, 3).unwrap();
        w.append(ChunkId::of(&text), &z, text.len() as u32).unwrap();
        w.append(ChunkId::of(&random), &random, random.len() as u32)
            .unwrap();
        let done = w.finish().unwrap();
        done.publish().unwrap();
        let key = Key::LegacyPack(id);
        let listed = b.list(crate::repo::backend::Kind::Pack).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, key);
        let refs = read_trailer(&b, &Plain, &key, listed[0].1).unwrap();
        assert_eq!(refs.len(), 2);
        assert!(refs
            .iter()
            .all(|r| r.kind == BlobKind::Legacy && pack_key(r) == key));
        for (r, want) in refs.iter().zip([&text[..], &random[..]]) {
            let raw = read_frame(&b, &Plain, r).unwrap();
            assert_eq!(blob_of(&Plain, &raw, r, "here").unwrap(), want);
        }
        assert_eq!(created(&b, &key).unwrap(), None);
        let seal = crate::repo::v2::crypto::Aead::new(
            crate::repo::v2::crypto::MasterKey::generate().unwrap(),
        );
        assert!(read_trailer(&b, &seal, &key, listed[0].1).is_err());
        assert!(read_frame(&b, &seal, &refs[0]).is_err());
    }
}
