//! The hashed bitmap page both of the store's per-volume bitmaps are made of (the
//! write-intent bitmap `state/intent/ID` and the live restore's `state/restore/ID`): 4096
//! bytes, little-endian; bytes 0..8 the page number, 8..40 blake3 of (volume id, page
//! number, the bits), the bits from byte 64. A page is written whole with one pwrite, so a
//! torn or stale page shows as a hash that does not match: damage, never silently clear bits.

/// Bytes per page.
pub const PAGE: usize = 4096;
/// Where the bits start in a page.
pub const BITS_AT: usize = 64;
/// 64-bit words of bits per page.
pub const WORDS: usize = (PAGE - BITS_AT) / 8;

/// The little-endian u64 at `at` (the caller has checked the length).
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The little-endian u32 at `at` (the caller has checked the length).
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn page_hash(id: u64, p: u64, bits: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&p.to_le_bytes());
    h.update(bits);
    h.finalize()
}

/// Page `p` of volume `id`'s bitmap holding these words of bits (at most [`WORDS`]).
pub fn page_bytes(id: u64, p: u64, words: &[u64]) -> [u8; PAGE] {
    let mut b = [0u8; PAGE];
    for (k, w) in words.iter().take(WORDS).enumerate() {
        b[BITS_AT + k * 8..BITS_AT + k * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    b[0..8].copy_from_slice(&p.to_le_bytes());
    let hash = page_hash(id, p, &b[BITS_AT..]);
    b[8..40].copy_from_slice(hash.as_bytes());
    b
}

/// Whether `b` (one page) is page `p` of volume `id`'s bitmap, whole and unchanged.
pub fn page_ok(id: u64, p: u64, b: &[u8]) -> bool {
    b.len() == PAGE && le64(b, 0) == p && page_hash(id, p, &b[BITS_AT..]).as_bytes() == &b[8..40]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_checks_its_number_its_volume_and_every_bit() {
        let b = page_bytes(7, 3, &[1, u64::MAX]);
        assert!(page_ok(7, 3, &b));
        assert!(!page_ok(8, 3, &b), "another volume's page");
        assert!(!page_ok(7, 4, &b), "another page number");
        let mut flipped = b;
        flipped[BITS_AT + 100] ^= 1;
        assert!(!page_ok(7, 3, &flipped));
        assert_eq!(le64(&b, BITS_AT + 8), u64::MAX);
    }
}
