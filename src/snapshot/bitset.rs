//! Sets of snarf indices, in proportion to what they hold: the indices are cut into groups
//! of 1024, and a group costs 128 bytes of bits only once it holds some indices but not
//! all (an empty or a full group is a marker). A set over a 1 TiB volume of 64 KiB snarfs
//! costs 256 KiB of markers plus 128 bytes per group in use.
//!
//! Sets travel between a job and the engine as runs of consecutive indices
//! ([`SnarfSet::to_bytes`]), so their size follows the runs, not the volume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Indices per group.
const GROUP: u64 = 1024;
/// 64-bit words per group.
const WORDS: usize = (GROUP / 64) as usize;

/// A set of snarf indices that many threads may add to at once.
#[derive(Debug)]
pub struct AtomicSnarfSet {
    groups: Box<[OnceLock<Box<[AtomicU64; WORDS]>>]>,
    len: u64,
}

impl AtomicSnarfSet {
    /// An empty set able to hold indices `0..len`.
    pub fn new(len: u64) -> AtomicSnarfSet {
        let groups = (0..len.div_ceil(GROUP)).map(|_| OnceLock::new()).collect();
        AtomicSnarfSet { groups, len }
    }

    fn word(&self, index: u64) -> Option<(&AtomicU64, u64)> {
        let g = self.groups[(index / GROUP) as usize].get()?;
        Some((&g[((index % GROUP) / 64) as usize], 1u64 << (index % 64)))
    }

    /// Adds `index`; returns whether it was newly added. Indices past the end are ignored.
    pub fn insert(&self, index: u64) -> bool {
        if index >= self.len {
            return false;
        }
        let g = self.groups[(index / GROUP) as usize]
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        let bit = 1u64 << (index % 64);
        g[((index % GROUP) / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        index < self.len
            && self
                .word(index)
                .is_some_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    /// The smallest index in the set that is at least `from`.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let g = (i / GROUP) as usize;
            let start = g as u64 * GROUP;
            if let Some(words) = self.groups[g].get() {
                let mut k = i - start;
                while k < GROUP {
                    let w =
                        words[(k / 64) as usize].load(Ordering::Acquire) & (u64::MAX << (k % 64));
                    if w != 0 {
                        let found = start + (k / 64) * 64 + w.trailing_zeros() as u64;
                        return (found < self.len).then_some(found);
                    }
                    k = (k / 64 + 1) * 64;
                }
            }
            i = start + GROUP;
        }
        None
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.groups
            .iter()
            .filter_map(|g| g.get())
            .flat_map(|g| g.iter())
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Group {
    Empty,
    Full,
    Bits(Box<[u64; WORDS]>),
}

/// A set of snarf indices built by one thread, e.g. the snarfs changed since a checkpoint.
#[derive(Debug, Clone)]
pub struct SnarfSet {
    groups: Vec<Group>,
    len: u64,
}

impl PartialEq for SnarfSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.runs().eq(other.runs())
    }
}

impl Eq for SnarfSet {}

impl SnarfSet {
    /// An empty set able to hold indices `0..len`.
    pub fn new(len: u64) -> SnarfSet {
        SnarfSet {
            groups: vec![Group::Empty; len.div_ceil(GROUP) as usize],
            len,
        }
    }

    /// A set holding every index `0..len`.
    pub fn full(len: u64) -> SnarfSet {
        let mut s = SnarfSet::new(len);
        s.insert_range(0, len);
        s
    }

    /// Indices of group `g` that exist.
    fn group_len(&self, g: usize) -> u64 {
        (self.len - g as u64 * GROUP).min(GROUP)
    }

    /// Adds `index` (ignored past the end).
    pub fn insert(&mut self, index: u64) {
        if index >= self.len {
            return;
        }
        let g = (index / GROUP) as usize;
        let k = index % GROUP;
        let n = self.group_len(g);
        let group = &mut self.groups[g];
        match group {
            Group::Full => {}
            Group::Empty => {
                let mut bits = Box::new([0u64; WORDS]);
                bits[(k / 64) as usize] |= 1 << (k % 64);
                *group = Group::Bits(bits);
            }
            Group::Bits(bits) => {
                bits[(k / 64) as usize] |= 1 << (k % 64);
                if bits.iter().map(|w| w.count_ones() as u64).sum::<u64>() == n {
                    *group = Group::Full;
                }
            }
        }
    }

    /// Adds every index in `from..to` (clipped to the set's capacity); whole groups cost
    /// one marker each.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        let to = to.min(self.len);
        let mut i = from;
        while i < to {
            let g = (i / GROUP) as usize;
            let start = g as u64 * GROUP;
            let end = (start + self.group_len(g)).min(to);
            if i == start && end == start + self.group_len(g) {
                self.groups[g] = Group::Full;
            } else {
                for j in i..end {
                    self.insert(j);
                }
            }
            i = end;
        }
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        if index >= self.len {
            return false;
        }
        match &self.groups[(index / GROUP) as usize] {
            Group::Empty => false,
            Group::Full => true,
            Group::Bits(bits) => {
                let k = index % GROUP;
                bits[(k / 64) as usize] & (1 << (k % 64)) != 0
            }
        }
    }

    /// Number of indices the set can hold.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        (0..self.groups.len())
            .map(|g| match &self.groups[g] {
                Group::Empty => 0,
                Group::Full => self.group_len(g),
                Group::Bits(b) => b.iter().map(|w| w.count_ones() as u64).sum(),
            })
            .sum()
    }

    /// Bytes of memory the set takes.
    pub fn bytes(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Group>()
            + self
                .groups
                .iter()
                .filter(|g| matches!(g, Group::Bits(_)))
                .count()
                * WORDS
                * 8
    }

    /// The smallest index in the set that is at least `from`.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let g = (i / GROUP) as usize;
            let start = g as u64 * GROUP;
            match &self.groups[g] {
                Group::Empty => {}
                Group::Full => return Some(i),
                Group::Bits(bits) => {
                    let k = i - start;
                    let mut wi = (k / 64) as usize;
                    let mut w = bits[wi] & (u64::MAX << (k % 64));
                    loop {
                        if w != 0 {
                            let found = start + wi as u64 * 64 + w.trailing_zeros() as u64;
                            return (found < self.len).then_some(found);
                        }
                        wi += 1;
                        if wi == WORDS {
                            break;
                        }
                        w = bits[wi];
                    }
                }
            }
            i = start + GROUP;
        }
        None
    }

    /// The smallest index not in the set that is at least `from` (`capacity` if none).
    pub fn next_absent(&self, from: u64) -> u64 {
        let mut i = from;
        while i < self.len {
            let g = (i / GROUP) as usize;
            let start = g as u64 * GROUP;
            match &self.groups[g] {
                Group::Empty => return i,
                Group::Full => {}
                Group::Bits(bits) => {
                    let k = i - start;
                    let mut wi = (k / 64) as usize;
                    let mut w = !bits[wi] & (u64::MAX << (k % 64));
                    loop {
                        if w != 0 {
                            let found = start + wi as u64 * 64 + w.trailing_zeros() as u64;
                            return found.min(self.len);
                        }
                        wi += 1;
                        if wi == WORDS {
                            break;
                        }
                        w = !bits[wi];
                    }
                }
            }
            i = start + GROUP;
        }
        self.len
    }

    /// The indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs().flat_map(|(a, b)| a..b)
    }

    /// The set as runs `start..end` of consecutive indices, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0u64;
        std::iter::from_fn(move || {
            let start = self.next_from(at)?;
            let end = self.next_absent(start);
            at = end;
            Some((start, end))
        })
    }

    /// The set as bytes for sending elsewhere: the number of runs, then each run's start
    /// and length, all u64 little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let runs: Vec<(u64, u64)> = self.runs().collect();
        let mut out = Vec::with_capacity(8 + runs.len() * 16);
        out.extend_from_slice(&(runs.len() as u64).to_le_bytes());
        for (a, b) in runs {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&(b - a).to_le_bytes());
        }
        out
    }

    /// A set of capacity `len` read from the front of `bytes` ([`SnarfSet::to_bytes`]),
    /// with how many bytes it took; `None` if they do not describe one: runs out of order,
    /// touching, empty, or past `len`.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Option<(SnarfSet, usize)> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let n = word(0)?;
        let used = n.checked_mul(16)?.checked_add(8)?;
        if used > bytes.len() as u64 {
            return None;
        }
        let mut s = SnarfSet::new(len);
        let mut last_end = None;
        for r in 0..n as usize {
            let start = word(8 + 16 * r)?;
            let count = word(16 + 16 * r)?;
            let end = start.checked_add(count)?;
            if count == 0 || end > len || last_end.is_some_and(|e| start <= e) {
                return None;
            }
            s.insert_range(start, end);
            last_end = Some(end);
        }
        Some((s, used as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_what_was_inserted() {
        let a = AtomicSnarfSet::new(1300);
        assert!(a.insert(0) && a.insert(1299) && !a.insert(1299));
        assert!(!a.insert(1300));
        assert!(a.contains(1299) && !a.contains(1) && !a.contains(5000));
        assert_eq!(a.count(), 2);

        let mut s = SnarfSet::new(2000);
        for i in [3, 64, 65, 1999, 2500] {
            s.insert(i);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 64, 65, 1999]);
        assert_eq!(SnarfSet::full(2070).count(), 2070);
        assert_eq!(s.next_from(0), Some(3));
        assert_eq!(s.next_from(4), Some(64));
        assert_eq!(s.next_from(66), Some(1999));
        assert_eq!(s.next_from(2000), None);
        assert_eq!(s.next_absent(64), 66);
        assert_eq!(SnarfSet::new(10).next_from(0), None);
        let b = s.to_bytes();
        assert_eq!(b.len(), 8 + 3 * 16);
        let (back, used) = SnarfSet::from_bytes(2000, &b).unwrap();
        assert_eq!((back, used), (s.clone(), b.len()));
        assert!(SnarfSet::from_bytes(1999, &b).is_none());
        assert!(SnarfSet::from_bytes(2000, &b[..b.len() - 1]).is_none());
    }

    #[test]
    fn ranges_and_runs_match_a_model_and_cost_what_they_hold() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let len = 10 * GROUP + 33;
        let mut s = SnarfSet::new(len);
        let mut model = vec![false; len as usize];
        for _ in 0..300 {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(0..3000)).min(len);
            s.insert_range(a, b);
            model[a as usize..b as usize].fill(true);
            let i = rng.random_range(0..len);
            s.insert(i);
            model[i as usize] = true;
        }
        let want: Vec<u64> = (0..len).filter(|&i| model[i as usize]).collect();
        assert_eq!(s.iter().collect::<Vec<_>>(), want);
        assert_eq!(s.count(), want.len() as u64);
        for i in 0..len {
            assert_eq!(s.contains(i), model[i as usize]);
        }
        let (back, _) = SnarfSet::from_bytes(len, &s.to_bytes()).unwrap();
        assert_eq!(back, s);

        // A 1 TiB volume of 64 KiB snarfs: empty and full cost only markers.
        let big = 1u64 << 24;
        let full = SnarfSet::full(big);
        assert_eq!(full.count(), big);
        assert!(full.bytes() <= 16 * (big / GROUP) as usize);
        assert_eq!(full.to_bytes().len(), 24);
    }
}
