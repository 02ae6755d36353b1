//! Stamps: the epoch of the last write to each snarf of a volume, kept in proportion to
//! what was written, not to the volume's size.
//!
//! The snarfs are cut into groups of [`GROUP`]. A group nobody wrote since it came into
//! existence is one number (*uniform*: every snarf of it has that stamp). The first writes
//! into a group list the snarfs written with their stamps (*sparse*: 16 bytes each, and
//! an eighth more for growth); once half the group is listed it becomes one stamp per
//! snarf (*dense*, 8 KiB). So a group costs about 16 bytes per snarf written in it, never
//! more than 8 KiB, and an untouched 1 TiB volume of 64 KiB snarfs costs 16384 small group
//! headers (under 1 MiB).
//!
//! Each group has its own lock, held for a few instructions. Setting a stamp never
//! allocates: a writer first *prepares* the snarf (which may allocate, and fails cleanly
//! when memory cannot be had) before it changes anything, so a stamp can always be set
//! once the write it records is under way.
//!
//! The saved form (`state/stamps/ID`) is in proportion to the written groups too: runs of
//! uniform groups, then each sparse or dense group, and a blake3 hash over all of it.

use std::io::{Read, Write};

use parking_lot::RwLock;

/// Snarfs per group.
pub const GROUP: u64 = 1024;
/// Listed snarfs at which a sparse group becomes dense (8 KiB, the same as 512 listed
/// snarfs at 16 bytes each).
const DENSE_AT: usize = 512;
/// Magic at the start of a saved stamps file.
const MAGIC: &[u8; 8] = b"SNSTAMP1";

/// Why memory for stamps could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoMemory {
    /// Bytes asked for.
    pub bytes: u64,
}

#[derive(Debug)]
enum Slot {
    /// Every snarf of the group has this stamp.
    Uniform(u64),
    /// The snarfs listed (by position in the group, ascending) have the stamp beside
    /// them; the others have `base`.
    Sparse { base: u64, list: Vec<(u16, u64)> },
    /// One stamp per snarf of the group.
    Dense(Box<[u64]>),
}

impl Slot {
    fn get(&self, k: usize) -> u64 {
        match self {
            Slot::Uniform(e) => *e,
            Slot::Sparse { base, list } => match list.binary_search_by_key(&(k as u16), |p| p.0) {
                Ok(at) => list[at].1,
                Err(_) => *base,
            },
            Slot::Dense(d) => d[k],
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Slot::Uniform(_) => 0,
            Slot::Sparse { list, .. } => list.capacity() * std::mem::size_of::<(u16, u64)>(),
            Slot::Dense(d) => d.len() * 8,
        }
    }

    /// A dense copy, allocated fallibly.
    fn densified(&self) -> Result<Box<[u64]>, NoMemory> {
        let mut v: Vec<u64> = Vec::new();
        v.try_reserve_exact(GROUP as usize)
            .map_err(|_| NoMemory { bytes: GROUP * 8 })?;
        v.extend((0..GROUP as usize).map(|k| self.get(k)));
        Ok(v.into_boxed_slice())
    }

    /// Makes sure setting snarf `k` needs no allocation: lists it (with its current
    /// stamp) if needed, going dense at [`DENSE_AT`] listed snarfs.
    fn prepare(&mut self, k: usize) -> Result<(), NoMemory> {
        let go_dense = match self {
            Slot::Dense(_) => return Ok(()),
            Slot::Uniform(_) => false,
            Slot::Sparse { list, .. } => {
                if list.binary_search_by_key(&(k as u16), |p| p.0).is_ok() {
                    return Ok(());
                }
                list.len() + 1 >= DENSE_AT
            }
        };
        if go_dense {
            *self = Slot::Dense(self.densified()?);
            return Ok(());
        }
        match self {
            Slot::Uniform(e) => {
                let base = *e;
                let mut list = Vec::new();
                list.try_reserve_exact(1)
                    .map_err(|_| NoMemory { bytes: 16 })?;
                list.push((k as u16, base));
                *self = Slot::Sparse { base, list };
            }
            Slot::Sparse { base, list } => {
                if list.len() == list.capacity() {
                    // An eighth more each time: at most 18 bytes per listed snarf.
                    let more = (list.len() / 8).max(1);
                    list.try_reserve_exact(more).map_err(|_| NoMemory {
                        bytes: more as u64 * 16,
                    })?;
                }
                let at = list.partition_point(|p| (p.0 as usize) < k);
                list.insert(at, (k as u16, *base));
            }
            Slot::Dense(_) => {}
        }
        Ok(())
    }

    /// Sets snarf `k`'s stamp; allocates only if it was not prepared (which callers do).
    fn set(&mut self, k: usize, epoch: u64) {
        match self {
            Slot::Uniform(e) if *e == epoch => {}
            Slot::Dense(d) => d[k] = epoch,
            Slot::Sparse { list, .. } => match list.binary_search_by_key(&(k as u16), |p| p.0) {
                Ok(at) => list[at].1 = epoch,
                Err(at) => list.insert(at, (k as u16, epoch)),
            },
            Slot::Uniform(base) => {
                // Only reachable if a caller skipped `prepare`.
                let base = *base;
                *self = Slot::Sparse {
                    base,
                    list: vec![(k as u16, epoch)],
                };
            }
        }
    }
}

/// The stamps of one volume; see the module documentation.
#[derive(Debug)]
pub struct Stamps {
    count: u64,
    groups: Vec<RwLock<Slot>>,
}

fn groups_for(count: u64) -> u64 {
    count.div_ceil(GROUP)
}

fn split(index: u64) -> (usize, usize) {
    ((index / GROUP) as usize, (index % GROUP) as usize)
}

impl Stamps {
    /// `count` snarfs, each stamped `epoch`; only the group headers are allocated.
    pub fn new(count: u64, epoch: u64) -> Result<Stamps, NoMemory> {
        let mut s = Stamps {
            count: 0,
            groups: Vec::new(),
        };
        s.resize(count, epoch)?;
        Ok(s)
    }

    /// Number of snarfs.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether there are no snarfs.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The stamp of snarf `index`; 0 past the end.
    pub fn get(&self, index: u64) -> u64 {
        if index >= self.count {
            return 0;
        }
        let (g, k) = split(index);
        self.groups[g].read().get(k)
    }

    /// Makes sure [`Stamps::set`] of snarf `index` will not need memory; the only step that
    /// can fail, so a writer calls it before it changes anything.
    pub fn prepare(&self, index: u64) -> Result<(), NoMemory> {
        if index >= self.count {
            return Ok(());
        }
        let (g, k) = split(index);
        self.groups[g].write().prepare(k)
    }

    /// Sets the stamp of snarf `index` (ignored past the end).
    pub fn set(&self, index: u64, epoch: u64) {
        if index >= self.count {
            return;
        }
        let (g, k) = split(index);
        self.groups[g].write().set(k, epoch);
    }

    /// Changes the number of snarfs. Snarfs that come into existence get stamp `epoch`.
    /// Fails, changing nothing, when memory cannot be had.
    pub fn resize(&mut self, count: u64, epoch: u64) -> Result<(), NoMemory> {
        let old = self.count;
        let want = groups_for(count) as usize;
        if count <= old {
            self.groups.truncate(want);
            self.groups.shrink_to_fit();
            self.count = count;
            return Ok(());
        }
        self.groups
            .try_reserve_exact(want.saturating_sub(self.groups.len()))
            .map_err(|_| NoMemory {
                bytes: (want as u64).saturating_mul(std::mem::size_of::<RwLock<Slot>>() as u64),
            })?;
        let within = (old % GROUP) as usize;
        if within != 0 {
            // The last group was partial: its snarfs from `within` on are new.
            let slot = self.groups[(old / GROUP) as usize].get_mut();
            if !matches!(slot, Slot::Uniform(e) if *e == epoch) {
                let mut dense = slot.densified()?;
                dense[within..].fill(epoch);
                *slot = Slot::Dense(dense);
            }
        }
        while self.groups.len() < want {
            self.groups.push(RwLock::new(Slot::Uniform(epoch)));
        }
        self.count = count;
        Ok(())
    }

    /// Calls `f` with every snarf whose stamp is newer than `since`, in ascending order.
    /// No lock of the stamps is held while `f` runs, so it may take locks a writer holds
    /// while it sets a stamp.
    pub fn for_each_newer(&self, since: u64, mut f: impl FnMut(u64, u64)) {
        let mut found: Vec<(u64, u64)> = Vec::new();
        for (g, slot) in self.groups.iter().enumerate() {
            let first = g as u64 * GROUP;
            let n = (self.count - first).min(GROUP) as usize;
            found.clear();
            {
                let slot = slot.read();
                match &*slot {
                    Slot::Uniform(e) if *e <= since => {}
                    Slot::Sparse { base, list } if *base <= since => found.extend(
                        list.iter()
                            .filter(|&&(k, v)| v > since && (k as usize) < n)
                            .map(|&(k, v)| (first + k as u64, v)),
                    ),
                    slot => found.extend(
                        (0..n)
                            .map(|k| (first + k as u64, slot.get(k)))
                            .filter(|&(_, v)| v > since),
                    ),
                }
            }
            for &(i, v) in &found {
                f(i, v);
            }
        }
    }

    /// The first snarf at or after `from` whose stamp is newer than `epoch`, if any.
    pub fn first_newer(&self, from: u64, epoch: u64) -> Option<u64> {
        let mut index = from;
        while index < self.count {
            let (g, k) = split(index);
            let first = g as u64 * GROUP;
            let n = (self.count - first).min(GROUP) as usize;
            let slot = self.groups[g].read();
            match &*slot {
                Slot::Uniform(e) if *e <= epoch => {}
                Slot::Uniform(_) => return Some(index),
                Slot::Sparse { base, list } if *base <= epoch => {
                    let at = list.partition_point(|p| (p.0 as usize) < k);
                    for &(key, v) in &list[at..] {
                        if v > epoch && (key as usize) < n {
                            return Some(first + key as u64);
                        }
                    }
                }
                slot => {
                    if let Some(k) = (k..n).find(|&k| slot.get(k) > epoch) {
                        return Some(first + k as u64);
                    }
                }
            }
            index = first + GROUP;
        }
        None
    }

    /// The largest stamp (0 when there are no snarfs).
    pub fn max(&self) -> u64 {
        let mut max = 0;
        for slot in &self.groups {
            max = max.max(match &*slot.read() {
                Slot::Uniform(e) => *e,
                Slot::Sparse { base, list } => list.iter().map(|p| p.1).fold(*base, u64::max),
                Slot::Dense(d) => d.iter().copied().max().unwrap_or(0),
            });
        }
        max
    }

    /// Bytes of memory the stamps take.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Stamps>()
            + self.groups.capacity() * std::mem::size_of::<RwLock<Slot>>()
            + self.groups.iter().map(|g| g.read().bytes()).sum::<usize>()
    }

    /// Writes the saved form (see the module documentation).
    pub fn save(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut w = Hashing::new(out);
        w.put(MAGIC)?;
        w.put(&self.count.to_le_bytes())?;
        let mut g = 0;
        while g < self.groups.len() {
            let slot = self.groups[g].read();
            match &*slot {
                Slot::Uniform(e) => {
                    let e = *e;
                    drop(slot);
                    let mut n = 1u32;
                    while g + (n as usize) < self.groups.len()
                        && matches!(&*self.groups[g + n as usize].read(), Slot::Uniform(x) if *x == e)
                        && n < u32::MAX
                    {
                        n += 1;
                    }
                    w.put(&[0])?;
                    w.put(&n.to_le_bytes())?;
                    w.put(&e.to_le_bytes())?;
                    g += n as usize;
                    continue;
                }
                Slot::Sparse { base, list } => {
                    w.put(&[1])?;
                    w.put(&base.to_le_bytes())?;
                    w.put(&(list.len() as u16).to_le_bytes())?;
                    for (k, v) in list {
                        w.put(&k.to_le_bytes())?;
                        w.put(&v.to_le_bytes())?;
                    }
                }
                Slot::Dense(d) => {
                    w.put(&[2])?;
                    for v in d.iter() {
                        w.put(&v.to_le_bytes())?;
                    }
                }
            }
            g += 1;
        }
        w.finish()
    }

    /// Reads the saved form of exactly `count` snarfs, every stamp older than `limit`
    /// (stamps come from earlier sessions). Anything else is refused with the reason;
    /// memory grows only with what the file describes, checked as it is read.
    pub fn load(input: impl Read, count: u64, limit: u64) -> Result<Stamps, String> {
        let mut r = Hashed::new(input);
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err("it is not a snarf stamps file (or one of an older format)".into());
        }
        let saved = r.u64()?;
        if saved != count {
            return Err(format!(
                "it holds stamps for {saved} snarfs, but the volume has {count}"
            ));
        }
        let want = groups_for(count) as usize;
        let mut groups: Vec<RwLock<Slot>> = Vec::new();
        groups
            .try_reserve_exact(want)
            .map_err(|_| format!("not enough memory for the stamps of {count} snarfs"))?;
        let check = |v: u64| -> Result<u64, String> {
            if v >= limit {
                Err(format!(
                    "a stamp {v:#x} is newer than any epoch the store has used (before {limit:#x})"
                ))
            } else {
                Ok(v)
            }
        };
        while groups.len() < want {
            let mut tag = [0u8; 1];
            r.take(&mut tag)?;
            match tag[0] {
                0 => {
                    let n = r.u32()? as usize;
                    let e = check(r.u64()?)?;
                    if n == 0 || n > want - groups.len() {
                        return Err(format!("a run of {n} groups does not fit the volume"));
                    }
                    groups.extend((0..n).map(|_| RwLock::new(Slot::Uniform(e))));
                }
                1 => {
                    let base = check(r.u64()?)?;
                    let n = r.u16()? as usize;
                    if n >= DENSE_AT {
                        return Err(format!("a sparse group lists {n} snarfs"));
                    }
                    let mut list: Vec<(u16, u64)> = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = r.u16()?;
                        if k as u64 >= GROUP || list.last().is_some_and(|l| l.0 >= k) {
                            return Err("a sparse group lists its snarfs out of order".into());
                        }
                        list.push((k, check(r.u64()?)?));
                    }
                    groups.push(RwLock::new(Slot::Sparse { base, list }));
                }
                2 => {
                    let mut d: Vec<u64> = Vec::new();
                    d.try_reserve_exact(GROUP as usize)
                        .map_err(|_| "not enough memory for the stamps".to_string())?;
                    for _ in 0..GROUP {
                        d.push(check(r.u64()?)?);
                    }
                    groups.push(RwLock::new(Slot::Dense(d.into_boxed_slice())));
                }
                t => return Err(format!("it holds an unknown group kind {t}")),
            }
        }
        r.finish()?;
        Ok(Stamps { count, groups })
    }
}

/// A writer that hashes what passes through and appends the hash.
struct Hashing<'a, W: Write> {
    out: &'a mut W,
    hash: blake3::Hasher,
}

impl<'a, W: Write> Hashing<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Hashing {
            out,
            hash: blake3::Hasher::new(),
        }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.out.write_all(b)
    }

    fn finish(self) -> std::io::Result<()> {
        self.out.write_all(self.hash.finalize().as_bytes())
    }
}

/// A reader that hashes what it reads and checks the hash at the end.
struct Hashed<R: Read> {
    input: std::io::BufReader<R>,
    hash: blake3::Hasher,
}

impl<R: Read> Hashed<R> {
    fn new(input: R) -> Self {
        Hashed {
            input: std::io::BufReader::with_capacity(1 << 16, input),
            hash: blake3::Hasher::new(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "it is cut short".to_string(),
            _ => format!("it cannot be read: {e}"),
        })?;
        self.hash.update(buf);
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.take(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn finish(mut self) -> Result<(), String> {
        let want = self.hash.finalize();
        let mut got = [0u8; 32];
        self.input
            .read_exact(&mut got)
            .map_err(|_| "it is cut short (no checksum)".to_string())?;
        if got != *want.as_bytes() {
            return Err("its checksum does not match (it is damaged)".into());
        }
        let mut more = [0u8; 1];
        match self.input.read(&mut more) {
            Ok(0) => Ok(()),
            Ok(_) => Err("it is longer than its contents".into()),
            Err(e) => Err(format!("it cannot be read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_check(s: &Stamps, model: &[u64]) {
        assert_eq!(s.len(), model.len() as u64);
        for (i, &m) in model.iter().enumerate() {
            assert_eq!(s.get(i as u64), m, "snarf {i}");
        }
    }

    #[test]
    fn stamps_follow_a_model_through_every_group_shape_and_round_trip() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let count = 5 * GROUP + 17;
        let mut s = Stamps::new(count, 3).unwrap();
        let mut model = vec![3u64; count as usize];
        for round in 0..6000u64 {
            let i = match round % 3 {
                // Few snarfs of group 0 (stays sparse), many of group 2 (goes dense).
                0 => rng.random_range(0..20),
                1 => 2 * GROUP + rng.random_range(0..GROUP),
                _ => rng.random_range(0..count),
            };
            let e = 10 + round;
            s.prepare(i).unwrap();
            s.set(i, e);
            model[i as usize] = e;
        }
        model_check(&s, &model);
        let mut newer = Vec::new();
        s.for_each_newer(5000, |i, v| newer.push((i, v)));
        let want: Vec<(u64, u64)> = (0..count)
            .filter(|&i| model[i as usize] > 5000)
            .map(|i| (i, model[i as usize]))
            .collect();
        assert_eq!(newer, want);
        assert_eq!(s.first_newer(0, 5000), want.first().map(|w| w.0));
        assert_eq!(s.first_newer(want[3].0 + 1, 5000), Some(want[4].0));
        assert_eq!(s.max(), *model.iter().max().unwrap());

        let mut bytes = Vec::new();
        s.save(&mut bytes).unwrap();
        let back = Stamps::load(&bytes[..], count, 1 << 40).unwrap();
        model_check(&back, &model);

        // Shrink into a group and grow again: the regrown snarfs are new.
        s.resize(GROUP + 5, 0).unwrap();
        s.resize(3 * GROUP, 99_999).unwrap();
        model.truncate(GROUP as usize + 5);
        model.resize(3 * GROUP as usize, 99_999);
        model_check(&s, &model);
    }

    #[test]
    fn memory_grows_with_what_was_written_not_with_the_volume() {
        // A 1 TiB volume of 64 KiB snarfs.
        let count = 1u64 << 24;
        let s = Stamps::new(count, 1).unwrap();
        let idle = s.bytes();
        assert!(idle < 1 << 20, "{idle} bytes idle");
        // 1 GiB written as scattered 4 MiB extents, one in each of 256 places.
        for extent in 0..256u64 {
            let first = extent * (count / 256) + 1000;
            for i in first..first + 64 {
                s.prepare(i).unwrap();
                s.set(i, 2);
            }
        }
        let used = s.bytes() - idle;
        assert!(used <= 18 * 256 * 64, "{used} bytes for 16384 snarfs");
        // Single snarfs scattered over every group: still at most 16 bytes each.
        let s = Stamps::new(count, 1).unwrap();
        for g in 0..count / GROUP {
            s.prepare(g * GROUP + 7).unwrap();
            s.set(g * GROUP + 7, 2);
        }
        let used = s.bytes() - idle;
        assert!(used <= 16 * (count / GROUP) as usize, "{used}");
        let mut saved = Vec::new();
        Stamps::new(count, 1).unwrap().save(&mut saved).unwrap();
        assert!(
            saved.len() < 100,
            "{} bytes saved for an unwritten volume",
            saved.len()
        );
    }

    #[test]
    fn damaged_saved_stamps_are_refused_with_the_reason() {
        let s = Stamps::new(3000, 5).unwrap();
        s.prepare(2).unwrap();
        s.set(2, 9);
        let mut bytes = Vec::new();
        s.save(&mut bytes).unwrap();
        assert!(Stamps::load(&bytes[..], 3000, 100).is_ok());
        let e = Stamps::load(&bytes[..], 3001, 100).unwrap_err();
        assert!(e.contains("3000 snarfs"), "{e}");
        assert!(Stamps::load(&bytes[..], 3000, 9)
            .unwrap_err()
            .contains("newer"));
        for cut in [0, 7, 20, bytes.len() - 1] {
            assert!(Stamps::load(&bytes[..cut], 3000, 100).is_err(), "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Stamps::load(&longer[..], 3000, 100).is_err());
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(Stamps::load(&flipped[..], 3000, 100).is_err());
        assert!(Stamps::load(&[0xFFu8; 64][..], 3000, 100).is_err());
    }
}
