//! The blob index (format 2): which frame of which pack holds each blob. Like format 1 it
//! is a set of immutable *runs* of fixed 64-byte records ([`ChunkRef`] encodings) sorted by
//! blob id and searched by binary search, so a lookup reads a few records and memory does
//! not grow with the repository; unlike format 1 a run is an object (`index/<id>`) read with
//! range reads through the backend, and its fan-out table is a footer, so a run of any size
//! is streamed out as one upload and is visible only when whole. Each run also lists the
//! packs it covers (every blob of each is in it), so the packs that no run covers are found
//! without reading records: those of a killed backup, to be adopted.
//!
//! ```text
//! 0..        records sorted by blob id, 64 bytes each
//! packs      the pack ids the run covers, 16 bytes each, sorted
//! footer     256 u64 LE (entry b = number of records whose id's first byte <= b),
//!            record count u64 LE, pack count u64 LE, magic "SNARFIX2"   (2072 bytes)
//! ```
//!
//! A lookup reads whole pages of 64 records and keeps the last few hundred: its first probe
//! is where a uniformly distributed id would be within its fan-out bucket (ids are hashes),
//! each probe rules out a whole page, and the pages near the top of the search are shared by
//! every lookup. Over ssh or S3 a range read is a round trip, so a backup's dedup lookups cost
//! about one read each instead of one per bisection step (7 for a 2 GiB volume's run).
//!
//! In an encrypted repository the same three parts are sealed (subkey of the run's random
//! id, associated data the run's name and the part): the records in blocks of 16 (text
//! number = block number; 1 KiB per tag, so a lookup's probes read about what a plain run's
//! do), the pack table as text `u64::MAX - 1`, the footer as text `u64::MAX`. A tampered or
//! moved byte fails authentication and is reported as damage of the run, never read as a
//! record.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::chunk::{ChunkRef, REF_LEN};
use super::frame::Seal;
use crate::repo::backend::{Backend, Key, Kind, ObjectId};
use crate::repo::error::{Error, Fix, Result};
use crate::repo::ids::{ChunkId, PackId};

const MAGIC: &[u8; 8] = b"SNARFIX2";
const FOOTER_LEN: u64 = 256 * 8 + 8 + 8 + 8;
/// Bytes of one pack id in the pack table.
const PACK_LEN: u64 = 16;
/// Records read per range read when a run is streamed.
const STREAM_RECORDS: u64 = 16 * 1024;
/// Records per page: what a lookup reads and keeps in one go (4 KiB of plain records; whole
/// sealed blocks, as it is a multiple of [`BLOCK_RECORDS`]).
const PAGE_RECORDS: u64 = 64;
/// Pages a run keeps for later lookups (about 1.2 MiB decoded): the pages a search probes
/// first are shared by every lookup, so the next ones cost one read, or none.
const CACHED_PAGES: usize = 256;
/// Records per sealed block of an encrypted repository's run.
const BLOCK_RECORDS: u64 = 16;
/// Text number of a sealed run's pack table (its blocks are 0, 1, ...).
const PACKS_TEXT: u64 = u64::MAX - 1;
/// Text number of a sealed run's footer.
const FOOTER_TEXT: u64 = u64::MAX;

/// Where the parts of a run are, plain or sealed.
#[derive(Clone, Copy)]
struct Layout {
    /// Bytes a sealed text is longer than its plain text (0 for a plain run).
    tag: u64,
}

impl Layout {
    fn of(seal: &dyn Seal) -> Layout {
        Layout {
            tag: if seal.is_plain() {
                0
            } else {
                seal.overhead() as u64
            },
        }
    }

    fn sealed(&self) -> bool {
        self.tag > 0
    }

    /// Stored bytes of the first `n` records.
    fn records_len(&self, n: u64) -> Option<u64> {
        let blocks = if self.sealed() {
            n.div_ceil(BLOCK_RECORDS)
        } else {
            0
        };
        n.checked_mul(REF_LEN as u64)?
            .checked_add(blocks.checked_mul(self.tag)?)
    }

    /// Stored bytes of the footer.
    fn footer_len(&self) -> u64 {
        FOOTER_LEN + self.tag
    }

    /// Stored bytes of a run of `count` records and `packs` packs.
    fn size(&self, count: u64, packs: u64) -> Option<u64> {
        self.records_len(count)?
            .checked_add(packs.checked_mul(PACK_LEN)?)?
            .checked_add(self.tag)?
            .checked_add(self.footer_len())
    }
}

/// The associated data of part `what` of run `key`.
fn ad(key: &Key, what: &str) -> Vec<u8> {
    let mut a = key.name().into_bytes();
    a.push(0);
    a.extend_from_slice(what.as_bytes());
    a
}

/// The random id of run `key` (its subkey's object).
fn run_object(key: &Key) -> [u8; 16] {
    match key {
        Key::Index(id) => id.0,
        _ => [0; 16],
    }
}

/// One run, opened for lookups.
pub struct Run {
    backend: Arc<dyn Backend>,
    seal: Arc<dyn Seal>,
    layout: Layout,
    key: Key,
    count: u64,
    packs: u64,
    ends: Box<[u64; 256]>,
    pages: Mutex<Pages>,
}

/// The pages of records a run keeps, dropped oldest first past [`CACHED_PAGES`].
#[derive(Default)]
struct Pages {
    by_number: HashMap<u64, Arc<[ChunkRef]>>,
    order: VecDeque<u64>,
}

impl Run {
    /// Opens run `key` of `size` bytes and validates (in an encrypted repository, opens)
    /// its footer.
    pub fn open(
        backend: Arc<dyn Backend>,
        seal: Arc<dyn Seal>,
        key: Key,
        size: u64,
    ) -> Result<Run> {
        let damaged = |why: String| Error::Damaged {
            repo: backend.location().into(),
            path: key.name().into(),
            why,
            fix: Fix::RepairIndex,
        };
        let layout = Layout::of(seal.as_ref());
        let foot_len = layout.footer_len();
        if size < foot_len {
            return Err(damaged(format!(
                "its size {size} is not that of an index run"
            )));
        }
        let foot = backend.read_range(&key, size - foot_len, foot_len)?;
        let foot = if layout.sealed() {
            seal.open(&run_object(&key), FOOTER_TEXT, &ad(&key, "footer"), foot)
                .map_err(|why| damaged(format!("its footer is not authentic ({why})")))?
        } else {
            foot
        };
        if foot.len() as u64 != FOOTER_LEN {
            return Err(damaged("its footer has the wrong size".into()));
        }
        if &foot[FOOTER_LEN as usize - 8..] != MAGIC {
            return Err(damaged("it is not a format 2 index run".into()));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&foot[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let count = u64_at(256 * 8);
        let packs = u64_at(256 * 8 + 8);
        let mut ends = Box::new([0u64; 256]);
        let mut last = 0;
        for (b, end) in ends.iter_mut().enumerate() {
            *end = u64_at(b * 8);
            if *end < last {
                return Err(damaged("its fan-out table is not ascending".into()));
            }
            last = *end;
        }
        let body = if layout.sealed() {
            layout.size(count, packs)
        } else {
            count
                .checked_mul(REF_LEN as u64)
                .and_then(|r| packs.checked_mul(PACK_LEN).and_then(|p| r.checked_add(p)))
                .and_then(|b| b.checked_add(FOOTER_LEN))
        };
        if body != Some(size) || ends[255] != count {
            return Err(damaged(format!(
                "its footer's {count} records and {packs} packs do not match its size {size}"
            )));
        }
        Ok(Run {
            backend,
            seal,
            layout,
            key,
            count,
            packs,
            ends,
            pages: Mutex::new(Pages::default()),
        })
    }

    /// The packs the run covers.
    pub fn packs(&self) -> Result<Vec<PackId>> {
        if self.packs == 0 {
            return Ok(Vec::new());
        }
        let at = self.layout.records_len(self.count).unwrap_or(u64::MAX);
        let raw =
            self.backend
                .read_range(&self.key, at, self.packs * PACK_LEN + self.layout.tag)?;
        let raw = self.open_part(PACKS_TEXT, "packs", raw)?;
        if raw.len() as u64 != self.packs * PACK_LEN {
            return Err(self.damaged("its pack table has the wrong size".into()));
        }
        Ok(raw
            .chunks_exact(PACK_LEN as usize)
            .map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                PackId(b)
            })
            .collect())
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when the run has no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The run's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    fn damaged(&self, why: String) -> Error {
        Error::Damaged {
            repo: self.backend.location().into(),
            path: self.key.name().into(),
            why,
            fix: Fix::RepairIndex,
        }
    }

    /// Part `what` (text `counter`) of the run as stored, opened if the run is sealed.
    fn open_part(&self, counter: u64, what: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        if !self.layout.sealed() {
            return Ok(stored);
        }
        self.seal
            .open(
                &run_object(&self.key),
                counter,
                &ad(&self.key, what),
                stored,
            )
            .map_err(|why| self.damaged(format!("its {what} fail authentication ({why})")))
    }

    /// The plain bytes of records `first..first + n` (within the run).
    fn record_bytes(&self, first: u64, n: u64) -> Result<Vec<u8>> {
        if !self.layout.sealed() || n == 0 {
            return self
                .backend
                .read_range(&self.key, first * REF_LEN as u64, n * REF_LEN as u64);
        }
        let (b0, b1) = (first / BLOCK_RECORDS, (first + n - 1) / BLOCK_RECORDS);
        let block_len = BLOCK_RECORDS * REF_LEN as u64 + self.layout.tag;
        let start = b0 * block_len;
        let end = self
            .layout
            .records_len(((b1 + 1) * BLOCK_RECORDS).min(self.count))
            .unwrap_or(u64::MAX);
        let stored = self.backend.read_range(&self.key, start, end - start)?;
        let mut plain = Vec::with_capacity(((b1 - b0 + 1) * BLOCK_RECORDS) as usize * REF_LEN);
        let mut at = 0usize;
        for b in b0..=b1 {
            let recs = BLOCK_RECORDS.min(self.count - b * BLOCK_RECORDS);
            let len = (recs * REF_LEN as u64 + self.layout.tag) as usize;
            let part = stored
                .get(at..at + len)
                .ok_or_else(|| self.damaged("it is shorter than its records".into()))?;
            at += len;
            plain.extend_from_slice(&self.open_part(b, "records", part.to_vec())?);
        }
        let skip = ((first - b0 * BLOCK_RECORDS) as usize) * REF_LEN;
        plain
            .get(skip..skip + n as usize * REF_LEN)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.damaged("a block holds too few records".into()))
    }

    fn records(&self, first: u64, n: u64) -> Result<Vec<ChunkRef>> {
        let raw = self.record_bytes(first, n)?;
        raw.chunks_exact(REF_LEN)
            .map(|rec| {
                let mut b = [0u8; REF_LEN];
                b.copy_from_slice(rec);
                ChunkRef::decode(&b).ok_or_else(|| Error::Damaged {
                    repo: self.backend.location().into(),
                    path: self.key.name().into(),
                    why: "it holds a blank or impossible record".into(),
                    fix: Fix::RepairIndex,
                })
            })
            .collect()
    }

    /// The records of page `n` (records `n * PAGE_RECORDS..`), from the cache or read.
    fn page(&self, n: u64) -> Result<Arc<[ChunkRef]>> {
        if let Some(p) = self.pages.lock().by_number.get(&n) {
            return Ok(p.clone());
        }
        let first = n * PAGE_RECORDS;
        let recs: Arc<[ChunkRef]> = self
            .records(first, PAGE_RECORDS.min(self.count - first))?
            .into();
        let mut pages = self.pages.lock();
        if pages.by_number.insert(n, recs.clone()).is_none() {
            pages.order.push_back(n);
            while pages.order.len() > CACHED_PAGES {
                if let Some(old) = pages.order.pop_front() {
                    pages.by_number.remove(&old);
                }
            }
        }
        Ok(recs)
    }

    /// The record of `id`, if this run has one.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkRef>> {
        let b = id.0[0] as usize;
        let mut lo = if b == 0 { 0 } else { self.ends[b - 1] };
        let mut hi = self.ends[b];
        let mut first_probe = true;
        while lo < hi {
            // Ids are uniform within their bucket, so the first probe goes where the id's
            // next bytes say it would sit; later probes halve what is left.
            let at = if std::mem::take(&mut first_probe) {
                let mut f = [0u8; 8];
                f.copy_from_slice(&id.0[1..9]);
                let f = u128::from(u64::from_be_bytes(f));
                lo + ((u128::from(hi - lo) * f) >> 64) as u64
            } else {
                lo + (hi - lo) / 2
            };
            let n = at / PAGE_RECORDS;
            let page = self.page(n)?;
            let page_first = n * PAGE_RECORDS;
            let start = lo.max(page_first);
            let end = hi.min(page_first + page.len() as u64);
            let live = page
                .get((start - page_first) as usize..(end - page_first) as usize)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| self.damaged("a page holds too few records".into()))?;
            if *id < live[0].id {
                hi = start;
            } else if *id > live[live.len() - 1].id {
                lo = end;
            } else {
                return Ok(live
                    .binary_search_by(|r| r.id.cmp(id))
                    .ok()
                    .map(|i| live[i]));
            }
        }
        Ok(None)
    }

    /// Streams the records in order, checking that they are sorted.
    pub fn iter(&self) -> RunIter<'_> {
        RunIter {
            run: self,
            next: 0,
            buf: Vec::new(),
            last: None,
        }
    }
}

/// Sequential reader of a run's records.
pub struct RunIter<'a> {
    run: &'a Run,
    next: u64,
    buf: Vec<ChunkRef>,
    last: Option<ChunkId>,
}

impl Iterator for RunIter<'_> {
    type Item = Result<ChunkRef>;
    fn next(&mut self) -> Option<Result<ChunkRef>> {
        if self.buf.is_empty() {
            if self.next >= self.run.count {
                return None;
            }
            let n = STREAM_RECORDS.min(self.run.count - self.next);
            match self.run.records(self.next, n) {
                Ok(mut v) => {
                    v.reverse();
                    self.buf = v;
                }
                Err(e) => {
                    self.next = self.run.count;
                    return Some(Err(e));
                }
            }
            self.next += n;
        }
        let r = self.buf.pop()?;
        if self.last.is_some_and(|l| r.id < l) {
            self.next = self.run.count;
            self.buf.clear();
            return Some(Err(Error::Damaged {
                repo: self.run.backend.location().into(),
                path: self.run.key.name().into(),
                why: "its records are not sorted".into(),
                fix: Fix::RepairIndex,
            }));
        }
        self.last = Some(r.id);
        Some(Ok(r))
    }
}

/// Writes a new run from records sorted by id (equal records once) as one upload, listing
/// `packs` as the packs it covers; returns its key and record count.
pub fn write_run(
    backend: &dyn Backend,
    seal: &dyn Seal,
    records: impl Iterator<Item = Result<ChunkRef>>,
    packs: &[PackId],
) -> Result<(Key, u64)> {
    let key = Key::Index(ObjectId::generate());
    let sealed = Layout::of(seal).sealed();
    let object = run_object(&key);
    let seal_part = |counter: u64, what: &str, plain: Vec<u8>| -> Result<Vec<u8>> {
        if sealed {
            seal.seal(&object, counter, &ad(&key, what), plain)
        } else {
            Ok(plain)
        }
    };
    let mut out = backend.upload(&key)?;
    let mut block = Vec::with_capacity(BLOCK_RECORDS as usize * REF_LEN);
    let mut blocks = 0u64;
    let mut ends = [0u64; 256];
    let mut count = 0u64;
    let mut last: Option<ChunkRef> = None;
    let mut buf = Vec::with_capacity(1 << 20);
    for r in records {
        let r = r?;
        if let Some(prev) = last {
            // A blob stored twice (two packs) keeps both records: either may be the one
            // whose pack survives.
            if prev == r {
                continue;
            }
            if prev.id > r.id {
                return Err(Error::BadArgument(format!(
                    "index run {key} was given unsorted records"
                )));
            }
        }
        last = Some(r);
        if sealed {
            block.extend_from_slice(&r.encode());
            if block.len() == BLOCK_RECORDS as usize * REF_LEN {
                buf.extend_from_slice(&seal_part(blocks, "records", std::mem::take(&mut block))?);
                blocks += 1;
            }
        } else {
            buf.extend_from_slice(&r.encode());
        }
        if buf.len() >= 1 << 20 {
            out.write(&buf)?;
            buf.clear();
        }
        ends[r.id.0[0] as usize] += 1;
        count += 1;
    }
    if !block.is_empty() {
        buf.extend_from_slice(&seal_part(blocks, "records", block)?);
    }
    let mut packs = packs.to_vec();
    packs.sort();
    packs.dedup();
    let mut table = Vec::with_capacity(packs.len() * PACK_LEN as usize);
    for p in &packs {
        table.extend_from_slice(&p.0);
    }
    if sealed || !table.is_empty() {
        buf.extend_from_slice(&seal_part(PACKS_TEXT, "packs", table)?);
    }
    let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
    let mut total = 0;
    for n in ends {
        total += n;
        footer.extend_from_slice(&total.to_le_bytes());
    }
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&(packs.len() as u64).to_le_bytes());
    footer.extend_from_slice(MAGIC);
    buf.extend_from_slice(&seal_part(FOOTER_TEXT, "footer", footer)?);
    out.write(&buf)?;
    out.finish()?;
    Ok((key, count))
}

/// The index: every run in `index/`.
pub struct Index {
    runs: Vec<Run>,
}

impl Index {
    /// Opens every run the backend lists.
    pub fn open(backend: &Arc<dyn Backend>, seal: &Arc<dyn Seal>) -> Result<Index> {
        let mut listed = backend.list(Kind::Index)?;
        listed.sort();
        let runs = listed
            .into_iter()
            .map(|(k, size)| Run::open(backend.clone(), seal.clone(), k, size))
            .collect::<Result<Vec<_>>>()?;
        Ok(Index { runs })
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Every record of `id`, one per run that has it, in run order: a caller that finds
    /// one unusable (its pack gone) tries the next.
    pub fn lookup_all(&self, id: &ChunkId) -> Result<Vec<ChunkRef>> {
        let mut out = Vec::new();
        for run in &self.runs {
            if let Some(r) = run.lookup(id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The packs some run covers.
    pub fn packs(&self) -> Result<std::collections::HashSet<PackId>> {
        let mut out = std::collections::HashSet::new();
        for r in &self.runs {
            out.extend(r.packs()?);
        }
        Ok(out)
    }

    /// Total records over all runs (duplicates counted).
    pub fn records(&self) -> u64 {
        self.runs.iter().map(Run::len).sum()
    }

    /// All records of all runs merged in id order (duplicates kept, adjacent).
    pub fn merged(&self) -> Merge<'_> {
        Merge {
            sources: self.runs.iter().map(Run::iter).collect(),
            heap: BinaryHeap::new(),
            primed: false,
        }
    }
}

/// Merges sorted record streams into one sorted stream.
pub struct Merge<'a> {
    sources: Vec<RunIter<'a>>,
    heap: BinaryHeap<Reverse<(ChunkId, usize, [u8; REF_LEN])>>,
    primed: bool,
}

impl Merge<'_> {
    fn pull(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self.sources[i].next() {
            let r = r?;
            self.heap.push(Reverse((r.id, i, r.encode())));
        }
        Ok(())
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<ChunkRef>;
    fn next(&mut self) -> Option<Result<ChunkRef>> {
        if !self.primed {
            self.primed = true;
            for i in 0..self.sources.len() {
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        let Reverse((_, i, rec)) = self.heap.pop()?;
        if let Err(e) = self.pull(i) {
            return Some(Err(e));
        }
        ChunkRef::decode(&rec).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalDir;
    use crate::repo::v2::chunk::BlobKind;

    fn rec(n: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&n.to_le_bytes()),
            kind: BlobKind::Data,
            pack: PackId([n as u8 | 1; 16]),
            offset: 32 + u64::from(n) * 10,
            stored_len: 100,
            within: n % 16 * 65536,
            raw_len: 65536,
        }
    }

    fn sorted(range: std::ops::Range<u32>) -> Vec<ChunkRef> {
        let mut v: Vec<ChunkRef> = range.map(rec).collect();
        v.sort_by_key(|r| r.id);
        v
    }

    fn backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.create_layout().unwrap();
        (dir, Arc::new(b))
    }

    fn plain() -> Arc<dyn Seal> {
        Arc::new(crate::repo::v2::frame::Plain)
    }

    fn aead() -> Arc<dyn Seal> {
        use crate::repo::v2::crypto::{Aead, MasterKey};
        Arc::new(Aead::new(MasterKey::from_bytes([9; 32])))
    }

    #[test]
    fn runs_find_every_record_merge_in_order_and_damage_is_named() {
        for seal in [plain(), aead()] {
            runs_work_under(seal);
        }
    }

    fn runs_work_under(seal: Arc<dyn Seal>) {
        let (_d, b) = backend();
        let recs = sorted(0..40_000);
        let p1 = [PackId([3; 16]), PackId([1; 16])];
        let (k1, n) =
            write_run(b.as_ref(), seal.as_ref(), recs.iter().map(|r| Ok(*r)), &p1).unwrap();
        assert_eq!(n, 40_000);
        write_run(
            b.as_ref(),
            seal.as_ref(),
            sorted(39_000..41_000).into_iter().map(Ok),
            &[PackId([2; 16])],
        )
        .unwrap();
        write_run(b.as_ref(), seal.as_ref(), std::iter::empty(), &[]).unwrap();
        let idx = Index::open(&b, &seal).unwrap();
        assert_eq!(idx.runs().len(), 3);
        let packs = idx.packs().unwrap();
        assert_eq!(packs.len(), 3);
        assert!(packs.contains(&PackId([2; 16])));
        for r in recs.iter().step_by(97) {
            assert_eq!(idx.lookup_all(&r.id).unwrap()[0], *r);
        }
        assert_eq!(idx.lookup_all(&rec(39_500).id).unwrap().len(), 2);
        assert!(idx.lookup_all(&ChunkId::of(b"absent")).unwrap().is_empty());
        let merged: Vec<ChunkRef> = idx.merged().map(|r| r.unwrap()).collect();
        assert_eq!(merged.len(), 42_000);
        assert!(merged.windows(2).all(|w| w[0].id <= w[1].id));
        // Unsorted input is refused; a damaged run says it is and names the fix.
        let mut rev = sorted(0..10);
        rev.reverse();
        assert!(write_run(b.as_ref(), seal.as_ref(), rev.into_iter().map(Ok), &[]).is_err());
        let lb = LocalDir::new(std::path::Path::new(&b.location()));
        std::fs::write(lb.path_of(&k1), b"garbage of no use").unwrap();
        let msg = Index::open(&b, &seal).err().unwrap().to_string();
        assert!(msg.contains("snarf repair index"), "{msg}");
    }

    #[test]
    fn a_lookup_costs_about_one_range_read_not_one_per_bisection_step() {
        use std::sync::atomic::Ordering;
        for seal in [plain(), aead()] {
            let dir = tempfile::tempdir().unwrap();
            let local = LocalDir::new(dir.path());
            local.create_layout().unwrap();
            let counting = Arc::new(crate::repo::v2::tests::Counting(local, Default::default()));
            let b: Arc<dyn Backend> = counting.clone();
            // 256 records per fan-out bucket: 8 bisection steps each for a plain search.
            let recs = sorted(0..65_536);
            write_run(b.as_ref(), seal.as_ref(), recs.iter().map(|r| Ok(*r)), &[]).unwrap();
            let idx = Index::open(&b, &seal).unwrap();
            let before = counting.1.load(Ordering::Relaxed);
            // A backup's lookups: mostly new ids (absent), some already stored.
            let lookups = 2_000u32;
            for n in 0..lookups {
                let found = idx.lookup_all(&rec(n * 61).id).unwrap();
                assert_eq!(
                    found,
                    vec![rec(n * 61)]
                        .into_iter()
                        .filter(|_| n * 61 < 65_536)
                        .collect::<Vec<_>>()
                );
                assert!(idx
                    .lookup_all(&ChunkId::of(&n.to_be_bytes()[..3]))
                    .unwrap()
                    .is_empty());
            }
            let reads = counting.1.load(Ordering::Relaxed) - before;
            assert!(
                reads <= u64::from(2 * lookups) * 3 / 2,
                "{} lookups took {reads} range reads",
                2 * lookups
            );
            // Every record is still found, and every absent id still is not, at page edges too.
            for r in recs
                .iter()
                .step_by(31)
                .chain(recs.iter().rev().take(70))
                .chain(recs.iter().take(70))
            {
                assert_eq!(idx.lookup_all(&r.id).unwrap(), vec![*r]);
            }
            for n in 0..3_000u32 {
                assert!(idx
                    .lookup_all(&ChunkId::of(&(n + 1_000_000).to_le_bytes()))
                    .unwrap()
                    .is_empty());
            }
        }
    }

    #[test]
    fn sealed_runs_hide_their_records_and_any_flipped_byte_is_damage_of_the_run() {
        let (_d, b) = backend();
        let seal = aead();
        let recs = sorted(0..40);
        let (key, _) = write_run(
            b.as_ref(),
            seal.as_ref(),
            recs.iter().map(|r| Ok(*r)),
            &[PackId([5; 16])],
        )
        .unwrap();
        let path = LocalDir::new(std::path::Path::new(&b.location())).path_of(&key);
        let good = std::fs::read(&path).unwrap();
        // 3 blocks (16 + 16 + 8 records), the pack table and the footer, each with a tag.
        assert_eq!(
            good.len() as u64,
            40 * 64 + 3 * 16 + 16 + 16 + FOOTER_LEN + 16
        );
        for r in &recs {
            assert!(!good.windows(32).any(|w| w == r.id.0), "a blob id in clear");
        }
        assert!(
            !good.windows(16).any(|w| w == [5; 16]),
            "a pack id in clear"
        );
        // A plain reader does not mistake it for a plain run.
        assert!(Index::open(&b, &plain()).is_err());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let got = Index::open(&b, &seal).and_then(|idx| {
                idx.packs()?;
                idx.merged().collect::<Result<Vec<_>>>()
            });
            match got {
                Ok(v) => panic!("byte {i} flipped and {} records read", v.len()),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&key.name()), "byte {i}: {msg}");
                }
            }
        }
        std::fs::write(&path, &good).unwrap();
        let idx = Index::open(&b, &seal).unwrap();
        assert_eq!(idx.merged().collect::<Result<Vec<_>>>().unwrap(), recs);
    }
}
