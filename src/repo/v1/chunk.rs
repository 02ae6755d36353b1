//! Chunks and chunk references. A chunk is one snarf's data, named by the blake3 hash of its
//! uncompressed bytes and stored zstd-compressed, or raw when compression would not make it
//! smaller. A [`ChunkRef`] says where a chunk lives; its 64-byte encoding is the record of both
//! the index files and the per-volume chunk tables:
//!
//! ```text
//! 0..32   chunk id (blake3 of the uncompressed data)      all zero for a zero snarf
//! 32..48  pack id                                          all zero for a zero snarf
//! 48..56  offset of the stored bytes in the pack, u64 LE
//! 56..60  stored length, u32 LE (< raw length means zstd-compressed)
//! 60..64  raw (uncompressed) length, u32 LE; 0 means "no record" (never written)
//! ```

use super::ids::{ChunkId, PackId};

/// Size of one encoded [`ChunkRef`].
pub const REF_LEN: usize = 64;

/// Bytes of a chunk sampled to decide cheaply whether compressing it is worth it.
const SAMPLE: usize = 8 << 10;
/// Spacing of the extra samples of an input longer than this (a format 2 frame of many
/// snarfs): one sample per 64 KiB, so a compressible snarf between random ones is seen.
/// Three samples alone stored 2.1% of the bench volume raw that zstd shrinks (frames whose
/// start, middle and end were random but which held text or logs elsewhere).
const SAMPLE_EVERY: usize = 64 << 10;

/// Where a chunk is stored, or that a snarf is all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// blake3 of the uncompressed data (all zero for a zero snarf).
    pub id: ChunkId,
    /// The pack holding it (all zero for a zero snarf).
    pub pack: PackId,
    /// Offset of the stored bytes in the pack file.
    pub offset: u64,
    /// Stored length; smaller than `raw_len` exactly when the bytes are zstd-compressed.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
}

impl ChunkRef {
    /// The marker of an all-zero snarf of `len` bytes: recorded, never stored.
    pub fn zero(len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId([0; 32]),
            pack: PackId([0; 16]),
            offset: 0,
            stored_len: 0,
            raw_len: len,
        }
    }

    /// True for the zero-snarf marker.
    pub fn is_zero(&self) -> bool {
        self.pack.is_none() && self.stored_len == 0
    }

    /// True when the stored bytes are zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        !self.is_zero() && self.stored_len < self.raw_len
    }

    /// The 64-byte record.
    pub fn encode(&self) -> [u8; REF_LEN] {
        let mut b = [0u8; REF_LEN];
        b[0..32].copy_from_slice(&self.id.0);
        b[32..48].copy_from_slice(&self.pack.0);
        b[48..56].copy_from_slice(&self.offset.to_le_bytes());
        b[56..60].copy_from_slice(&self.stored_len.to_le_bytes());
        b[60..64].copy_from_slice(&self.raw_len.to_le_bytes());
        b
    }

    /// Decodes a record; `None` for a never-written (all-zero) record.
    pub fn decode(b: &[u8; REF_LEN]) -> Option<ChunkRef> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let raw_len = u32_at(60);
        if raw_len == 0 {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[0..32]);
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[32..48]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[48..56]);
        Some(ChunkRef {
            id: ChunkId(id),
            pack: PackId(pack),
            offset: u64::from_le_bytes(off),
            stored_len: u32_at(56),
            raw_len,
        })
    }
}

/// True when every byte is zero (compares 16 bytes at a time).
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(16);
    // chunks_exact yields 16-byte slices, so the conversion cannot fail; a failure would
    // count as non-zero, which is the safe answer.
    let words_zero = blocks
        .by_ref()
        .all(|c| <[u8; 16]>::try_from(c).map(u128::from_ne_bytes).ok() == Some(0));
    words_zero && blocks.remainder().iter().all(|&b| b == 0)
}

thread_local! {
    /// One zstd context per thread and level, reused: a fresh context per 64 KiB chunk
    /// spends much of its time allocating and clearing its tables.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// A reused decompression context.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses with this thread's reusable context for `level`.
fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSORS.with(|cell| {
        let mut list = cell.borrow_mut();
        let pos = match list.iter().position(|(l, _)| *l == level) {
            Some(p) => p,
            None => {
                list.push((level, zstd::bulk::Compressor::new(level).ok()?));
                list.len() - 1
            }
        };
        list[pos].1.compress(data).ok()
    })
}

/// Compresses `data` at `level`; `None` when the result would not be smaller, detected first
/// on a fast sample so random or already-compressed data costs little.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() >= 4 * SAMPLE {
        // Level-1 passes over samples from the start, middle and end predict incompressible
        // data cheaply. One sample is not enough: a snarf often straddles a random region
        // and a compressible one, and a lone sample in the random half would store the
        // compressible half raw.
        let ends = [0, data.len() / 2 - SAMPLE / 2, data.len() - SAMPLE];
        let spread = (SAMPLE_EVERY / 2..data.len() - SAMPLE).step_by(SAMPLE_EVERY);
        let compressible = ends.into_iter().chain(spread).any(|start| {
            let sample = &data[start..start + SAMPLE];
            matches!(zstd_compress(sample, 1), Some(c) if c.len() * 100 < sample.len() * 97)
        });
        if !compressible {
            return None;
        }
    }
    let c = zstd_compress(data, level)?;
    (c.len() < data.len()).then_some(c)
}

/// Decompresses with this thread's reusable context.
fn zstd_decompress(stored: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(stored, raw_len),
            None => zstd::bulk::decompress(stored, raw_len),
        }
    })
}

/// Turns stored bytes back into the chunk `r` names, checking length and hash.
/// The error text says what is wrong; callers add the place.
pub fn decode(stored: &[u8], r: &ChunkRef) -> Result<Vec<u8>, String> {
    let raw = if r.is_compressed() {
        let data = zstd_decompress(stored, r.raw_len as usize)
            .map_err(|e| format!("chunk {} does not decompress ({e})", r.id.short()))?;
        if data.len() != r.raw_len as usize {
            return Err(format!(
                "chunk {} decompresses to {} bytes instead of {}",
                r.id.short(),
                data.len(),
                r.raw_len
            ));
        }
        data
    } else {
        if stored.len() != r.raw_len as usize {
            return Err(format!(
                "chunk {} has {} bytes instead of {}",
                r.id.short(),
                stored.len(),
                r.raw_len
            ));
        }
        stored.to_vec()
    };
    if ChunkId::of(&raw) != r.id {
        return Err(format!("chunk {} fails its hash check", r.id.short()));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_blank_is_none() {
        let r = ChunkRef {
            id: ChunkId::of(b"x"),
            pack: PackId::generate(),
            offset: 1 << 40,
            stored_len: 17,
            raw_len: 65536,
        };
        assert_eq!(ChunkRef::decode(&r.encode()), Some(r));
        assert!(r.is_compressed());
        assert_eq!(ChunkRef::decode(&[0; REF_LEN]), None);
        let z = ChunkRef::zero(4096);
        assert!(z.is_zero());
        assert_eq!(ChunkRef::decode(&z.encode()), Some(z));
    }

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[0; 65537]));
        let mut v = vec![0u8; 65537];
        v[65536] = 1;
        assert!(!is_all_zero(&v));
        v[65536] = 0;
        v[3] = 1;
        assert!(!is_all_zero(&v));
        assert!(is_all_zero(&[]));
    }

    #[test]
    fn compressible_compresses_random_does_not_and_both_decode() {
        let text: Vec<u8> = b"snarf ".iter().cycle().take(65536).copied().collect();
        let c = compress(&text, 3).unwrap();
        assert!(c.len() < 1000);
        let mut rnd = vec![0u8; 65536];
        let mut x = 0x12345678u64;
        for b in rnd.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert!(compress(&rnd, 3).is_none());
        let r = ChunkRef {
            id: ChunkId::of(&text),
            pack: PackId::generate(),
            offset: 0,
            stored_len: c.len() as u32,
            raw_len: text.len() as u32,
        };
        assert_eq!(decode(&c, &r).unwrap(), text);
        let mut bad = c.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode(&bad, &r).is_err());
    }

    #[test]
    fn a_frame_random_at_its_ends_and_middle_still_compresses_the_text_between() {
        // 16 snarfs of 64 KiB: random except the 4th, 5th and 12th, which hold text.
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut frame: Vec<u8> = (0..16 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text: Vec<u8> = b"log line 17: snarf ok\n"
            .iter()
            .cycle()
            .take(1 << 16)
            .copied()
            .collect();
        for k in [3usize, 4, 11] {
            frame[k << 16..(k + 1) << 16].copy_from_slice(&text);
        }
        let c = compress(&frame, 3).expect("the text snarfs make the frame compressible");
        assert!(
            c.len() < frame.len() - (3 << 16) + 4096,
            "{} bytes",
            c.len()
        );
        // All random again but for snarf 11 (still text): still compressed.
        let rnd = {
            let mut y = 7u64;
            (0..2 << 16)
                .map(|_| {
                    y ^= y << 13;
                    y ^= y >> 7;
                    y ^= y << 17;
                    y as u8
                })
                .collect::<Vec<u8>>()
        };
        frame[3 << 16..5 << 16].copy_from_slice(&rnd);
        assert!(compress(&frame, 3).is_some());
        frame[11 << 16..12 << 16].copy_from_slice(&rnd[..1 << 16]);
        assert!(compress(&frame, 3).is_none(), "all random: stored raw");
    }
}
