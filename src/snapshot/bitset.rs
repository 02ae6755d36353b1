//! Bit sets over snarf indices: one bit per snarf, so a set over a 1 TiB volume of 64 KiB
//! snarfs costs 2 MiB.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-size set of snarf indices that many threads may add to at once.
#[derive(Debug)]
pub struct AtomicSnarfSet {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl AtomicSnarfSet {
    /// An empty set able to hold indices `0..len`.
    pub fn new(len: u64) -> AtomicSnarfSet {
        let words = (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        AtomicSnarfSet { words, len }
    }

    /// Adds `index`; returns whether it was newly added. Indices past the end are ignored.
    pub fn insert(&self, index: u64) -> bool {
        if index >= self.len {
            return false;
        }
        let bit = 1u64 << (index % 64);
        self.words[(index / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        index < self.len
            && self.words[(index / 64) as usize].load(Ordering::Acquire) & (1u64 << (index % 64))
                != 0
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }
}

/// A set of snarf indices built by one thread, e.g. the snarfs changed since a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnarfSet {
    words: Vec<u64>,
    len: u64,
}

impl SnarfSet {
    /// An empty set able to hold indices `0..len`.
    pub fn new(len: u64) -> SnarfSet {
        SnarfSet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// A set holding every index `0..len`.
    pub fn full(len: u64) -> SnarfSet {
        let mut s = SnarfSet::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// Adds `index` (ignored past the end).
    pub fn insert(&mut self, index: u64) {
        if index < self.len {
            self.words[(index / 64) as usize] |= 1u64 << (index % 64);
        }
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1u64 << (index % 64)) != 0
    }

    /// The set as little-endian bytes, one bit per index (for sending it elsewhere).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8) as usize);
        out
    }

    /// A set of capacity `len` from [`SnarfSet::to_bytes`]; `None` if `bytes` has the wrong
    /// length. Bits past `len` are ignored.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Option<SnarfSet> {
        if bytes.len() as u64 != len.div_ceil(8) {
            return None;
        }
        let mut s = SnarfSet::new(len);
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            s.words[i] = u64::from_le_bytes(w);
        }
        if !len.is_multiple_of(64) {
            if let Some(last) = s.words.last_mut() {
                *last &= (1u64 << (len % 64)) - 1;
            }
        }
        Some(s)
    }

    /// Number of indices the set can hold.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The smallest index in the set that is at least `from`.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        let mut wi = (from / 64) as usize;
        let mut w = self.words[wi] & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                return Some(wi as u64 * 64 + w.trailing_zeros() as u64);
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }

    /// The indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(wi as u64 * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_what_was_inserted() {
        let a = AtomicSnarfSet::new(130);
        assert!(a.insert(0) && a.insert(129) && !a.insert(129));
        assert!(!a.insert(130));
        assert!(a.contains(129) && !a.contains(1) && !a.contains(500));
        assert_eq!(a.count(), 2);

        let mut s = SnarfSet::new(200);
        for i in [3, 64, 65, 199, 250] {
            s.insert(i);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 64, 65, 199]);
        assert_eq!(SnarfSet::full(70).count(), 70);
        assert_eq!(s.next_from(0), Some(3));
        assert_eq!(s.next_from(4), Some(64));
        assert_eq!(s.next_from(66), Some(199));
        assert_eq!(s.next_from(200), None);
        assert_eq!(SnarfSet::new(10).next_from(0), None);
        let b = s.to_bytes();
        assert_eq!(b.len(), 25);
        assert_eq!(SnarfSet::from_bytes(200, &b), Some(s.clone()));
        assert_eq!(SnarfSet::from_bytes(201, &b), None);
    }
}
