//! Live restore of a volume from a backup: the volume is served at once, and its *restored*
//! bitmap says which snarfs already hold their bytes locally. A read of a snarf that is not
//! local fetches it from the backup (through a [`Source`] the mount plugs in), writes it into
//! the volume file and marks it, then serves it; readers of the same snarf wait for one
//! fetch. A write that covers a whole snarf just marks it; a partial one first brings the
//! snarf in. A background copy ([`Restore::copy_next`]) fetches the rest in ascending order.
//!
//! # Crash safety
//!
//! A bit is written to the bitmap file only after the snarf's bytes are durable in the
//! volume file (pwrite, fdatasync, then the page holding the bit), so after a power cut
//! every set bit speaks for durable bytes, and after a kill -9 (page cache kept) every
//! write that returned is kept: a first write into a snarf that is not local marks it in
//! the file before it returns. A snarf whose bit did not reach the file is fetched again,
//! which only replaces bytes no fsync acknowledged. An fsync of the volume makes the bitmap
//! durable too ([`Restore::sync`]).
//!
//! # On-disk layout (`state/restore/ID`, the volume id in 16 hex digits)
//!
//! 4096-byte pages, little-endian. Page 0, the header:
//!
//! ```text
//!   0  8  magic "SNRESTR1"
//!   8  4  format version (1)
//!  12  4  log2 of the snarf size
//!  16  8  volume id
//!  24  8  snarfs the backup's volume has (those past it are always local)
//!  32  4  length of the description
//!  36  4  zero
//!  40 32  blake3 of bytes 0..40 and the description
//! 128 ..  the description: JSON (repository, backup id, volume name, size)
//! ```
//!
//! Page `1 + p` holds the bits of snarfs `p * SNARFS_PER_PAGE ..` (bit `i % 64` of word
//! `i / 64` from byte 64): bytes 0..8 the page number, 8..40 blake3 of (volume id, page
//! number, the bits). Each page is written whole with one pwrite; a page whose hash fails is
//! damage, reported naming the file, never taken as "not restored" (that could overwrite
//! writes made since).
//!
//! # Size
//!
//! One bit per snarf of the backup's volume, in memory twice (local, and durable in the
//! file): a 1 TiB volume of 64 KiB snarfs takes 2 MiB of memory and 2 MiB of file, and the
//! file goes away once every snarf is local.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::volume::Volume;
use super::{Error, Result};
use crate::sys::durable;

pub use super::bitpage::PAGE;
use super::bitpage::{le32, le64, page_bytes, page_ok, BITS_AT, WORDS};
/// Snarfs one page holds.
pub const SNARFS_PER_PAGE: u64 = (WORDS * 64) as u64;
/// Where the description starts in the header.
const DESC_AT: usize = 128;
const MAGIC: &[u8; 8] = b"SNRESTR1";
const VERSION: u32 = 1;
/// Hashed stripes that order a fetch's write against a first write into the same snarf.
const STRIPES: usize = 64;
/// How far ahead of a sequential reader missing snarfs are fetched, at most.
pub const READAHEAD_BYTES: u64 = 8 << 20;
/// Sequential readers told apart (interleaved `cat`s each keep their readahead).
const STREAMS: usize = 4;
/// Snarfs the first readahead of a stream fetches; each sequential step doubles it.
const FIRST_WINDOW: u64 = 4;

/// One sequential reader as the readahead sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    /// The last snarf it read.
    last: u64,
    /// Snarfs it fetches ahead now (0: not sequential yet).
    window: u64,
    /// When it last read, in reads of the volume (the least recent is replaced).
    tick: u64,
    /// Whether this slot holds a stream.
    used: bool,
}

/// What a failed fetch says: the repository's own error, kept as the cause.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

/// Where the snarfs not yet local come from: a backup's volume, plugged in by the mount.
pub trait Source: Send + Sync {
    /// Reads snarf `index` of the backup's volume into `buf` (one whole snarf; zeros past
    /// the backup's end).
    fn fetch(&self, index: u64, buf: &mut [u8]) -> std::result::Result<(), FetchError>;
}

/// What a live restore restores: written into the bitmap file's header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The repository, as the user wrote it (a folder or an `ssh://` URL).
    pub repository: String,
    /// The backup's id.
    pub backup: String,
    /// The volume's name in the backup.
    pub volume: String,
    /// The volume's size in the backup, in bytes.
    pub size: u64,
}

/// Progress of a live restore, for `control/jobs` and `control/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What is restored.
    pub origin: Origin,
    /// Snarfs of the backup's volume.
    pub total: u64,
    /// Snarfs local so far.
    pub local: u64,
    /// Snarfs fetched from the repository by this process.
    pub fetched: u64,
    /// Of those, snarfs fetched ahead of a sequential reader.
    pub read_ahead: u64,
    /// Why the last fetch failed, if the repository has not answered since.
    pub failure: Option<String>,
}

/// The bits in memory and the file they are kept in.
struct Pages {
    file: File,
    /// Bits whose bytes are durable: what the file holds (or is about to).
    durable: Vec<u64>,
}

/// The live restore of one volume; see the module documentation.
pub struct Restore {
    path: PathBuf,
    id: u64,
    origin: Origin,
    count: u64,
    /// Snarfs whose bytes the volume file holds (page cache at least).
    local: Vec<AtomicU64>,
    /// Snarfs not local yet.
    missing: AtomicU64,
    fetched: AtomicU64,
    pages: Mutex<Pages>,
    /// Snarfs being fetched now; readers of one wait on `fetched_one`.
    inflight: Mutex<BTreeSet<u64>>,
    fetched_one: Condvar,
    stripes: [Mutex<()>; STRIPES],
    source: parking_lot::RwLock<Option<std::sync::Arc<dyn Source>>>,
    failure: Mutex<Option<(Instant, String)>>,
    /// Sequential readers, for readahead ([`Restore::ensure_read`]).
    streams: Mutex<(u64, [Stream; STREAMS])>,
    /// Snarfs fetched ahead of a reader that asked for none of them.
    read_ahead: AtomicU64,
    /// Set once every snarf is local and the file is gone.
    done: AtomicBool,
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore")
            .field("path", &self.path)
            .field("origin", &self.origin)
            .field("missing", &self.missing.load(Ordering::Relaxed))
            .finish()
    }
}

fn header_hash(b: &[u8], desc: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&b[0..40]);
    h.update(desc);
    h.finalize()
}

fn header_bytes(id: u64, snarf_shift: u32, count: u64, desc: &[u8]) -> [u8; PAGE] {
    let mut b = [0u8; PAGE];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&snarf_shift.to_le_bytes());
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b[24..32].copy_from_slice(&count.to_le_bytes());
    b[32..36].copy_from_slice(&(desc.len() as u32).to_le_bytes());
    let hash = header_hash(&b, desc);
    b[40..72].copy_from_slice(hash.as_bytes());
    b[DESC_AT..DESC_AT + desc.len()].copy_from_slice(desc);
    b
}

fn pages_for(count: u64) -> usize {
    count.div_ceil(SNARFS_PER_PAGE) as usize
}

/// Words of bits for `count` snarfs, allocated fallibly.
fn words(count: u64) -> Result<Vec<u64>> {
    let n = pages_for(count) * WORDS;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what: format!("the restored bitmap of a volume of {count} snarfs"),
        bytes: (n * 16) as u64,
    })?;
    v.resize(n, 0);
    Ok(v)
}

/// The error for a bitmap file that cannot be trusted, naming it.
fn damaged(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::RestoreDamaged {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

impl Restore {
    /// Starts the live restore of the volume `id` (empty, about to grow to `origin.size`):
    /// writes its bitmap file, all snarfs missing, durably (file and name) at `path`.
    pub fn create(path: PathBuf, id: u64, snarf_shift: u32, origin: Origin) -> Result<Restore> {
        let count = origin.size.div_ceil(1u64 << snarf_shift);
        let desc = serde_json::to_vec(&origin).map_err(|e| {
            Error::io(
                "describing a live restore",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        if desc.len() > PAGE - DESC_AT {
            return Err(Error::io(
                format!(
                    "starting the live restore of backup {}: its repository location and names are longer than {} bytes together",
                    origin.backup,
                    PAGE - DESC_AT
                ),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let durable_bits = words(count)?;
        let header = header_bytes(id, snarf_shift, count, &desc);
        durable::replace_with(&path, durable::PRIVATE, |w| {
            use std::io::Write;
            w.write_all(&header)?;
            for (p, chunk) in durable_bits.chunks(WORDS).enumerate() {
                w.write_all(&page_bytes(id, p as u64, chunk))?;
            }
            Ok(())
        })?;
        let file = open_rw(&path)?;
        Self::build(path, id, origin, count, file, durable_bits)
    }

    /// Loads the bitmap file at `path` of volume `id`, as an open found it.
    pub fn load(path: PathBuf, id: u64, snarf_shift: u32) -> Result<Restore> {
        let data = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading the restored bitmap {}", path.display()), e))?;
        if data.len() < PAGE || data.len() % PAGE != 0 {
            return Err(damaged(
                &path,
                format_args!("is truncated ({} bytes, not whole pages)", data.len()),
            ));
        }
        let h = &data[..PAGE];
        if &h[0..8] != MAGIC {
            return Err(damaged(&path, "does not start with the bitmap's magic"));
        }
        let desc_len = le32(h, 32) as usize;
        if desc_len > PAGE - DESC_AT {
            return Err(damaged(
                &path,
                "has a damaged header (description too long)",
            ));
        }
        let desc = &h[DESC_AT..DESC_AT + desc_len];
        if header_hash(h, desc).as_bytes() != &h[40..72] {
            return Err(damaged(
                &path,
                "has a damaged header (its hash does not match)",
            ));
        }
        if le32(h, 8) != VERSION {
            return Err(damaged(
                &path,
                format_args!("is of format version {}, not {VERSION}", le32(h, 8)),
            ));
        }
        if le32(h, 12) != snarf_shift {
            return Err(damaged(&path, "was written for another snarf size"));
        }
        if le64(h, 16) != id {
            return Err(damaged(
                &path,
                format_args!("belongs to volume {:016x}", le64(h, 16)),
            ));
        }
        let origin: Origin = serde_json::from_slice(desc)
            .map_err(|e| damaged(&path, format_args!("has a damaged description ({e})")))?;
        let count = le64(h, 24);
        if count != origin.size.div_ceil(1u64 << snarf_shift) || count > super::volume::MAX_SNARFS {
            return Err(damaged(
                &path,
                "has a snarf count that does not fit its size",
            ));
        }
        let have = data.len() / PAGE - 1;
        if have != pages_for(count) {
            return Err(damaged(
                &path,
                format_args!("has {have} pages of bits, not {}", pages_for(count)),
            ));
        }
        let mut bits = words(count)?;
        for p in 0..have {
            let b = &data[(1 + p) * PAGE..(2 + p) * PAGE];
            if !page_ok(id, p as u64, b) {
                return Err(damaged(
                    &path,
                    format_args!("has a damaged page {p} (its hash does not match)"),
                ));
            }
            for k in 0..WORDS {
                bits[p * WORDS + k] = le64(b, BITS_AT + k * 8);
            }
        }
        let file = open_rw(&path)?;
        Self::build(path, id, origin, count, file, bits)
    }

    fn build(
        path: PathBuf,
        id: u64,
        origin: Origin,
        count: u64,
        file: File,
        durable_bits: Vec<u64>,
    ) -> Result<Restore> {
        let local: Vec<AtomicU64> = durable_bits.iter().map(|w| AtomicU64::new(*w)).collect();
        let set: u64 = durable_bits.iter().map(|w| w.count_ones() as u64).sum();
        Ok(Restore {
            path,
            id,
            origin,
            count,
            local,
            missing: AtomicU64::new(count.saturating_sub(set)),
            fetched: AtomicU64::new(0),
            pages: Mutex::new(Pages {
                file,
                durable: durable_bits,
            }),
            inflight: Mutex::new(BTreeSet::new()),
            fetched_one: Condvar::new(),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            source: parking_lot::RwLock::new(None),
            failure: Mutex::new(None),
            streams: Mutex::new((0, [Stream::default(); STREAMS])),
            read_ahead: AtomicU64::new(0),
            done: AtomicBool::new(false),
        })
    }

    /// The bitmap file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is restored.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Plugs in where missing snarfs come from.
    pub fn set_source(&self, source: std::sync::Arc<dyn Source>) {
        *self.source.write() = Some(source);
    }

    /// Whether every snarf is local (the restore is over).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Snarfs not local yet.
    pub fn missing(&self) -> u64 {
        self.missing.load(Ordering::Acquire)
    }

    /// Progress, for the control files.
    pub fn progress(&self) -> Progress {
        Progress {
            origin: self.origin.clone(),
            total: self.count,
            local: self.count - self.missing(),
            fetched: self.fetched.load(Ordering::Relaxed),
            read_ahead: self.read_ahead.load(Ordering::Relaxed),
            failure: self.failure.lock().as_ref().map(|(_, why)| why.clone()),
        }
    }

    /// Whether snarf `index` holds its bytes locally.
    pub fn is_local(&self, index: u64) -> bool {
        index >= self.count
            || self.local[(index / 64) as usize].load(Ordering::Acquire) & (1 << (index % 64)) != 0
    }

    /// The first snarf at or after `from` that is not local.
    pub fn next_missing(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.count {
            let w =
                self.local[(i / 64) as usize].load(Ordering::Acquire) | ((1u64 << (i % 64)) - 1);
            if w == u64::MAX {
                i = (i / 64 + 1) * 64;
                continue;
            }
            let at = (i / 64) * 64 + w.trailing_ones() as u64;
            return (at < self.count).then_some(at);
        }
        None
    }

    fn set_local(&self, index: u64) {
        let bit = 1u64 << (index % 64);
        let old = self.local[(index / 64) as usize].fetch_or(bit, Ordering::AcqRel);
        if old & bit == 0 {
            self.missing.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn stripe(&self, index: u64) -> &Mutex<()> {
        &self.stripes[(index % STRIPES as u64) as usize]
    }

    /// Writes the bits of `snarfs` (whose bytes the caller made durable) into the file.
    fn commit(&self, snarfs: &[u64]) -> Result<()> {
        if snarfs.is_empty() {
            return Ok(());
        }
        let mut pages = self.pages.lock();
        let mut touched = BTreeSet::new();
        for &i in snarfs.iter().filter(|&&i| i < self.count) {
            pages.durable[(i / 64) as usize] |= 1 << (i % 64);
            touched.insert(i / SNARFS_PER_PAGE);
        }
        for p in touched {
            let words = &pages.durable[p as usize * WORDS..(p as usize + 1) * WORDS];
            let page = page_bytes(self.id, p, words);
            pages
                .file
                .write_all_at(&page, (1 + p) * PAGE as u64)
                .map_err(|e| {
                    Error::io(
                        format!("writing the restored bitmap {}", self.path.display()),
                        e,
                    )
                })?;
        }
        Ok(())
    }

    /// Makes the bitmap file durable (an fsync of the volume calls it after syncing the
    /// volume's bytes).
    pub fn sync(&self) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        self.pages.lock().file.sync_data().map_err(|e| {
            Error::io(
                format!("syncing the restored bitmap {}", self.path.display()),
                e,
            )
        })
    }

    fn fail(&self, index: u64, e: FetchError) -> Error {
        let err = Error::Fetch {
            volume: self.id,
            snarf: index,
            backup: self.origin.backup.clone(),
            repository: self.origin.repository.clone(),
            source: e,
        };
        *self.failure.lock() = Some((
            Instant::now(),
            crate::chain::ErrorChain::chain(&err).to_string(),
        ));
        err
    }

    /// Brings snarfs `first..=last` of `vol` in if they are not local: each missing one is
    /// fetched once (concurrent callers wait for it), written, synced and marked. Takes no
    /// lock of the engine, so it may be called under any of them.
    pub fn ensure_local(&self, vol: &Volume, first: u64, last: u64) -> Result<()> {
        let last = last.min(self.count.saturating_sub(1));
        if self.is_done() || first > last {
            return Ok(());
        }
        let mut i = first;
        while let Some(k) = self.next_missing(i).filter(|&k| k <= last) {
            self.bring_in(vol, &[k])?;
            i = k + 1;
        }
        Ok(())
    }

    /// [`Restore::ensure_local`] for a read of snarfs `first..=last`, with readahead: a
    /// reader whose reads come in ascending order gets the missing snarfs after them
    /// fetched in the same batch (one sync for all), in a window that doubles with each
    /// sequential read up to [`READAHEAD_BYTES`]. A batch is fetched only when a missing
    /// snarf lies within half a window of the read, so a reader pays one fetch for every
    /// half window it moves, not one per read. Readahead that fails costs the reader
    /// nothing: only the snarfs it asked for decide the answer.
    pub fn ensure_read(&self, vol: &Volume, first: u64, last: u64) -> Result<()> {
        if self.is_done() || first > last || first >= self.count {
            return Ok(());
        }
        let max = (READAHEAD_BYTES >> vol.snarf_shift()).max(1);
        let window = self.sequential(first, last, max);
        if window > 0 {
            let near = last.saturating_add(window / 2).min(self.count - 1);
            if self.next_missing(first).is_some_and(|k| k <= near) {
                let end = last.saturating_add(window).min(self.count - 1);
                let mut batch = Vec::new();
                let mut i = first;
                while let Some(k) = self.next_missing(i).filter(|&k| k <= end) {
                    batch.push(k);
                    i = k + 1;
                }
                let asked = batch.iter().filter(|&&k| k <= last).count() as u64;
                match self.bring_in(vol, &batch) {
                    Ok(n) => {
                        self.read_ahead
                            .fetch_add((n as u64).saturating_sub(asked), Ordering::Relaxed);
                    }
                    Err(e) => {
                        if (first..=last.min(self.count - 1)).any(|k| !self.is_local(k)) {
                            return Err(e);
                        }
                    }
                }
            }
        }
        // Whatever the batch skipped (being fetched by someone else) is waited for here.
        self.ensure_local(vol, first, last)
    }

    /// Records a read of `first..=last` and returns the readahead window of its stream
    /// (0 for a read that does not follow one it knows).
    fn sequential(&self, first: u64, last: u64, max: u64) -> u64 {
        let mut guard = self.streams.lock();
        let (tick, streams) = &mut *guard;
        *tick += 1;
        let now = *tick;
        // A read that continues a stream starts in the snarf it last read or the next.
        if let Some(s) = streams
            .iter_mut()
            .find(|s| s.used && (first == s.last || first == s.last + 1) && last >= s.last)
        {
            s.tick = now;
            if last == s.last {
                // Still inside the snarf it read last: no step forward, the window stays
                // (a reader going over one snarf again and again never grows one).
                return s.window;
            }
            s.window = if s.window == 0 {
                FIRST_WINDOW.min(max)
            } else {
                (s.window * 2).min(max)
            };
            s.last = last;
            return s.window;
        }
        let slot = streams
            .iter_mut()
            .min_by_key(|s| (s.used, s.tick))
            .expect("STREAMS > 0");
        *slot = Stream {
            last,
            window: 0,
            tick: now,
            used: true,
        };
        0
    }

    /// Fetches `snarfs` (ascending) that are still missing, or waits for whoever fetches
    /// them; returns once each is local or an error says why not.
    fn bring_in(&self, vol: &Volume, snarfs: &[u64]) -> Result<usize> {
        let mut mine = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for &k in snarfs {
                loop {
                    if self.is_local(k) {
                        break;
                    }
                    if inflight.insert(k) {
                        mine.push(k);
                        break;
                    }
                    if snarfs.len() > 1 {
                        // The background copy skips what a reader is fetching.
                        break;
                    }
                    self.fetched_one.wait(&mut inflight);
                }
            }
        }
        let result = self.fetch_claimed(vol, &mine);
        {
            let mut inflight = self.inflight.lock();
            for k in &mine {
                inflight.remove(k);
            }
        }
        self.fetched_one.notify_all();
        result.map(|()| mine.len())
    }

    /// Fetches the claimed `snarfs`, writes those still missing, syncs, marks them.
    fn fetch_claimed(&self, vol: &Volume, snarfs: &[u64]) -> Result<()> {
        if snarfs.is_empty() {
            return Ok(());
        }
        let source = self.source.read().clone();
        let Some(source) = source else {
            return Err(self.fail(
                snarfs[0],
                "the mount has not opened the backup's repository (yet)".into(),
            ));
        };
        let size = vol.snarf_size() as usize;
        let shift = vol.snarf_shift();
        let mut buf = vec![0u8; size];
        let mut written = Vec::with_capacity(snarfs.len());
        let mut outcome = Ok(());
        for &k in snarfs {
            buf.fill(0);
            if let Err(e) = source.fetch(k, &mut buf) {
                outcome = Err(self.fail(k, e));
                break;
            }
            let _stripe = self.stripe(k).lock();
            if self.is_local(k) {
                // A whole-snarf write got there first: its bytes win.
                continue;
            }
            let at = k << shift;
            let wrote = if buf.iter().all(|&b| b == 0) {
                vol.zero_range(at, size as u64)
            } else {
                vol.pwrite(&buf, at)
            };
            if let Err(e) = wrote {
                outcome = Err(e);
                break;
            }
            written.push(k);
        }
        if written.is_empty() {
            return outcome;
        }
        // The bytes are durable before any bit says they are local.
        vol.sync_data()?;
        for &k in &written {
            self.set_local(k);
        }
        self.fetched
            .fetch_add(written.len() as u64, Ordering::Relaxed);
        self.commit(&written)?;
        if outcome.is_ok() {
            *self.failure.lock() = None;
        }
        outcome
    }

    /// A write of `data` at `offset` into `vol`: snarfs it covers only in part are brought
    /// in first (before the caller takes the engine's locks).
    pub fn prepare_write(&self, vol: &Volume, offset: u64, len: u64) -> Result<()> {
        if self.is_done() || len == 0 {
            return Ok(());
        }
        let shift = vol.snarf_shift();
        let mask = vol.snarf_size() - 1;
        let first = offset >> shift;
        let last = (offset + len - 1) >> shift;
        if offset & mask != 0 {
            self.ensure_local(vol, first, first)?;
        }
        if (offset + len) & mask != 0 {
            self.ensure_local(vol, last, last)?;
        }
        Ok(())
    }

    /// Issues a write of `data` at `offset` (the caller holds the engine's locks and has
    /// called [`Restore::prepare_write`]): whole snarfs that are not local are marked, so no
    /// fetch later overwrites them, durably in the file before this returns.
    pub fn write(&self, vol: &Volume, offset: u64, data: &[u8]) -> Result<()> {
        if self.is_done() || data.is_empty() {
            return vol.pwrite(data, offset);
        }
        let shift = vol.snarf_shift();
        let first = offset >> shift;
        let last = (offset + data.len() as u64 - 1) >> shift;
        let fresh: Vec<u64> = (first..=last.min(self.count.saturating_sub(1)))
            .filter(|&k| !self.is_local(k))
            .collect();
        if fresh.is_empty() {
            return vol.pwrite(data, offset);
        }
        {
            let mut held: Vec<_> = fresh
                .iter()
                .map(|&k| (k % STRIPES as u64) as usize)
                .collect();
            held.sort_unstable();
            held.dedup();
            let _guards: Vec<_> = held.iter().map(|&s| self.stripes[s].lock()).collect();
            vol.pwrite(data, offset)?;
            for &k in &fresh {
                self.set_local(k);
            }
        }
        vol.sync_data()?;
        self.commit(&fresh)
    }

    /// One step of the background copy: fetches up to `batch` missing snarfs from `from`
    /// on, in ascending order, skipping those local or being fetched. Returns where the
    /// next step starts (`None`: nothing is missing past `from`) and how many it fetched.
    pub fn copy_next(&self, vol: &Volume, from: u64, batch: usize) -> Result<Option<u64>> {
        let Some(start) = self.next_missing(from) else {
            return Ok(None);
        };
        let mut run = Vec::with_capacity(batch);
        let mut i = start;
        while run.len() < batch {
            match self.next_missing(i) {
                Some(k) if k < start + 4 * batch as u64 => {
                    run.push(k);
                    i = k + 1;
                }
                _ => break,
            }
        }
        let next = run.last().map_or(start + 1, |k| k + 1);
        self.bring_in(vol, &run)?;
        self.sync()?;
        Ok(Some(next))
    }

    /// Ends the restore once every snarf is local: the bitmap file goes (durably), and the
    /// volume is an ordinary one from then on. Returns whether it ended.
    pub fn finish(&self) -> Result<bool> {
        if self.is_done() {
            return Ok(true);
        }
        if self.missing() > 0 || !self.inflight.lock().is_empty() {
            return Ok(false);
        }
        let pages = self.pages.lock();
        if pages
            .durable
            .iter()
            .map(|w| w.count_ones() as u64)
            .sum::<u64>()
            < self.count
        {
            return Ok(false);
        }
        durable::remove(&self.path)?;
        self.done.store(true, Ordering::Release);
        drop(pages);
        Ok(true)
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening the restored bitmap {}", path.display()), e))
}
