//! Chunk references (format 2): where a blob is. A blob is one snarf's data (a *chunk*) or a
//! tree page, named by its id (blake3 of its bytes, keyed in encrypted repositories) and
//! stored inside a *frame* of a pack; a [`ChunkRef`] is its full location, so a reader
//! needs no index to fetch it. The same 64-byte encoding is the record of pack trailers,
//! index runs, tree pages, the job protocol and the daemon's released-snarf tables:
//!
//! ```text
//! 0..32   blob id                                    all zero for a zero snarf
//! 32..48  pack id                                    all zero for a zero snarf
//! 48..53  offset of the frame in the pack, u40 LE
//! 53..57  stored (sealed) length of the frame, u32 LE
//! 57..60  offset of the blob in the frame's raw bytes, u24 LE
//! 60      kind: 0 data, 1 tree page, 2 legacy (a format 1 chunk in a format 1 pack)
//! 61..64  blob length, u24 LE; 0 means "no record"
//! ```
//!
//! A *legacy* reference is a chunk of a format 1 pack kept by `snarf repo upgrade`: its
//! "frame" is the chunk's stored bytes (zstd when shorter than the chunk, else raw) in the
//! pack `packs/<id>.pack`, and it is read only in plain repositories.

pub use crate::repo::ids::{ChunkId, PackId};
pub use crate::repo::v1::chunk::{compress, is_all_zero};

/// Size of one encoded [`ChunkRef`].
pub const REF_LEN: usize = 64;
/// Largest blob: 8 MiB (a snarf is at most 1 MiB, a page far less).
pub const MAX_BLOB: u32 = 8 << 20;
/// Bytes before the first frame of a pack (both formats).
pub const PACK_HEADER_LEN: u64 = 32;
/// Largest offset of a blob inside a frame's raw bytes, plus its length.
const MAX_WITHIN: u64 = 16 << 20;

/// What a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobKind {
    /// A snarf's data.
    Data,
    /// A tree page.
    Page,
    /// A snarf's data in a format 1 pack.
    Legacy,
}

impl BlobKind {
    fn byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Page => 1,
            BlobKind::Legacy => 2,
        }
    }

    fn from_byte(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Page),
            2 => Some(BlobKind::Legacy),
            _ => None,
        }
    }

    /// True for the kinds that hold a snarf's data.
    pub fn is_data(self) -> bool {
        matches!(self, BlobKind::Data | BlobKind::Legacy)
    }
}

/// Where a blob is stored, or that a snarf is all zeros (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The blob's id (all zero for a zero snarf).
    pub id: ChunkId,
    /// What it is.
    pub kind: BlobKind,
    /// The pack holding it (all zero for a zero snarf).
    pub pack: PackId,
    /// Offset of its frame in the pack.
    pub offset: u64,
    /// Stored (sealed) length of its frame.
    pub stored_len: u32,
    /// Offset of the blob in the frame's raw bytes.
    pub within: u32,
    /// The blob's length.
    pub raw_len: u32,
}

impl ChunkRef {
    /// The marker of an all-zero snarf of `len` bytes: recorded, never stored.
    pub fn zero(len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId([0; 32]),
            kind: BlobKind::Data,
            pack: PackId([0; 16]),
            offset: 0,
            stored_len: 0,
            within: 0,
            raw_len: len,
        }
    }

    /// True for the zero-snarf marker.
    pub fn is_zero(&self) -> bool {
        self.pack.is_none() && self.stored_len == 0
    }

    /// The 64-byte record.
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut b = [0u8; REF_LEN];
        b[0..32].copy_from_slice(&self.id.0);
        b[32..48].copy_from_slice(&self.pack.0);
        b[48..53].copy_from_slice(&self.offset.to_le_bytes()[..5]);
        b[53..57].copy_from_slice(&self.stored_len.to_le_bytes());
        b[57..60].copy_from_slice(&self.within.to_le_bytes()[..3]);
        b[60] = self.kind.byte();
        b[61..64].copy_from_slice(&self.raw_len.to_le_bytes()[..3]);
        b
    }

    /// Decodes a record; `None` for a blank record (never written) or one that cannot be:
    /// an unknown kind, a blob larger than [`MAX_BLOB`], a frame inside the pack header or
    /// empty, a blob past the end of any frame, a malformed zero marker.
    pub fn decode(b: &[u8; REF_LEN]) -> Option<ChunkRef> {
        let le = |s: &[u8]| {
            let mut x = [0u8; 8];
            x[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(x)
        };
        let r = ChunkRef {
            id: ChunkId(b[0..32].try_into().ok()?),
            pack: PackId(b[32..48].try_into().ok()?),
            offset: le(&b[48..53]),
            stored_len: le(&b[53..57]) as u32,
            within: le(&b[57..60]) as u32,
            kind: BlobKind::from_byte(b[60])?,
            raw_len: le(&b[61..64]) as u32,
        };
        if r.raw_len == 0 || r.raw_len > MAX_BLOB {
            return None;
        }
        if r.pack.is_none() {
            return (r == ChunkRef::zero(r.raw_len)).then_some(r);
        }
        let placed = r.offset >= PACK_HEADER_LEN
            && r.stored_len > 0
            && u64::from(r.within) + u64::from(r.raw_len) <= MAX_WITHIN;
        let legacy_ok = r.kind != BlobKind::Legacy || (r.within == 0 && r.stored_len <= r.raw_len);
        (placed && legacy_ok).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_impossible_ones_are_refused() {
        let r = ChunkRef {
            id: ChunkId::of(b"x"),
            kind: BlobKind::Page,
            pack: PackId::generate(),
            offset: (1 << 39) + 5,
            stored_len: 123_456,
            within: (1 << 20) + 3,
            raw_len: MAX_BLOB,
        };
        assert_eq!(ChunkRef::decode(&r.encode()), Some(r));
        assert_eq!(ChunkRef::decode(&[0; REF_LEN]), None);
        let z = ChunkRef::zero(4096);
        assert!(z.is_zero());
        assert_eq!(ChunkRef::decode(&z.encode()), Some(z));
        let mut bad = r.encode();
        bad[60] = 9;
        assert_eq!(ChunkRef::decode(&bad), None);
        for broken in [
            ChunkRef {
                raw_len: MAX_BLOB + 1,
                ..r
            },
            ChunkRef { offset: 31, ..r },
            ChunkRef { stored_len: 0, ..r },
            ChunkRef {
                within: (16 << 20) - 1,
                ..r
            },
            ChunkRef {
                kind: BlobKind::Legacy,
                ..r
            },
            ChunkRef {
                id: ChunkId::of(b"y"),
                ..ChunkRef::zero(10)
            },
        ] {
            assert_eq!(ChunkRef::decode(&broken.encode()), None, "{broken:?}");
        }
        let legacy = ChunkRef {
            kind: BlobKind::Legacy,
            within: 0,
            stored_len: 100,
            raw_len: 65536,
            ..r
        };
        assert_eq!(ChunkRef::decode(&legacy.encode()), Some(legacy));
    }
}
