//! The write-intent bitmap of one volume, after Linux md's: one bit per *region* of
//! [`REGION_SNARFS`] snarfs, set durably on disk before the first write into the region is
//! issued and cleared lazily once a backup committed. After an unclean stop, when the
//! stamps kept in memory are gone, the regions whose bit is set are the only ones that may
//! have changed since the bitmap's checkpoint, so the next incremental backup reads those
//! and nothing else.
//!
//! # On-disk layout (`state/intent/ID`, the volume id in 16 hex digits)
//!
//! The file is a sequence of 4096-byte pages, all little-endian.
//!
//! Page 0, the header (96 bytes used, the rest zero):
//!
//! ```text
//!  0  8  magic "SNINTNT1"
//!  8  4  format version (1)
//! 12  4  log2 of the snarf size
//! 16  4  log2 of the snarfs per region (10)
//! 20  4  zero
//! 24  8  volume id
//! 32  8  session: the store session that last wrote the header
//! 40  8  since: every write with an epoch past it is in a region whose bit is set
//! 48  8  the volume file's length as snarf last set it
//! 56  8  the length before that (a cut between recording a resize and making it)
//! 64 32  blake3 of bytes 0..64
//! ```
//!
//! Page `1 + p` holds the bits of regions `p * REGIONS_PER_PAGE ..` (bit `r % 8` of byte
//! `64 + r / 8` of the page is region `r`):
//!
//! ```text
//!  0  8  page number p
//!  8 32  blake3 of (volume id, p, bytes 64..4096)
//! 40 24  zero
//! 64 ..  the bits
//! ```
//!
//! Each page is written whole with one pwrite, so a torn page fails its hash and the file is
//! then not trusted (tracking is lost, never silently wrong). Order: a region's bit is durable
//! (pwrite + fdatasync, group-committed: one fdatasync for every writer waiting) before the
//! first write into it is issued; a later `since` is durable before any bit it allows to be
//! cleared is cleared, so the file always holds at least every region written since `since`.
//!
//! # Size
//!
//! Regions are [`REGION_SNARFS`] (1024) snarfs: 64 MiB with the default 64 KiB snarfs, the
//! chunk mdadm picks for large arrays. A 1 TiB volume has 16384 regions: 2 KiB of bits, one
//! page on disk (8 KiB with the header) and 8 KiB of memory (a page of bits in memory holds
//! both the bits and the durable copy); the largest volume a store serves (2^28 snarfs) has
//! 262144 regions, 9 pages. A region costs one extra fdatasync the first time it is written
//! after a backup: a random 4 KiB writer with fdatasync pays it once per 16384 blocks of a
//! region, so under 5% as soon as it wrote 20 blocks per region it touched (a 256 MiB
//! volume has 4 regions: 4 extra fdatasyncs per backup cycle).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::{Condvar, Mutex};

use super::{Error, Result};
use crate::sys::durable;

/// log2 of the snarfs per region.
pub const REGION_SHIFT: u32 = 10;
/// Snarfs per region.
pub const REGION_SNARFS: u64 = 1 << REGION_SHIFT;
pub use super::bitpage::PAGE;
use super::bitpage::{le32, le64, page_bytes, page_ok, BITS_AT, WORDS};
/// Regions one bitmap page holds.
pub const REGIONS_PER_PAGE: u64 = ((PAGE - BITS_AT) * 8) as u64;
/// Most bitmap pages a volume needs (2^28 snarfs).
pub const MAX_PAGES: usize =
    ((super::volume::MAX_SNARFS >> REGION_SHIFT).div_ceil(REGIONS_PER_PAGE)) as usize;
const MAGIC: &[u8; 8] = b"SNINTNT1";
const VERSION: u32 = 1;

/// A commit ticket: the write it protects may be issued once [`Intent::wait`] of it returns.
pub type Ticket = u64;

/// The region of snarf `index`.
pub fn region_of(index: u64) -> u64 {
    index >> REGION_SHIFT
}

/// What a bitmap file says, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Every write past this epoch is in a region listed in `dirty`.
    pub since: u64,
    /// The regions whose bit is set, ascending.
    pub dirty: Vec<u64>,
}

/// What must match for a bitmap file to be trusted.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The volume's id.
    pub id: u64,
    /// log2 of the snarf size.
    pub snarf_shift: u32,
    /// The volume file's length now.
    pub file_len: u64,
    /// The session being opened (the file must not be from a later one; it is from this
    /// one if an earlier try of this open was cut short).
    pub last_session: u64,
}

/// One page of bits in memory: what writers set, and what is durable on disk.
struct Bits {
    dirty: [AtomicU64; WORDS],
    durable: [AtomicU64; WORDS],
}

impl Bits {
    fn new() -> Box<Bits> {
        Box::new(Bits {
            dirty: std::array::from_fn(|_| AtomicU64::new(0)),
            durable: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }
}

/// The header fields kept in memory.
#[derive(Debug, Clone, Copy)]
struct Header {
    session: u64,
    since: u64,
    len: u64,
    prev_len: u64,
}

/// The group committer's state.
struct Commit {
    header: Header,
    /// Tickets handed out so far.
    issued: Ticket,
    /// Every ticket up to this is durable.
    durable: Ticket,
    /// Someone is writing and syncing now.
    leading: bool,
    /// Regions set in memory and not yet durable, with the ticket that makes them so.
    pending: Vec<(u64, Ticket)>,
    /// Bitmap pages whose disk copy is behind memory (bit p for page p).
    stale_pages: u32,
    /// The header's disk copy is behind memory.
    stale_header: bool,
    /// Bitmap pages the file holds (a growing volume's new pages are written, zeros or not,
    /// before it grows, so a short file is always damage).
    on_disk: usize,
    /// Tickets up to this failed and the file could not be removed either.
    failed_upto: Ticket,
    /// What failed, and its errno.
    failure: Option<(String, i32)>,
}

/// The write-intent bitmap of one volume; see the module documentation.
pub struct Intent {
    path: PathBuf,
    id: u64,
    snarf_shift: u32,
    file: Mutex<Option<File>>,
    pages: [OnceLock<Box<Bits>>; MAX_PAGES],
    commit: Mutex<Commit>,
    committed: Condvar,
    /// Set once the file could not be written and was removed: nothing is tracked on disk
    /// any more, so an unclean stop from here on loses tracking (the file is missing).
    given_up: AtomicBool,
    /// Regions found dirty at an unclean open: their snarfs may have changed after `since`
    /// and before `recovered_at` without a stamp saying so.
    recovered: Vec<u64>,
    /// The first epoch of the session that recovered them (0: none recovered).
    recovered_at: u64,
}

impl std::fmt::Debug for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intent")
            .field("path", &self.path)
            .field("since", &self.since())
            .field("dirty", &self.dirty_count())
            .finish()
    }
}

/// Why a bitmap file is not trusted, naming it.
fn bad(path: &Path, why: impl std::fmt::Display) -> String {
    format!("its write-intent bitmap {} {why}", path.display())
}

fn header_bytes(id: u64, snarf_shift: u32, h: &Header) -> [u8; PAGE] {
    let mut b = [0u8; PAGE];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&snarf_shift.to_le_bytes());
    b[16..20].copy_from_slice(&REGION_SHIFT.to_le_bytes());
    b[24..32].copy_from_slice(&id.to_le_bytes());
    b[32..40].copy_from_slice(&h.session.to_le_bytes());
    b[40..48].copy_from_slice(&h.since.to_le_bytes());
    b[48..56].copy_from_slice(&h.len.to_le_bytes());
    b[56..64].copy_from_slice(&h.prev_len.to_le_bytes());
    let hash = blake3::hash(&b[0..64]);
    b[64..96].copy_from_slice(hash.as_bytes());
    b
}

/// Pages of bits needed for `regions` regions.
fn pages_for(regions: u64) -> usize {
    regions.div_ceil(REGIONS_PER_PAGE) as usize
}

/// Regions of a volume file of `len` bytes.
pub fn regions_for(len: u64, snarf_shift: u32) -> u64 {
    len.div_ceil(1u64 << snarf_shift).div_ceil(REGION_SNARFS)
}

/// Reads and checks the bitmap file at `path` (see [`Expect`]); the error says why it is not
/// trusted, naming the file.
pub fn load(path: &Path, expect: &Expect) -> std::result::Result<Loaded, String> {
    let data = match std::fs::metadata(path) {
        Ok(m) if m.len() > ((1 + MAX_PAGES) * PAGE) as u64 => {
            return Err(bad(
                path,
                format_args!("is {} bytes long, more than any volume needs", m.len()),
            ))
        }
        Ok(_) => {
            std::fs::read(path).map_err(|e| bad(path, format_args!("cannot be read ({e})")))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(bad(path, "is missing")),
        Err(e) => return Err(bad(path, format_args!("cannot be read ({e})"))),
    };
    if data.len() < PAGE || data.len() % PAGE != 0 {
        return Err(bad(
            path,
            format_args!("is truncated ({} bytes, not whole pages)", data.len()),
        ));
    }
    let h = &data[..PAGE];
    if &h[0..8] != MAGIC {
        return Err(bad(path, "does not start with the bitmap's magic"));
    }
    if blake3::hash(&h[0..64]).as_bytes() != &h[64..96] {
        return Err(bad(path, "has a damaged header (its hash does not match)"));
    }
    if le32(h, 8) != VERSION {
        return Err(bad(
            path,
            format_args!("is of format version {}, not {VERSION}", le32(h, 8)),
        ));
    }
    if le32(h, 12) != expect.snarf_shift || le32(h, 16) != REGION_SHIFT {
        return Err(bad(path, "was written for another snarf or region size"));
    }
    if le64(h, 24) != expect.id {
        return Err(bad(
            path,
            format_args!("belongs to volume {:016x}", le64(h, 24)),
        ));
    }
    let session = le64(h, 32);
    if session > expect.last_session {
        return Err(bad(
            path,
            format_args!("was written by session {session}, which this store never reached"),
        ));
    }
    let (len, prev) = (le64(h, 48), le64(h, 56));
    if expect.file_len != len && expect.file_len != prev {
        return Err(format!(
            "the volume file is {} bytes long, but snarf last made it {len} bytes: it was changed while the store was not open (its write-intent bitmap {} cannot speak for it)",
            expect.file_len,
            path.display()
        ));
    }
    let regions = regions_for(expect.file_len, expect.snarf_shift);
    let needed = pages_for(regions).min(MAX_PAGES);
    let have = data.len() / PAGE - 1;
    if have < needed {
        return Err(bad(
            path,
            format_args!("is truncated ({have} pages of bits, {needed} needed)"),
        ));
    }
    let mut dirty = Vec::new();
    for p in 0..have {
        let b = &data[(1 + p) * PAGE..(2 + p) * PAGE];
        if !page_ok(expect.id, p as u64, b) {
            return Err(bad(
                path,
                format_args!("has a damaged page {} (torn or overwritten)", p + 1),
            ));
        }
        for (k, byte) in b[BITS_AT..].iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let r = p as u64 * REGIONS_PER_PAGE + (k * 8 + bit) as u64;
                    if r < regions {
                        dirty.push(r);
                    }
                }
            }
        }
    }
    Ok(Loaded {
        since: le64(h, 40),
        dirty,
    })
}

impl Intent {
    /// A bitmap for volume `id` at `path`, written whole and durably now (replacing any file
    /// there): it covers writes past `since` and has the bits of `dirty` set; `recovered` of
    /// them were found at an unclean open that began at epoch `recovered_at`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        path: PathBuf,
        id: u64,
        snarf_shift: u32,
        session: u64,
        since: u64,
        file_len: u64,
        dirty: &[u64],
        recovered: Vec<u64>,
        recovered_at: u64,
    ) -> Result<Intent> {
        let intent = Intent {
            path,
            id,
            snarf_shift,
            file: Mutex::new(None),
            pages: std::array::from_fn(|_| OnceLock::new()),
            commit: Mutex::new(Commit {
                header: Header {
                    session,
                    since,
                    len: file_len,
                    prev_len: file_len,
                },
                issued: 0,
                durable: 0,
                leading: false,
                pending: Vec::new(),
                stale_pages: 0,
                stale_header: false,
                on_disk: 0,
                failed_upto: 0,
                failure: None,
            }),
            committed: Condvar::new(),
            given_up: AtomicBool::new(false),
            recovered,
            recovered_at,
        };
        for &r in dirty {
            if let Some(bits) = intent.bits(r, true) {
                let (w, m) = word(r);
                bits.dirty[w].fetch_or(m, Ordering::Relaxed);
                bits.durable[w].fetch_or(m, Ordering::Relaxed);
            }
        }
        let image = {
            let mut c = intent.commit.lock();
            let mut image = header_bytes(id, snarf_shift, &c.header).to_vec();
            // A volume file made huge behind snarf's back is not served past MAX_SNARFS, so
            // its bitmap never needs more than MAX_PAGES (an unclamped EiB file wanted GiBs).
            let pages = pages_for(regions_for(file_len, snarf_shift))
                .min(MAX_PAGES)
                .max(intent.used_pages());
            for p in 0..pages {
                image.extend_from_slice(&intent.page_image(p));
            }
            c.on_disk = pages;
            image
        };
        durable::replace(&intent.path, &image, durable::PRIVATE)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&intent.path)
            .map_err(|e| Error::io(format!("opening {}", intent.path.display()), e))?;
        *intent.file.lock() = Some(file);
        Ok(intent)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every write past this epoch is in a dirty region.
    pub fn since(&self) -> u64 {
        self.commit.lock().header.since
    }

    /// The regions found dirty at an unclean open, and the epoch that open began at.
    pub fn recovered(&self) -> (&[u64], u64) {
        (&self.recovered, self.recovered_at)
    }

    /// Number of regions dirty now.
    pub fn dirty_count(&self) -> u64 {
        self.pages
            .iter()
            .filter_map(|p| p.get())
            .map(|b| {
                b.dirty
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Whether tracking on disk was given up (the file could not be written and is gone).
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    fn used_pages(&self) -> usize {
        self.pages
            .iter()
            .rposition(|p| p.get().is_some())
            .map_or(0, |p| p + 1)
    }

    /// The page of bits holding region `r`, made if `make`.
    fn bits(&self, r: u64, make: bool) -> Option<&Bits> {
        let p = (r / REGIONS_PER_PAGE) as usize;
        let slot = self.pages.get(p)?;
        if make {
            Some(slot.get_or_init(Bits::new))
        } else {
            slot.get().map(|b| &**b)
        }
    }

    /// The bytes of bitmap page `p` as memory has it now.
    fn page_image(&self, p: usize) -> [u8; PAGE] {
        let mut words = [0u64; WORDS];
        if let Some(bits) = self.pages.get(p).and_then(|s| s.get()) {
            for (k, w) in bits.dirty.iter().enumerate() {
                words[k] = w.load(Ordering::Acquire);
            }
        }
        page_bytes(self.id, p as u64, &words)
    }

    /// Whether region `r`'s bit is durable on disk.
    pub fn is_durable(&self, r: u64) -> bool {
        let (w, m) = word(r);
        self.bits(r, false)
            .is_some_and(|b| b.durable[w].load(Ordering::Acquire) & m != 0)
    }

    /// Whether region `r`'s bit is set in memory.
    pub fn is_dirty(&self, r: u64) -> bool {
        let (w, m) = word(r);
        self.bits(r, false)
            .is_some_and(|b| b.dirty[w].load(Ordering::Acquire) & m != 0)
    }

    /// Sets the bits of regions `first..=last` that are not durable yet; the returned ticket
    /// (0 when all were) is waited for with [`Intent::wait`] before the write is issued.
    pub fn mark(&self, first: u64, last: u64) -> Ticket {
        if self.given_up() || (first..=last).all(|r| self.is_durable(r)) {
            return 0;
        }
        let mut c = self.commit.lock();
        let ticket = c.issued + 1;
        let mut any = false;
        for r in first..=last {
            if self.is_durable(r) {
                continue;
            }
            let Some(bits) = self.bits(r, true) else {
                continue;
            };
            let (w, m) = word(r);
            bits.dirty[w].fetch_or(m, Ordering::AcqRel);
            c.pending.push((r, ticket));
            c.stale_pages |= 1 << (r / REGIONS_PER_PAGE);
            any = true;
        }
        if !any {
            return 0;
        }
        c.issued = ticket;
        ticket
    }

    /// Records that the volume file is about to become `len` bytes long; the returned ticket
    /// is waited for before it does.
    pub fn note_len(&self, len: u64) -> Ticket {
        if self.given_up() {
            return 0;
        }
        let mut c = self.commit.lock();
        if c.header.len == len {
            return 0;
        }
        c.header.prev_len = c.header.len;
        c.header.len = len;
        c.stale_header = true;
        for p in c.on_disk..pages_for(regions_for(len, self.snarf_shift)).min(MAX_PAGES) {
            c.stale_pages |= 1 << p;
        }
        c.issued += 1;
        c.issued
    }

    /// Moves `since` to `epoch` (if later), durably; true if `since` is now `epoch`. Bits
    /// may be cleared for it only after this returns.
    pub fn advance(&self, epoch: u64) -> Result<bool> {
        if self.given_up() {
            return Ok(false);
        }
        let ticket = {
            let mut c = self.commit.lock();
            if epoch < c.header.since {
                return Ok(false);
            }
            if epoch == c.header.since {
                // Nothing to write; the bits may still be cleared for it.
                return Ok(true);
            }
            c.header.since = epoch;
            c.stale_header = true;
            c.issued += 1;
            c.issued
        };
        self.wait(ticket)?;
        Ok(!self.given_up())
    }

    /// Clears, in memory, the bits of the dirty regions `keep` says nothing was written in
    /// past `since`; they reach the disk with the next commit ([`Intent::flush`] or a
    /// mark's), lazily. Returns how many were cleared. The caller holds the volume's state
    /// exclusively, so no write into a region is under way while it is looked at.
    pub fn clear_unless(&self, mut keep: impl FnMut(u64) -> bool) -> u64 {
        let mut c = self.commit.lock();
        let mut cleared = 0;
        for (p, slot) in self.pages.iter().enumerate() {
            let Some(bits) = slot.get() else { continue };
            for w in 0..WORDS {
                let mut word_bits = bits.dirty[w].load(Ordering::Acquire);
                while word_bits != 0 {
                    let b = word_bits.trailing_zeros() as u64;
                    word_bits &= word_bits - 1;
                    let r = p as u64 * REGIONS_PER_PAGE + w as u64 * 64 + b;
                    if keep(r) {
                        continue;
                    }
                    bits.durable[w].fetch_and(!(1 << b), Ordering::AcqRel);
                    bits.dirty[w].fetch_and(!(1 << b), Ordering::AcqRel);
                    c.stale_pages |= 1 << p;
                    cleared += 1;
                }
            }
        }
        c.pending.retain(|&(r, _)| self.is_dirty(r));
        cleared
    }

    /// Writes the pages memory has changed to the file without syncing them, so a kill -9
    /// (the page cache kept) finds the bits a backup cleared; they stay stale for the next
    /// commit, which writes and syncs them again. A failure here only leaves bits set.
    pub fn write_lazily(&self) {
        let pages: Vec<(usize, [u8; PAGE])> = {
            let c = self.commit.lock();
            (0..MAX_PAGES)
                .filter(|p| c.stale_pages & (1 << p) != 0)
                .map(|p| (p, self.page_image(p)))
                .collect()
        };
        let file = self.file.lock();
        if let Some(file) = file.as_ref() {
            for (p, b) in &pages {
                if file.write_all_at(b, ((1 + p) * PAGE) as u64).is_err() {
                    return;
                }
            }
        }
    }

    /// Writes whatever memory has that the disk does not and syncs it (a clean close).
    pub fn flush(&self) -> Result<()> {
        let ticket = {
            let mut c = self.commit.lock();
            if c.stale_pages == 0 && !c.stale_header {
                return Ok(());
            }
            c.issued += 1;
            c.issued
        };
        self.wait(ticket)
    }

    /// Waits until `ticket` is durable, leading the commit (write the stale pages, one
    /// fdatasync) if nobody is. An error only when the file could neither be written nor
    /// removed: the write it protects must not be issued.
    pub fn wait(&self, ticket: Ticket) -> Result<()> {
        if ticket == 0 {
            return Ok(());
        }
        let mut c = self.commit.lock();
        loop {
            if self.given_up() || c.durable >= ticket {
                return Ok(());
            }
            if ticket <= c.failed_upto {
                let (why, errno) = c.failure.clone().unwrap_or_default();
                return Err(Error::io(why, std::io::Error::from_raw_os_error(errno)));
            }
            if c.leading {
                self.committed.wait(&mut c);
                continue;
            }
            c.leading = true;
            let target = c.issued;
            let header = c
                .stale_header
                .then(|| header_bytes(self.id, self.snarf_shift, &c.header));
            let mut pages = Vec::new();
            for p in 0..MAX_PAGES {
                if c.stale_pages & (1 << p) != 0 {
                    pages.push((p, self.page_image(p)));
                }
            }
            let stale = (c.stale_pages, c.stale_header);
            c.stale_pages = 0;
            c.stale_header = false;
            let (done, later): (Vec<_>, Vec<_>) =
                c.pending.drain(..).partition(|&(_, t)| t <= target);
            c.pending = later;
            drop(c);
            let r = self.write_and_sync(header.as_ref(), &pages);
            c = self.commit.lock();
            c.leading = false;
            match r {
                Ok(()) => {
                    c.durable = c.durable.max(target);
                    if let Some((p, _)) = pages.last() {
                        c.on_disk = c.on_disk.max(p + 1);
                    }
                    for (r, _) in done {
                        if let Some(bits) = self.bits(r, false) {
                            let (w, m) = word(r);
                            if bits.dirty[w].load(Ordering::Acquire) & m != 0 {
                                bits.durable[w].fetch_or(m, Ordering::AcqRel);
                            }
                        }
                    }
                }
                Err(e) => {
                    c.stale_pages |= stale.0;
                    c.stale_header |= stale.1;
                    c.pending.extend(done);
                    self.give_up(&mut c, target, e);
                }
            }
            self.committed.notify_all();
        }
    }

    fn write_and_sync(
        &self,
        header: Option<&[u8; PAGE]>,
        pages: &[(usize, [u8; PAGE])],
    ) -> std::io::Result<()> {
        let file = self.file.lock();
        let Some(file) = file.as_ref() else {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        };
        if let Some(h) = header {
            file.write_all_at(h, 0)?;
        }
        for (p, b) in pages {
            file.write_all_at(b, ((1 + p) * PAGE) as u64)?;
        }
        file.sync_data()
    }

    /// After a failed write or sync: the file is removed durably, so an unclean stop from
    /// here on finds it missing and declares tracking lost; writers go on. Only if even that
    /// fails do the writers waiting get the error.
    fn give_up(&self, c: &mut Commit, target: Ticket, e: std::io::Error) {
        let why = format!(
            "the write-intent bitmap {} could not be written ({e})",
            self.path.display()
        );
        match durable::remove(&self.path) {
            Ok(_) => {
                log::error!("{why}; it was removed, so changed-snarf tracking of this volume does not survive an unclean stop until the store is next opened");
                self.given_up.store(true, Ordering::Release);
                *self.file.lock() = None;
            }
            Err(r) => {
                log::error!("{why}, nor removed ({r}); writes into regions not yet marked fail until it can be");
                c.failed_upto = c.failed_upto.max(target);
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                c.failure = Some((format!("{why}, nor removed ({r})"), errno));
            }
        }
    }
}

/// The word and mask of region `r` within its page.
fn word(r: u64) -> (usize, u64) {
    let k = r % REGIONS_PER_PAGE;
    ((k / 64) as usize, 1 << (k % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(len: u64) -> Expect {
        Expect {
            id: 7,
            snarf_shift: 12,
            file_len: len,
            last_session: 3,
        }
    }

    fn made(dir: &Path, len: u64) -> Intent {
        Intent::create(dir.join("i"), 7, 12, 3, 100, len, &[], Vec::new(), 0).unwrap()
    }

    #[test]
    fn marks_are_on_disk_once_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let len = 40_000 * REGION_SNARFS * 4096;
        let i = made(dir.path(), len);
        assert_eq!(
            load(&dir.path().join("i"), &expect(len)).unwrap().dirty,
            Vec::<u64>::new()
        );
        let t = i.mark(3, 4);
        assert!(t > 0 && !i.is_durable(3));
        let t2 = i.mark(39_000, 39_000);
        i.wait(t).unwrap();
        i.wait(t2).unwrap();
        assert!(i.is_durable(3) && i.is_durable(39_000));
        assert_eq!(i.mark(3, 4), 0, "durable bits need no commit");
        let got = load(&dir.path().join("i"), &expect(len)).unwrap();
        assert_eq!(
            got,
            Loaded {
                since: 100,
                dirty: vec![3, 4, 39_000]
            }
        );
    }

    #[test]
    fn clearing_waits_for_the_later_since_and_reaches_disk_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let len = 8 * REGION_SNARFS * 4096;
        let i = made(dir.path(), len);
        i.wait(i.mark(1, 2)).unwrap();
        assert!(i.advance(200).unwrap());
        assert!(!i.advance(150).unwrap(), "since never goes back");
        assert!(i.advance(200).unwrap());
        let on_disk = load(&dir.path().join("i"), &expect(len)).unwrap();
        assert_eq!(
            on_disk,
            Loaded {
                since: 200,
                dirty: vec![1, 2]
            }
        );
        assert_eq!(i.clear_unless(|r| r == 2), 1);
        assert_eq!(
            load(&dir.path().join("i"), &expect(len)).unwrap().dirty,
            vec![1, 2]
        );
        i.flush().unwrap();
        assert_eq!(
            load(&dir.path().join("i"), &expect(len)).unwrap().dirty,
            vec![2]
        );
        assert_eq!(i.dirty_count(), 1);
    }

    #[test]
    fn a_damaged_truncated_or_foreign_file_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i");
        let len = 8 * REGION_SNARFS * 4096;
        let i = made(dir.path(), len);
        i.wait(i.mark(5, 5)).unwrap();
        drop(i);
        let good = std::fs::read(&path).unwrap();
        let mut e = expect(len);
        assert!(load(&path, &e).is_ok());
        e.file_len = len + 1;
        assert!(load(&path, &e)
            .unwrap_err()
            .contains("changed while the store was not open"));
        e = expect(len);
        e.id = 8;
        assert!(load(&path, &e).unwrap_err().contains("belongs to volume"));
        e = expect(len);
        e.last_session = 2;
        assert!(load(&path, &e).unwrap_err().contains("never reached"));
        for (cut, want) in [
            (PAGE, "truncated"),
            (PAGE + 100, "truncated"),
            (100, "truncated"),
        ] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let why = load(&path, &expect(len)).unwrap_err();
            assert!(
                why.contains(want) && why.contains(&path.display().to_string()),
                "{why}"
            );
        }
        let mut flipped = good.clone();
        flipped[PAGE + BITS_AT] ^= 1 << 5;
        std::fs::write(&path, &flipped).unwrap();
        assert!(load(&path, &expect(len))
            .unwrap_err()
            .contains("damaged page"));
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(load(&path, &expect(len))
            .unwrap_err()
            .contains("damaged header"));
        std::fs::remove_file(&path).unwrap();
        assert!(load(&path, &expect(len)).unwrap_err().contains("missing"));
    }

    #[test]
    fn a_resize_is_recorded_with_the_length_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i");
        let i = made(dir.path(), 4096);
        i.wait(i.note_len(3 * REGION_SNARFS * 4096)).unwrap();
        assert!(
            load(&path, &expect(4096)).is_ok(),
            "a cut before the resize was made"
        );
        assert!(load(&path, &expect(3 * REGION_SNARFS * 4096)).is_ok());
        assert!(load(&path, &expect(8192)).is_err());
    }

    #[test]
    fn the_largest_volume_fits_the_pages() {
        let regions = super::super::volume::MAX_SNARFS >> REGION_SHIFT;
        assert_eq!(regions, 262_144);
        assert_eq!(MAX_PAGES, 9);
        // A 1 TiB volume of 64 KiB snarfs: one page of bits.
        assert_eq!(pages_for(regions_for(1 << 40, 16)), 1);
    }
}
