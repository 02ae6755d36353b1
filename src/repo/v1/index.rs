//! The chunk index: which pack holds each chunk. It is a set of immutable *runs*, sorted files
//! of fixed 64-byte records (the [`ChunkRef`] encoding) searched by binary search with pread,
//! so a lookup reads a few records and memory does not grow with the repository. Each
//! committed backup adds one run of its new chunks; past [`MAX_RUNS`] runs they are merged into
//! one by a streaming k-way merge. A chunk may appear in several runs (for instance after a
//! killed backup's packs were adopted); any of its entries is valid while its pack exists.
//!
//! ```text
//! 0..8       magic "SNARFIX1"
//! 8..16      record count u64 LE
//! 16..64     reserved, zero
//! 64..2112   fan-out: 256 u64 LE, entry b = number of records whose id's first byte <= b
//! 2112..     records sorted by chunk id, 64 bytes each
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::chunk::{ChunkRef, REF_LEN};
use super::error::{Error, Fix, IoContext, Result};
use super::fault::{self, FilePoints};
use super::fsx;
use super::ids::ChunkId;

/// Magic at the start of a run file.
const MAGIC: &[u8; 8] = b"SNARFIX1";
/// Bytes before the first record.
const HEADER_LEN: u64 = 64 + 256 * 8;
/// Runs kept before they are merged into one.
pub const MAX_RUNS: usize = 8;
/// Suffix of run files.
const SUFFIX: &str = ".idx";

/// One sorted run file, opened for lookups.
pub struct Run {
    path: PathBuf,
    file: File,
    count: u64,
    ends: Box<[u64; 256]>,
}

impl Run {
    /// Opens and validates the header of a run file.
    pub fn open(path: &Path) -> Result<Run> {
        let damaged = |why: String| Error::Damaged {
            repo: repo_of(path),
            path: path.to_path_buf(),
            why,
            fix: Fix::RepairIndex,
        };
        let file = File::open(path).ctx(|| format!("opening index run {}", path.display()))?;
        let mut header = vec![0u8; HEADER_LEN as usize];
        fsx::read_exact_at(&file, &mut header, 0)
            .map_err(|e| damaged(format!("its header cannot be read ({e})")))?;
        if &header[..8] != MAGIC {
            return Err(damaged("it is not a snarf index run".into()));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let count = u64_at(8);
        let mut ends = Box::new([0u64; 256]);
        for (b, end) in ends.iter_mut().enumerate() {
            *end = u64_at(64 + b * 8);
        }
        let len = file
            .metadata()
            .ctx(|| format!("reading {}", path.display()))?
            .len();
        if len != HEADER_LEN + count * REF_LEN as u64 || ends[255] != count {
            return Err(damaged(format!(
                "its length {len} does not match its {count} records"
            )));
        }
        Ok(Run {
            path: path.to_path_buf(),
            file,
            count,
            ends,
        })
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when the run has no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn record(&self, i: u64) -> Result<[u8; REF_LEN]> {
        let mut b = [0u8; REF_LEN];
        self.file
            .read_exact_at(&mut b, HEADER_LEN + i * REF_LEN as u64)
            .ctx(|| format!("reading index run {}", self.path.display()))?;
        Ok(b)
    }

    /// Finds a chunk by binary search within its fan-out bucket.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkRef>> {
        let b = id.0[0] as usize;
        let mut lo = if b == 0 { 0 } else { self.ends[b - 1] };
        let mut hi = self.ends[b];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let rec = self.record(mid)?;
            match rec[..32].cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(ChunkRef::decode(&rec)),
            }
        }
        Ok(None)
    }

    /// Streams the records in order.
    pub fn iter(&self) -> Result<RunIter> {
        let file = self
            .file
            .try_clone()
            .ctx(|| format!("reading {}", self.path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(HEADER_LEN))
            .ctx(|| format!("reading {}", self.path.display()))?;
        Ok(RunIter {
            path: self.path.clone(),
            reader,
            left: self.count,
            last: None,
        })
    }
}

/// Sequential reader of a run's records.
pub struct RunIter {
    path: PathBuf,
    reader: BufReader<File>,
    left: u64,
    last: Option<ChunkId>,
}

impl Iterator for RunIter {
    type Item = Result<ChunkRef>;
    fn next(&mut self) -> Option<Result<ChunkRef>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut b = [0u8; REF_LEN];
        if let Err(e) = self.reader.read_exact(&mut b) {
            return Some(Err(Error::io(
                format!("reading {}", self.path.display()),
                e,
            )));
        }
        let damaged = |why: &str| Error::Damaged {
            repo: repo_of(&self.path),
            path: self.path.clone(),
            why: why.into(),
            fix: Fix::RepairIndex,
        };
        let Some(r) = ChunkRef::decode(&b) else {
            return Some(Err(damaged("it holds a blank record")));
        };
        // Out of order records would make merges and lookups quietly wrong.
        if self.last.is_some_and(|last| r.id < last) {
            return Some(Err(damaged("its records are not sorted")));
        }
        self.last = Some(r.id);
        Some(Ok(r))
    }
}

/// Writes a run from records sorted by id (equal ids keep the first), durably.
pub fn write_run(
    path: &Path,
    records: impl Iterator<Item = Result<ChunkRef>>,
    points: FilePoints,
) -> Result<u64> {
    let mut out = fsx::AtomicFile::create(path)?;
    out.write_all(&vec![0u8; HEADER_LEN as usize])?;
    let mut ends = [0u64; 256];
    let mut count = 0u64;
    let mut last: Option<ChunkId> = None;
    for r in records {
        let r = r?;
        if let Some(prev) = last {
            if prev == r.id {
                continue;
            }
            if prev > r.id {
                return Err(Error::BadArgument(format!(
                    "index run {} was given unsorted records",
                    path.display()
                )));
            }
        }
        last = Some(r.id);
        out.write_all(&r.encode())?;
        ends[r.id.0[0] as usize] += 1;
        count += 1;
    }
    let mut header = vec![0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&count.to_le_bytes());
    let mut total = 0;
    for (b, n) in ends.iter().enumerate() {
        total += n;
        header[64 + b * 8..72 + b * 8].copy_from_slice(&total.to_le_bytes());
    }
    out.file()?
        .write_all_at(&header, 0)
        .ctx(|| format!("writing {}", path.display()))?;
    out.commit(points)?;
    Ok(count)
}

/// Merges sorted record streams into one sorted stream.
pub struct Merge {
    sources: Vec<RunIter>,
    heap: BinaryHeap<Reverse<(ChunkId, usize, [u8; REF_LEN])>>,
    primed: bool,
}

impl Merge {
    fn new(sources: Vec<RunIter>) -> Merge {
        Merge {
            sources,
            heap: BinaryHeap::new(),
            primed: false,
        }
    }

    fn pull(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self.sources[i].next() {
            let r = r?;
            self.heap.push(Reverse((r.id, i, r.encode())));
        }
        Ok(())
    }
}

impl Iterator for Merge {
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

/// The index of a repository: all runs in `index/`.
pub struct Index {
    dir: PathBuf,
    runs: Vec<Run>,
}

impl Index {
    /// Opens every run in `dir`.
    pub fn open(dir: &Path) -> Result<Index> {
        let mut names = run_names(dir)?;
        names.sort();
        let runs = names
            .iter()
            .map(|n| Run::open(&dir.join(n)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Index {
            dir: dir.to_path_buf(),
            runs,
        })
    }

    /// Looks a chunk up in every run; the first entry found.
    pub fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkRef>> {
        for run in &self.runs {
            if let Some(r) = run.lookup(id)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Every entry of a chunk, one per run that has it, in run order: a caller that finds
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

    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Total records over all runs (duplicates counted).
    pub fn records(&self) -> u64 {
        self.runs.iter().map(Run::len).sum()
    }

    /// All records of all runs, merged in id order (duplicates kept, adjacent).
    pub fn merged(&self) -> Result<Merge> {
        let sources = self
            .runs
            .iter()
            .map(Run::iter)
            .collect::<Result<Vec<_>>>()?;
        Ok(Merge::new(sources))
    }

    /// Replaces all runs with one run of the records `keep` accepts. Safe to redo: the new
    /// run is durable before any old run is removed, and duplicate entries are harmless.
    pub fn rewrite(
        self,
        keep: impl Fn(&ChunkRef) -> bool,
        points: FilePoints,
        removed_point: &'static str,
    ) -> Result<Index> {
        let name = format!(
            "m-{}{SUFFIX}",
            &super::ids::PackId::generate().to_string()[..16]
        );
        let path = self.dir.join(&name);
        let records = self.merged()?.filter(|r| r.as_ref().map_or(true, &keep));
        write_run(&path, records, points)?;
        let old: Vec<PathBuf> = self.runs.iter().map(|r| r.path.clone()).collect();
        let dir = self.dir.clone();
        drop(self);
        for (i, p) in old.iter().enumerate() {
            fsx::remove_if_exists(p)?;
            if i == 0 {
                fault::point(removed_point);
            }
        }
        fsx::sync_dir(&dir)?;
        Index::open(&dir)
    }
}

/// The repository a run file belongs to (`REPO/index/NAME.idx`), for messages.
fn repo_of(run: &Path) -> PathBuf {
    run.parent()
        .and_then(Path::parent)
        .unwrap_or(run)
        .to_path_buf()
}

/// Names of run files in `dir`.
pub fn run_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Damaged {
                repo: dir.parent().unwrap_or(dir).to_path_buf(),
                path: dir.to_path_buf(),
                why: "the index folder is missing".into(),
                fix: Fix::RepairIndex,
            })
        }
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only regular files: a FIFO or a folder named like a run must not hang or wedge
        // every lookup.
        if name.ends_with(SUFFIX)
            && !name.starts_with('.')
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// Path of the run named `stem` (without suffix) in `dir`.
pub fn run_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}{SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::PackId;

    fn rec(n: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&n.to_le_bytes()),
            pack: PackId([n as u8 | 1; 16]),
            offset: n as u64 * 10,
            stored_len: n,
            raw_len: n + 1,
        }
    }

    fn sorted(range: std::ops::Range<u32>) -> Vec<ChunkRef> {
        let mut v: Vec<ChunkRef> = range.map(rec).collect();
        v.sort_by_key(|r| r.id);
        v
    }

    #[test]
    fn lookup_finds_every_record_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sorted(0..3000);
        write_run(
            &run_path(dir.path(), "a"),
            recs.iter().map(|r| Ok(*r)),
            FilePoints::NONE,
        )
        .unwrap();
        let idx = Index::open(dir.path()).unwrap();
        for r in &recs {
            assert_eq!(idx.lookup(&r.id).unwrap(), Some(*r));
        }
        assert_eq!(idx.lookup(&ChunkId::of(b"absent")).unwrap(), None);
        assert_eq!(idx.records(), 3000);
    }

    #[test]
    fn empty_run_and_unsorted_input() {
        let dir = tempfile::tempdir().unwrap();
        write_run(
            &run_path(dir.path(), "e"),
            std::iter::empty(),
            FilePoints::NONE,
        )
        .unwrap();
        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.lookup(&ChunkId::of(b"x")).unwrap(), None);
        let mut recs = sorted(0..10);
        recs.reverse();
        assert!(write_run(
            &run_path(dir.path(), "u"),
            recs.into_iter().map(Ok),
            FilePoints::NONE
        )
        .is_err());
    }

    #[test]
    fn rewrite_merges_runs_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        write_run(
            &run_path(dir.path(), "a"),
            sorted(0..100).into_iter().map(Ok),
            FilePoints::NONE,
        )
        .unwrap();
        write_run(
            &run_path(dir.path(), "b"),
            sorted(50..200).into_iter().map(Ok),
            FilePoints::NONE,
        )
        .unwrap();
        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.run_count(), 2);
        let idx = idx
            .rewrite(
                |r| r.stored_len % 2 == 0,
                FilePoints::NONE,
                "compact.removed",
            )
            .unwrap();
        assert_eq!(idx.run_count(), 1);
        assert_eq!(idx.records(), 100);
        assert_eq!(idx.lookup(&rec(4).id).unwrap(), Some(rec(4)));
        assert_eq!(idx.lookup(&rec(5).id).unwrap(), None);
        assert_eq!(idx.lookup(&rec(150).id).unwrap(), Some(rec(150)));
    }
}
