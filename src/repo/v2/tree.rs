//! Tree manifests (format 2): a volume's table of chunk references as a tree of pages, so a
//! backup costs metadata in proportion to what changed, not to the volume's size.
//!
//! A *leaf* page maps [`LEAF_SNARFS`] consecutive snarfs to their chunk references (full
//! locations, so a restore needs no index lookups), runs of all-zero snarfs encoded as one
//! entry. An *interior* page lists the references of up to [`FANOUT`] child pages, where a
//! null child is a subtree of nothing but zeros (never stored, never read: that is what makes
//! sparse volumes cheap). The tree is as deep as the volume needs; the root's reference (or
//! none, for an all-zero volume) is all the backup object holds per volume. Pages are blobs
//! like chunks: content-addressed, compressed (and encrypted) by the [`PageStore`], so an
//! incremental backup rewrites only the pages on the paths to the leaves it changed, and an
//! unchanged page is the same blob in every backup.
//!
//! Page encoding (before the store compresses it):
//!
//! ```text
//! 0..4   magic: "STL2" (leaf) or "STI2" (interior)
//! 4..8   number of snarfs (leaf) or children (interior) the page covers, u32 LE
//! 8..    entries, until they cover that number:
//!          0x00 n:u32   n consecutive all-zero snarfs (leaf) or null children (interior)
//!          0x01 ref     one chunk (leaf) or child page (interior): the 64-byte reference
//! ```

use std::sync::Arc;

use parking_lot::Mutex;

use super::chunk::{ChunkRef, REF_LEN};

/// Snarfs one leaf page maps.
pub const LEAF_SNARFS: u64 = 1024;
/// Children of one interior page.
pub const FANOUT: u64 = 256;

const LEAF_MAGIC: &[u8; 4] = b"STL2";
const INTERIOR_MAGIC: &[u8; 4] = b"STI2";
const TAG_ZERO: u8 = 0;
const TAG_REF: u8 = 1;

/// What goes wrong with a tree: a page that does not decode as the one expected there, or
/// a store failure. The message says what; callers add the backup and volume.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A page read back is not a valid page of its place in the tree.
    #[error("tree page {page} is damaged: {why}")]
    BadPage {
        /// The page's id (short form).
        page: String,
        /// What is wrong.
        why: String,
    },
    /// The store failed to read or write a page.
    #[error(transparent)]
    Store(#[from] crate::repo::Error),
}

/// Result of tree operations.
pub type TreeResult<T> = std::result::Result<T, TreeError>;

/// Where pages are kept: they are blobs of the repository.
pub trait PageStore: Send + Sync {
    /// Stores a page's bytes (deduplicated by content) and returns its reference.
    fn put_page(&self, raw: &[u8]) -> crate::repo::Result<ChunkRef>;
    /// The bytes of the page at `r`, verified against its id.
    fn get_page(&self, r: &ChunkRef) -> crate::repo::Result<Arc<Vec<u8>>>;
}

/// The shape of a volume's tree: how many snarfs, and how deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Snarfs in the volume.
    pub snarfs: u64,
    /// Levels: 1 when the root is a leaf.
    pub depth: u8,
}

impl Geometry {
    /// The tree for `snarfs` snarfs.
    pub fn new(snarfs: u64) -> Geometry {
        let mut depth = 1u8;
        let mut covered = LEAF_SNARFS;
        while covered < snarfs {
            covered = covered.saturating_mul(FANOUT);
            depth += 1;
        }
        Geometry { snarfs, depth }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> u64 {
        self.snarfs.div_ceil(LEAF_SNARFS)
    }

    /// Snarfs a subtree at `level` covers (level 1 is a leaf).
    fn span(level: u8) -> u64 {
        LEAF_SNARFS.saturating_mul(FANOUT.saturating_pow(u32::from(level) - 1))
    }

    /// Snarfs of leaf `k` (the last may be short).
    pub fn leaf_len(&self, k: u64) -> u64 {
        (self.snarfs - k * LEAF_SNARFS).min(LEAF_SNARFS)
    }
}

/// One entry of a decoded leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// An all-zero snarf.
    Zero,
    /// A stored chunk.
    Chunk(ChunkRef),
}

/// Encodes a leaf of `entries` (one per snarf, in order).
pub fn encode_leaf(entries: &[Entry]) -> Vec<u8> {
    let items: Vec<Option<ChunkRef>> = entries
        .iter()
        .map(|e| match e {
            Entry::Zero => None,
            Entry::Chunk(r) => Some(*r),
        })
        .collect();
    encode(LEAF_MAGIC, &items)
}

/// Encodes an interior page of `children` (`None` for an all-zero subtree).
pub fn encode_interior(children: &[Option<ChunkRef>]) -> Vec<u8> {
    encode(INTERIOR_MAGIC, children)
}

fn encode(magic: &[u8; 4], items: &[Option<ChunkRef>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + items.len() * (REF_LEN + 1));
    out.extend_from_slice(magic);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Some(r) => {
                out.push(TAG_REF);
                out.extend_from_slice(&r.encode());
                i += 1;
            }
            None => {
                let n = items[i..].iter().take_while(|x| x.is_none()).count();
                out.push(TAG_ZERO);
                out.extend_from_slice(&(n as u32).to_le_bytes());
                i += n;
            }
        }
    }
    out
}

/// Decodes a page that must have `magic` and cover exactly `want` items.
fn decode(raw: &[u8], magic: &[u8; 4], want: u64) -> Result<Vec<Option<ChunkRef>>, String> {
    if raw.len() < 8 || &raw[..4] != magic {
        return Err(if magic == LEAF_MAGIC {
            "it is not a leaf page".to_string()
        } else {
            "it is not an interior page".to_string()
        });
    }
    let count = u64::from(u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
    if count != want {
        return Err(format!("it covers {count} entries where {want} belong"));
    }
    let mut out = Vec::with_capacity(want as usize);
    let mut at = 8;
    while at < raw.len() {
        match raw[at] {
            TAG_ZERO => {
                let b = raw.get(at + 1..at + 5).ok_or("a zero run is cut off")?;
                let n = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if n == 0 || out.len() as u64 + n > want {
                    return Err(format!("a zero run of {n} does not fit"));
                }
                out.extend(std::iter::repeat_n(None, n as usize));
                at += 5;
            }
            TAG_REF => {
                let b = raw
                    .get(at + 1..at + 1 + REF_LEN)
                    .ok_or("a reference is cut off")?;
                let mut rec = [0u8; REF_LEN];
                rec.copy_from_slice(b);
                let r = ChunkRef::decode(&rec).ok_or("a reference is blank")?;
                if r.is_zero() || out.len() as u64 >= want {
                    return Err("a reference does not fit or is a zero marker".into());
                }
                out.push(Some(r));
                at += 1 + REF_LEN;
            }
            t => return Err(format!("unknown entry tag {t}")),
        }
    }
    if out.len() as u64 != want {
        return Err(format!("its entries cover {} of {want}", out.len()));
    }
    Ok(out)
}

fn bad(r: &ChunkRef, why: String) -> TreeError {
    TreeError::BadPage {
        page: r.id.short(),
        why,
    }
}

/// Builds a tree from its leaves, in any order: each leaf is stored as it is finished, and
/// [`Builder::finish`] stores the interior pages. Memory: one reference per leaf (72 bytes
/// per 1024 snarfs).
pub struct Builder {
    geometry: Geometry,
    leaves: Vec<Option<Option<ChunkRef>>>,
}

impl Builder {
    /// A tree of `snarfs` snarfs with no leaf given yet.
    pub fn new(snarfs: u64) -> Builder {
        let geometry = Geometry::new(snarfs);
        Builder {
            geometry,
            leaves: vec![None; geometry.leaves() as usize],
        }
    }

    /// The tree's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Stores leaf `k` from its entries (an all-zero leaf is not stored at all).
    pub fn put_leaf(&mut self, store: &dyn PageStore, k: u64, entries: &[Entry]) -> TreeResult<()> {
        let want = self.geometry.leaf_len(k);
        if entries.len() as u64 != want {
            return Err(TreeError::Store(crate::repo::Error::BadArgument(format!(
                "leaf {k} needs {want} entries, not {}",
                entries.len()
            ))));
        }
        let r = if entries.iter().all(|e| *e == Entry::Zero) {
            None
        } else {
            Some(store.put_page(&encode_leaf(entries))?)
        };
        self.set_leaf(k, r)
    }

    /// Takes leaf `k` as it is in another tree (`None`: all zeros), without reading it.
    pub fn set_leaf(&mut self, k: u64, r: Option<ChunkRef>) -> TreeResult<()> {
        let slot = self.leaves.get_mut(k as usize).ok_or_else(|| {
            TreeError::Store(crate::repo::Error::BadArgument(format!(
                "the tree has no leaf {k}"
            )))
        })?;
        *slot = Some(r);
        Ok(())
    }

    /// True once leaf `k` was given.
    pub fn has_leaf(&self, k: u64) -> bool {
        self.leaves.get(k as usize).is_some_and(Option::is_some)
    }

    /// Stores the interior pages and returns the root (`None`: the volume is all zeros).
    /// Every leaf must have been given.
    pub fn finish(self, store: &dyn PageStore) -> TreeResult<Option<ChunkRef>> {
        let mut level: Vec<Option<ChunkRef>> = Vec::with_capacity(self.leaves.len());
        for (k, l) in self.leaves.into_iter().enumerate() {
            level.push(l.ok_or_else(|| {
                TreeError::Store(crate::repo::Error::BadArgument(format!(
                    "leaf {k} of the tree was never given"
                )))
            })?);
        }
        if level.is_empty() {
            return Ok(None);
        }
        for _ in 1..self.geometry.depth {
            let mut up = Vec::with_capacity(level.len().div_ceil(FANOUT as usize));
            for children in level.chunks(FANOUT as usize) {
                up.push(if children.iter().all(Option::is_none) {
                    None
                } else {
                    Some(store.put_page(&encode_interior(children))?)
                });
            }
            level = up;
        }
        Ok(level.into_iter().next().flatten())
    }
}

/// The decoded children of an interior page.
type Children = Arc<Vec<Option<ChunkRef>>>;

/// Interior pages a reader keeps decoded (a path from the root is a few pages).
const KEPT_INTERIOR: usize = 64;

/// Random access to a tree; safe to share between threads.
pub struct Reader {
    geometry: Geometry,
    root: Option<ChunkRef>,
    interior: Mutex<Vec<(ChunkRef, Children)>>,
}

impl Reader {
    /// The tree of `snarfs` snarfs whose root is `root`. Nothing is read until asked, so
    /// even an absurd snarf count read from a damaged backup costs nothing here (eight
    /// levels address every u64 snarf).
    pub fn new(snarfs: u64, root: Option<ChunkRef>) -> Reader {
        Reader {
            geometry: Geometry::new(snarfs),
            root,
            interior: Mutex::new(Vec::new()),
        }
    }

    /// The tree's shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The root's reference (`None`: all zeros).
    pub fn root(&self) -> Option<ChunkRef> {
        self.root
    }

    /// The decoded children of interior page `r`, which covers `want` children.
    fn children(&self, store: &dyn PageStore, r: &ChunkRef, want: u64) -> TreeResult<Children> {
        if let Some((_, c)) = self.interior.lock().iter().find(|(k, _)| k == r) {
            return Ok(c.clone());
        }
        let raw = store.get_page(r)?;
        let c = Arc::new(decode(&raw, INTERIOR_MAGIC, want).map_err(|why| bad(r, why))?);
        let mut kept = self.interior.lock();
        if kept.len() >= KEPT_INTERIOR {
            kept.remove(0);
        }
        kept.push((*r, c.clone()));
        Ok(c)
    }

    /// The reference of leaf `k` (`None`: all zeros), reading only interior pages.
    pub fn leaf_ref(&self, store: &dyn PageStore, k: u64) -> TreeResult<Option<ChunkRef>> {
        if k >= self.geometry.leaves() {
            return Err(TreeError::Store(crate::repo::Error::BadArgument(format!(
                "the tree has {} leaves; leaf {k} does not exist",
                self.geometry.leaves()
            ))));
        }
        let mut node = self.root;
        let first_snarf = k * LEAF_SNARFS;
        let mut start = 0u64;
        for level in (2..=self.geometry.depth).rev() {
            let Some(r) = node else { return Ok(None) };
            let child_span = Geometry::span(level - 1);
            let span = Geometry::span(level);
            let covered = (self.geometry.snarfs - start).min(span);
            let want = covered.div_ceil(child_span);
            let children = self.children(store, &r, want)?;
            let i = (first_snarf - start) / child_span;
            node = children.get(i as usize).copied().flatten();
            start += i * child_span;
        }
        Ok(node)
    }

    /// The entries of leaf `k`.
    pub fn leaf(&self, store: &dyn PageStore, k: u64) -> TreeResult<Vec<Entry>> {
        // Looked up first: it refuses a leaf past the end, whose length is undefined.
        let r = self.leaf_ref(store, k)?;
        let want = self.geometry.leaf_len(k);
        match r {
            None => Ok(vec![Entry::Zero; want as usize]),
            Some(r) => {
                let raw = store.get_page(&r)?;
                Ok(decode(&raw, LEAF_MAGIC, want)
                    .map_err(|why| bad(&r, why))?
                    .into_iter()
                    .map(|e| e.map_or(Entry::Zero, Entry::Chunk))
                    .collect())
            }
        }
    }

    /// The first leaf at or after `k` that is not all zeros, skipping null subtrees
    /// without reading them.
    pub fn next_nonzero_leaf(&self, store: &dyn PageStore, k: u64) -> TreeResult<Option<u64>> {
        let mut k = k;
        while k < self.geometry.leaves() {
            match self.null_span_at(store, k)? {
                None => return Ok(Some(k)),
                Some(n) => k += n,
            }
        }
        Ok(None)
    }

    /// `None` if leaf `k` is stored; else how many leaves from `k` on are in the same null
    /// subtree (so a scan can jump past it).
    fn null_span_at(&self, store: &dyn PageStore, k: u64) -> TreeResult<Option<u64>> {
        let mut node = self.root;
        let first_snarf = k * LEAF_SNARFS;
        let mut start = 0u64;
        let mut level = self.geometry.depth;
        loop {
            let Some(r) = node else {
                // The whole subtree at `level` from `start` is zeros.
                let end = (start + Geometry::span(level)).min(self.geometry.snarfs);
                return Ok(Some(end.div_ceil(LEAF_SNARFS) - k));
            };
            if level == 1 {
                return Ok(None);
            }
            let child_span = Geometry::span(level - 1);
            let covered = (self.geometry.snarfs - start).min(Geometry::span(level));
            let children = self.children(store, &r, covered.div_ceil(child_span))?;
            let i = (first_snarf - start) / child_span;
            node = children.get(i as usize).copied().flatten();
            start += i * child_span;
            level -= 1;
        }
    }

    /// Every page of the tree (interior and leaf), each once, for gc and check.
    pub fn pages(&self, store: &dyn PageStore) -> TreeResult<Vec<ChunkRef>> {
        let mut out = Vec::new();
        let Some(root) = self.root else {
            return Ok(out);
        };
        let mut stack = vec![(root, self.geometry.depth, 0u64)];
        while let Some((r, level, start)) = stack.pop() {
            out.push(r);
            if level == 1 {
                continue;
            }
            let child_span = Geometry::span(level - 1);
            let covered = (self.geometry.snarfs - start).min(Geometry::span(level));
            let children = self.children(store, &r, covered.div_ceil(child_span))?;
            for (i, c) in children.iter().enumerate() {
                if let Some(c) = c {
                    stack.push((*c, level - 1, start + i as u64 * child_span));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::{ChunkId, PackId};
    use crate::repo::v2::chunk::BlobKind;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Pages in memory, counting reads and writes.
    #[derive(Default)]
    struct Mem {
        pages: Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>,
        reads: AtomicU64,
        writes: AtomicU64,
    }

    impl PageStore for Mem {
        fn put_page(&self, raw: &[u8]) -> crate::repo::Result<ChunkRef> {
            let id = ChunkId::of(raw);
            let mut p = self.pages.lock();
            p.entry(id).or_insert_with(|| {
                self.writes.fetch_add(1, Ordering::Relaxed);
                Arc::new(raw.to_vec())
            });
            Ok(ChunkRef {
                id,
                kind: BlobKind::Page,
                pack: PackId([9; 16]),
                offset: 32,
                stored_len: raw.len() as u32,
                within: 0,
                raw_len: raw.len() as u32,
            })
        }
        fn get_page(&self, r: &ChunkRef) -> crate::repo::Result<Arc<Vec<u8>>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.pages
                .lock()
                .get(&r.id)
                .cloned()
                .ok_or_else(|| crate::repo::Error::BadArgument("no such page".into()))
        }
    }

    fn chunk(i: u64, gen: u64) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&[i.to_le_bytes(), gen.to_le_bytes()].concat()),
            kind: BlobKind::Data,
            pack: PackId([7; 16]),
            offset: 32 + i * 100,
            stored_len: 50,
            within: 0,
            raw_len: 65536,
        }
    }

    /// A sparse volume: data only in snarfs for which `data` says so.
    fn build(store: &Mem, snarfs: u64, data: impl Fn(u64) -> Option<ChunkRef>) -> Option<ChunkRef> {
        let mut b = Builder::new(snarfs);
        for k in (0..b.geometry().leaves()).rev() {
            let entries: Vec<Entry> = (k * LEAF_SNARFS..k * LEAF_SNARFS + b.geometry().leaf_len(k))
                .map(|i| data(i).map_or(Entry::Zero, Entry::Chunk))
                .collect();
            b.put_leaf(store, k, &entries).unwrap();
        }
        b.finish(store).unwrap()
    }

    #[test]
    fn geometry_grows_a_level_per_fanout() {
        assert_eq!(Geometry::new(0).depth, 1);
        assert_eq!(Geometry::new(1024).depth, 1);
        assert_eq!(Geometry::new(1025).depth, 2);
        assert_eq!(Geometry::new(1024 * 256).depth, 2);
        assert_eq!(Geometry::new(1024 * 256 + 1).depth, 3);
        // 1 TiB of 64 KiB snarfs.
        let g = Geometry::new(1 << 24);
        assert_eq!((g.depth, g.leaves()), (3, 16384));
        assert_eq!(Geometry::new(2500).leaf_len(2), 452);
    }

    #[test]
    fn every_snarf_reads_back_through_a_deep_sparse_tree_and_null_subtrees_are_skipped() {
        let store = Mem::default();
        // Three levels: 300 000 snarfs, data in two far apart stretches and a short tail.
        let n = 300_000;
        let has =
            |i: u64| (5000..7100).contains(&i) || (290_000..290_010).contains(&i) || i == n - 1;
        let root = build(&store, n, |i| has(i).then(|| chunk(i, 0)));
        let t = Reader::new(n, root);
        assert_eq!(t.geometry().depth, 3);
        for k in 0..t.geometry().leaves() {
            let leaf = t.leaf(&store, k).unwrap();
            assert_eq!(leaf.len() as u64, t.geometry().leaf_len(k));
            for (j, e) in leaf.iter().enumerate() {
                let i = k * LEAF_SNARFS + j as u64;
                let want = if has(i) {
                    Entry::Chunk(chunk(i, 0))
                } else {
                    Entry::Zero
                };
                assert_eq!(*e, want, "snarf {i}");
            }
        }
        // Only leaves with data, and the interior pages above them, were stored.
        let pages = t.pages(&store).unwrap();
        assert_eq!(pages.len(), 3 + 1 + 1 + 2 + 1);
        let reads = store.reads.load(Ordering::Relaxed);
        let stored: Vec<u64> =
            std::iter::successors(t.next_nonzero_leaf(&store, 0).unwrap(), |k| {
                t.next_nonzero_leaf(&store, k + 1).unwrap()
            })
            .collect();
        assert_eq!(stored, vec![4, 5, 6, 283, 292]);
        // The scan read no leaf and at most the few interior pages.
        assert!(store.reads.load(Ordering::Relaxed) - reads <= 3);
        // An all-zero volume has no pages at all.
        assert_eq!(build(&store, 5000, |_| None), None);
        let z = Reader::new(5000, None);
        assert_eq!(z.leaf(&store, 4).unwrap(), vec![Entry::Zero; 5000 - 4096]);
        assert_eq!(z.next_nonzero_leaf(&store, 0).unwrap(), None);
    }

    #[test]
    fn an_incremental_tree_stores_only_the_changed_paths_and_shares_the_rest() {
        let store = Mem::default();
        let n = 1 << 20;
        let base = build(&store, n, |i| Some(chunk(i, 0)));
        let base_writes = store.writes.load(Ordering::Relaxed);
        assert_eq!(base_writes, 1024 + 4 + 1);
        let base_t = Reader::new(n, base);
        // One changed snarf: reuse every other leaf by reference.
        let changed = 700_000u64;
        let mut b = Builder::new(n);
        for k in 0..b.geometry().leaves() {
            if k == changed / LEAF_SNARFS {
                let mut e = base_t.leaf(&store, k).unwrap();
                e[(changed % LEAF_SNARFS) as usize] = Entry::Chunk(chunk(changed, 1));
                b.put_leaf(&store, k, &e).unwrap();
            } else {
                b.set_leaf(k, base_t.leaf_ref(&store, k).unwrap()).unwrap();
            }
        }
        let root = b.finish(&store).unwrap();
        assert_eq!(store.writes.load(Ordering::Relaxed) - base_writes, 3);
        let t = Reader::new(n, root);
        assert_eq!(
            t.leaf(&store, changed / LEAF_SNARFS).unwrap()[(changed % LEAF_SNARFS) as usize],
            Entry::Chunk(chunk(changed, 1))
        );
        assert_eq!(
            t.leaf(&store, 3).unwrap()[5],
            Entry::Chunk(chunk(3 * 1024 + 5, 0))
        );
        // The same data again is the same tree: nothing new is stored.
        let again = build(&store, n, |i| Some(chunk(i, 0)));
        assert_eq!(again, base);
    }

    #[test]
    fn damaged_or_misplaced_pages_are_errors_not_wrong_data() {
        let store = Mem::default();
        let leaf: Vec<Entry> = (0..10).map(|i| Entry::Chunk(chunk(i, 0))).collect();
        let raw = encode_leaf(&leaf);
        assert_eq!(decode(&raw, LEAF_MAGIC, 10).unwrap().len(), 10);
        // Wrong count for its place, wrong kind, cut off, trailing junk, bad tag, overlong
        // zero run, zero marker in a reference.
        assert!(decode(&raw, LEAF_MAGIC, 11).is_err());
        assert!(decode(&raw, INTERIOR_MAGIC, 10).is_err());
        assert!(decode(&raw[..raw.len() - 1], LEAF_MAGIC, 10).is_err());
        let mut junk = raw.clone();
        junk.push(0);
        assert!(decode(&junk, LEAF_MAGIC, 10).is_err());
        let mut tag = raw.clone();
        tag[8] = 7;
        assert!(decode(&tag, LEAF_MAGIC, 10).is_err());
        let mut z = encode_leaf(&[Entry::Zero; 10]);
        z[9] = 11;
        assert!(decode(&z, LEAF_MAGIC, 10).is_err());
        let mut zero_ref = b"STL2".to_vec();
        zero_ref.extend_from_slice(&1u32.to_le_bytes());
        zero_ref.push(TAG_REF);
        zero_ref.extend_from_slice(&ChunkRef::zero(65536).encode());
        assert!(decode(&zero_ref, LEAF_MAGIC, 1).is_err());
        // A tree whose root is a leaf where an interior page belongs says so.
        let leaf_ref = store.put_page(&raw).unwrap();
        let t = Reader::new(5000, Some(leaf_ref));
        let msg = t.leaf(&store, 0).unwrap_err().to_string();
        assert!(
            msg.contains("is damaged") && msg.contains(&leaf_ref.id.short()),
            "{msg}"
        );
        let huge = Reader::new(u64::MAX, None);
        assert_eq!(huge.geometry().depth, 8);
        assert_eq!(
            huge.leaf_ref(&store, huge.geometry().leaves() - 1).unwrap(),
            None
        );
    }
}
