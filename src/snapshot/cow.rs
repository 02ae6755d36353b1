//! The pre-image store on disk, `STORE/cow/preimages`: one file of snarf-sized slots, the
//! model being dm-snapshot's persistent exception store. It holds both kinds of pre-image:
//!
//! * *durable* ones, for persistent snapshots: the slot's data and a 64-byte *record*
//!   (volume, snarf, epochs, a hash of the data) are made durable, by one `fdatasync`
//!   that serves every writer waiting (group commit), before the live write they protect
//!   is issued; after a crash [`CowFile::open`] finds them again;
//! * *spilled* ones, for volatile snapshots, past the memory budget: data only, no record,
//!   never synced; gone at the next open.
//!
//! Layout: two header pages (written in turn, so one is always whole), then groups of 64
//! slots, each a page of their 64 records followed by their data:
//!
//! ```text
//! 0      header A  (4 KiB)      magic, snarf size, write counter, sealed, clean, blake3
//! 4 KiB  header B
//! 8 KiB  group 0: records of slots 0..64 (4 KiB), then slots 0..64 (64 x snarf size)
//!        group 1: ...
//! ```
//!
//! A record: volume u64, snarf u64, first and last epoch u64, 16 bytes of blake3 of the
//! data, the commit ticket u64, kind u8 (1 data, 2 all zeros), 3 zero bytes, 4 bytes of
//! blake3 over the rest. A record whose check fails is no record.
//!
//! Which records can be trusted after a crash: each writer takes a *ticket* before it
//! writes its record and data, and says when they are written; the leader of a commit
//! syncs everything written up to the lowest ticket still being written, and writes into
//! the header, before its sync, the highest ticket the previous sync made durable
//! (*sealed*). So a record with a ticket up to the header's sealed value is whole, and only
//! the last commits' records (a ticket past it) need their data checked against their hash
//! at the next open. A clean close seals everything.
//!
//! Slots are taken lowest first, so the file stays about as long as what is held. What a
//! commit costs is mostly whether its `fdatasync` has metadata to write: a sync of bytes
//! that overwrite written blocks is a plain device write, one of bytes that extend the
//! file (or fill a hole) is a journal commit, several times dearer. So the file is kept
//! written ahead of what is in use:
//!
//! * a *reserve*: a thread of the file's own writes zeros past the highest slot in use, up
//!   to [`RESERVE_BYTES`] ahead, and syncs them, off the write path (a persistent snapshot
//!   being taken writes it first, [`CowFile::prime`]); zeros are no record, so after a
//!   crash reserve slots are empty slots. It never takes the file past the slots the disk
//!   budget allows, and is written only while the filesystem keeps 16 MiB free past it;
//! * freed slots stay written: when nothing is held slots are taken from the first again,
//!   and the bytes go back to the filesystem only when no pre-image was taken for
//!   [`SHRINK_AFTER`] (down to the headers when nothing is held, else to what is held and
//!   the reserve), or at a clean close ([`CowFile::seal`]: to what is held).
//!
//! A write into the file that fails (full disk, failing disk) makes it act as full for
//! [`RETRY_AFTER`], so writers are throttled and, past the limit, a snapshot is broken with
//! the failure as its reason; meanwhile every byte not held goes back to the filesystem
//! (the reserve too), as it does at once when the last slot held is freed then.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Error, Result};
use crate::chain::ErrorChain;
use crate::store::VolumeId;

/// How long a failed write keeps the file closed before one more try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Name of the file in `STORE/cow/`.
pub const FILE: &str = "preimages";
/// Bytes of written, synced, empty slots kept ahead of the highest slot in use (see the
/// module documentation), at most the budget.
pub const RESERVE_BYTES: u64 = 16 << 20;
/// Free space the filesystem must keep past a reserve being written, so the reserve never
/// takes the room live writes need.
const RESERVE_MARGIN: u64 = 16 << 20;
/// Bytes of zeros written under the slot lock at a time while a reserve is filled.
const FILL_PIECE: u64 = 1 << 20;
/// How long the file must see no new pre-image before it gives back the bytes past what is
/// held (all of them when nothing is).
#[cfg(not(test))]
pub const SHRINK_AFTER: Duration = Duration::from_secs(30);
#[cfg(test)]
pub const SHRINK_AFTER: Duration = Duration::from_secs(2);
/// How often the filler looks whether the file can shrink.
const TICK: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(5)
};

const MAGIC: &[u8; 8] = b"SNARFCOW";
const VERSION: u32 = 1;
const PAGE: u64 = 4096;
const HEADERS: u64 = 2 * PAGE;
const PER_GROUP: u64 = 64;
/// Bytes of one record.
pub const RECORD: usize = 64;
const KIND_DATA: u8 = 1;
const KIND_ZERO: u8 = 2;

/// Zeros for the end of a snarf past the end of its volume.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What a durable pre-image is, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The volume.
    pub vol: VolumeId,
    /// The snarf.
    pub snarf: u64,
    /// First epoch whose snapshots see the contents.
    pub first: u64,
    /// Last epoch whose snapshots see them.
    pub last: u64,
    /// The contents are all zeros (the slot holds no data).
    pub zero: bool,
}

/// A record found at open, with its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The slot.
    pub slot: u32,
    /// What it holds.
    pub record: Record,
}

/// What [`CowFile::open`] found besides the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records whose data did not match their hash: writes that a crash cut short, whose
    /// live writes were never issued.
    pub torn: u64,
    /// Whether the file was closed cleanly (every record sealed).
    pub clean: bool,
}

/// A commit ticket: wait for it with [`CowFile::wait`] before issuing the write it guards.
pub type Ticket = u64;

fn encode(r: &Record, hash: &[u8; 16], ticket: Ticket) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..8].copy_from_slice(&r.vol.to_le_bytes());
    b[8..16].copy_from_slice(&r.snarf.to_le_bytes());
    b[16..24].copy_from_slice(&r.first.to_le_bytes());
    b[24..32].copy_from_slice(&r.last.to_le_bytes());
    b[32..48].copy_from_slice(hash);
    b[48..56].copy_from_slice(&ticket.to_le_bytes());
    b[56] = if r.zero { KIND_ZERO } else { KIND_DATA };
    let check = blake3::hash(&b[..60]);
    b[60..64].copy_from_slice(&check.as_bytes()[..4]);
    b
}

fn decode(b: &[u8]) -> Option<(Record, [u8; 16], Ticket)> {
    let check = blake3::hash(&b[..60]);
    if b[60..64] != check.as_bytes()[..4] || b[57..60] != [0, 0, 0] {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let zero = match b[56] {
        KIND_DATA => false,
        KIND_ZERO => true,
        _ => return None,
    };
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&b[32..48]);
    let r = Record {
        vol: word(0),
        snarf: word(8),
        first: word(16),
        last: word(24),
        zero,
    };
    (r.first <= r.last).then_some((r, hash, word(48)))
}

/// The 16 bytes of blake3 a record keeps of its data.
pub fn data_hash(data: &[u8]) -> [u8; 16] {
    let mut h = [0u8; 16];
    h.copy_from_slice(&blake3::hash(data).as_bytes()[..16]);
    h
}

#[derive(Debug, Default)]
struct Slots {
    /// Freed slots below `next`, lowest first.
    free: BinaryHeap<Reverse<u32>>,
    /// Slots `next..` have never been handed out since the file last emptied.
    next: u32,
    /// Slots in use that hold data (what the disk budget counts).
    data: u32,
    /// Slots in use for all-zero durable pre-images (a record, no data).
    zero: u32,
    /// The last failed write: when, and what the OS said.
    failed: Option<(Instant, String)>,
    /// Slots of discarded durable pre-images (`true`: with data) whose records were erased
    /// but maybe not durably yet: still counted as in use, handed out again only after
    /// the next sync, so no crash can pair their old record with new data.
    quarantine: Vec<(u32, bool)>,
    /// Bytes from the start of the file that are written (no hole): slots there are
    /// overwritten in place, and their sync needs no metadata. The reserve ends here.
    filled: u64,
    /// When a slot was last handed out (`None`: not since the open).
    last_use: Option<Instant>,
    /// Whether [`CowFile::adopt`] ran: before it, the file holds records not yet judged,
    /// so it is neither grown nor shrunk.
    adopted: bool,
}

impl Slots {
    fn closed(&self) -> bool {
        self.failed
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < RETRY_AFTER)
    }
}

#[derive(Debug, Default)]
struct CommitState {
    issued: Ticket,
    /// Tickets taken whose record and data are still being written.
    writing: BTreeSet<Ticket>,
    /// Every ticket up to this is durable.
    durable: Ticket,
    /// Tickets up to this were in a sync that failed: never durable.
    failed_upto: Ticket,
    failure: Option<String>,
    leading: bool,
    /// Header writes so far (the next goes to copy `counter % 2`).
    counter: u64,
}

/// Where the slots and records are in the file.
#[derive(Debug, Clone, Copy)]
struct Layout {
    slot_size: u64,
}

impl Layout {
    fn group_len(self) -> u64 {
        PAGE + PER_GROUP * self.slot_size
    }

    fn record_at(self, slot: u32) -> u64 {
        let g = slot as u64 / PER_GROUP;
        HEADERS + g * self.group_len() + (slot as u64 % PER_GROUP) * RECORD as u64
    }

    fn data_at(self, slot: u32) -> u64 {
        let g = slot as u64 / PER_GROUP;
        HEADERS + g * self.group_len() + PAGE + (slot as u64 % PER_GROUP) * self.slot_size
    }

    /// Bytes a file holding slots `..n` needs: up to the end of slot `n - 1`'s data.
    fn end_of(self, n: u32) -> u64 {
        match n {
            0 => HEADERS,
            n => self.data_at(n - 1) + self.slot_size,
        }
    }
}

/// The reserve of written empty slots ahead of the highest slot in use, and the lazy
/// shrinking of the file, done off the write path by a thread of their own (see the module
/// documentation).
#[derive(Debug)]
struct Reserve {
    layout: Layout,
    /// The pre-image file (a second handle on it).
    file: File,
    path: PathBuf,
    /// Most data slots the budget allows.
    max_data: u32,
    /// Slots the reserve holds when the budget allows.
    slots_ahead: u32,
    slots: Arc<Mutex<Slots>>,
    ctl: Mutex<FillerCtl>,
    wake: Condvar,
    /// Held while the file is grown or shrunk (by the thread, or by [`CowFile::prime`]).
    busy: Mutex<()>,
}

#[derive(Debug, Default)]
struct FillerCtl {
    stop: bool,
    kicked: bool,
}

impl Reserve {
    /// The slot count the reserve reaches: `slots_ahead` past the highest in use, never
    /// past what the budget allows (data slots, and the record-only slots in use).
    fn target(&self, s: &Slots) -> u32 {
        s.next
            .saturating_add(self.slots_ahead)
            .min(self.max_data.saturating_add(s.zero))
    }

    /// Whether less than half the reserve is left.
    fn low(&self, s: &Slots) -> bool {
        let half = s
            .next
            .saturating_add(self.slots_ahead / 2)
            .min(self.target(s));
        s.filled < self.layout.end_of(half)
    }

    fn kick(&self) {
        self.ctl.lock().kicked = true;
        self.wake.notify_one();
    }

    /// Whether the filesystem keeps [`RESERVE_MARGIN`] free past `bytes` more.
    fn room_for(&self, bytes: u64) -> bool {
        match rustix::fs::fstatvfs(&self.file) {
            Ok(st) => {
                st.f_bavail.saturating_mul(st.f_frsize) >= bytes.saturating_add(RESERVE_MARGIN)
            }
            Err(_) => false,
        }
    }

    /// Writes zeros past the highest slot in use up to the reserve's end, a piece at a time
    /// under the slot lock (so no slot is handed out inside a piece being written), then
    /// syncs them. Zeros are no record, so a crash at any point leaves only empty slots.
    /// A failure (a full disk) only ends the filling: slots past the reserve are still
    /// written as they are taken, as without one.
    fn fill(&self) {
        let _busy = self.busy.lock();
        let mut wrote = false;
        loop {
            let mut s = self.slots.lock();
            if !s.adopted || s.closed() {
                break;
            }
            let from = self.layout.end_of(s.next).max(s.filled);
            let to = self.layout.end_of(self.target(&s));
            if from >= to || (!wrote && !self.room_for(to - from)) {
                break;
            }
            let len = (to - from).min(FILL_PIECE);
            if let Err(e) = write_zeros(&self.file, from, len) {
                // Nothing past `from` is in use: what of the piece was written goes back.
                let _ = self.file.set_len(from);
                log::warn!(
                    "could not keep empty slots ready in the pre-image store {}: {}",
                    self.path.display(),
                    e.chain()
                );
                break;
            }
            s.filled = from + len;
            wrote = true;
        }
        if wrote {
            if let Err(e) = self.file.sync_data() {
                log::warn!(
                    "could not sync the empty slots of the pre-image store {}: {}",
                    self.path.display(),
                    e.chain()
                );
            }
        }
    }

    /// Gives back the bytes past what is held once no pre-image was taken for
    /// [`SHRINK_AFTER`] (the reserve stays while something is held), and every byte not
    /// held while writes into the file fail.
    fn trim(&self) {
        let _busy = self.busy.lock();
        let mut s = self.slots.lock();
        if !s.adopted {
            return;
        }
        let held = s.data + s.zero > 0;
        let keep = if s.closed() {
            self.layout.end_of(s.next)
        } else if s.last_use.is_none_or(|t| t.elapsed() >= SHRINK_AFTER) {
            if held {
                self.layout.end_of(self.target(&s))
            } else {
                HEADERS
            }
        } else {
            return;
        };
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        if len > keep {
            match self.file.set_len(keep) {
                Ok(()) => s.filled = s.filled.min(keep),
                Err(e) => log::warn!(
                    "could not give back the unused space of the pre-image store {}: {}",
                    self.path.display(),
                    e.chain()
                ),
            }
        }
    }

    /// The filler thread: fills when kicked, looks for room to give back every [`TICK`].
    fn run(&self) {
        let mut ctl = self.ctl.lock();
        loop {
            if !ctl.stop && !ctl.kicked {
                self.wake.wait_for(&mut ctl, TICK);
            }
            if ctl.stop {
                return;
            }
            let kicked = std::mem::take(&mut ctl.kicked);
            drop(ctl);
            if kicked {
                self.fill();
            }
            self.trim();
            ctl = self.ctl.lock();
        }
    }
}

/// Writes `len` zero bytes at `at`.
fn write_zeros(file: &File, mut at: u64, len: u64) -> std::io::Result<()> {
    let end = at + len;
    while at < end {
        let k = (end - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..k], at)?;
        at += k as u64;
    }
    Ok(())
}

/// The pre-image file; see the module documentation.
#[derive(Debug)]
pub struct CowFile {
    file: File,
    path: PathBuf,
    slot_size: u64,
    layout: Layout,
    /// Most data slots the disk budget allows.
    max_data: u32,
    slots: Arc<Mutex<Slots>>,
    reserve: Arc<Reserve>,
    /// The thread that fills the reserve and shrinks the file.
    filler: Option<JoinHandle<()>>,
    /// Whether a failure is recorded (checked first, so a good write takes no lock for it).
    failing: AtomicBool,
    commit: Mutex<CommitState>,
    committed: Condvar,
    /// [`CommitState::durable`], for a check without the lock.
    durable_now: std::sync::atomic::AtomicU64,
    /// Slots with a record found at open (until [`CowFile::adopt`]).
    seen: Mutex<Vec<u32>>,
}

/// Most slots of any kind (records of zero pre-images need no budget, but a bound).
const MAX_SLOTS: u32 = u32::MAX / 2;

impl CowFile {
    /// Opens (or creates) the file in `dir` for snarfs of `slot_size` bytes, allowing
    /// `budget` bytes of data slots, and reads every record that can be trusted (see the
    /// module documentation). Until [`CowFile::adopt`] says which slots are in use, none
    /// is handed out.
    pub fn open(
        dir: &Path,
        slot_size: u64,
        budget: u64,
    ) -> Result<(CowFile, Vec<Found>, OpenReport)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(FILE);
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the pre-image store {}", path.display()), e))?;
        if fresh {
            // Its name is durable before anything synced into it counts on it.
            crate::store::files::sync_dir(dir)
                .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        }
        let max_data = (budget / slot_size).min(MAX_SLOTS as u64) as u32;
        let layout = Layout { slot_size };
        // Nothing is handed out, grown or shrunk before `adopt`.
        let slots = Arc::new(Mutex::new(Slots::default()));
        let reserve = Arc::new(Reserve {
            layout,
            file: file.try_clone().map_err(|e| {
                Error::io(format!("opening the pre-image store {}", path.display()), e)
            })?,
            path: path.clone(),
            max_data,
            slots_ahead: (RESERVE_BYTES / slot_size).clamp(1, MAX_SLOTS as u64) as u32,
            slots: slots.clone(),
            ctl: Mutex::new(FillerCtl::default()),
            wake: Condvar::new(),
            busy: Mutex::new(()),
        });
        let filler = {
            let reserve = reserve.clone();
            std::thread::Builder::new()
                .name("snarf-cow-reserve".into())
                .spawn(move || reserve.run())
                .map_err(|e| Error::io("starting the pre-image store's filler thread", e))?
        };
        let cow = CowFile {
            file,
            path,
            slot_size,
            layout,
            max_data,
            slots,
            reserve,
            filler: Some(filler),
            failing: AtomicBool::new(false),
            commit: Mutex::new(CommitState::default()),
            committed: Condvar::new(),
            durable_now: std::sync::atomic::AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        };
        let (found, report) = cow.scan()?;
        Ok((cow, found, report))
    }

    fn group_len(&self) -> u64 {
        self.layout.group_len()
    }

    fn record_at(&self, slot: u32) -> u64 {
        self.layout.record_at(slot)
    }

    fn data_at(&self, slot: u32) -> u64 {
        self.layout.data_at(slot)
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(
            format!("{what} the pre-image store {}", self.path.display()),
            e,
        )
    }

    /// Reads the headers and every record (see the module documentation).
    fn scan(&self) -> Result<(Vec<Found>, OpenReport)> {
        let len = self
            .file
            .metadata()
            .map_err(|e| self.io("reading the length of", e))?
            .len();
        let mut header: Option<(u64, u64, bool)> = None;
        for copy in 0..2u64 {
            let mut page = vec![0u8; PAGE as usize];
            if self.file.read_exact_at(&mut page, copy * PAGE).is_err() {
                continue;
            }
            if let Some(h) = self.parse_header(&page)? {
                if header.is_none_or(|best| h.0 > best.0) {
                    header = Some(h);
                }
            }
        }
        let (counter, sealed, clean) = header.unwrap_or((0, 0, false));
        let mut found = Vec::new();
        let mut seen = Vec::new();
        let mut max_ticket = sealed;
        let mut report = OpenReport { torn: 0, clean };
        let mut g = 0u64;
        let mut page = vec![0u8; PAGE as usize];
        let mut data = vec![0u8; self.slot_size as usize];
        while HEADERS + g * self.group_len() < len {
            let at = HEADERS + g * self.group_len();
            // A group whose slots hold only all-zero records has no data past its record
            // page, so the file may end inside that page: its records are read all the same
            // (the missing rest reads as no record).
            let whole = (len - at).min(PAGE) as usize;
            page.fill(0);
            self.file
                .read_exact_at(&mut page[..whole], at)
                .map_err(|e| self.io("reading", e))?;
            for k in 0..PER_GROUP as usize {
                let Some((record, hash, ticket)) = decode(&page[k * RECORD..(k + 1) * RECORD])
                else {
                    continue;
                };
                let slot = (g * PER_GROUP + k as u64) as u32;
                seen.push(slot);
                max_ticket = max_ticket.max(ticket);
                if !record.zero && !clean && ticket > sealed {
                    // Written by a commit that may not have finished: trusted only if its
                    // data is what it says.
                    let whole = self
                        .file
                        .read_exact_at(&mut data, self.data_at(slot))
                        .is_ok()
                        && data_hash(&data) == hash;
                    if !whole {
                        report.torn += 1;
                        continue;
                    }
                }
                found.push(Found { slot, record });
            }
            g += 1;
        }
        {
            // Tickets go on past every one on disk, all of which are now judged.
            let mut c = self.commit.lock();
            c.counter = counter;
            c.issued = max_ticket;
            c.durable = max_ticket;
            self.durable_now.store(max_ticket, Ordering::Release);
        }
        *self.seen.lock() = seen;
        Ok((found, report))
    }

    fn parse_header(&self, page: &[u8]) -> Result<Option<(u64, u64, bool)>> {
        let check = blake3::hash(&page[..PAGE as usize - 32]);
        if &page[..8] != MAGIC || page[PAGE as usize - 32..] != *check.as_bytes() {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or([0; 8]));
        let version = u32::from_le_bytes(page[8..12].try_into().unwrap_or([0; 4]));
        if version != VERSION {
            return Err(Error::Internal(format!(
                "the pre-image store {} is of format version {version}, this snarf reads only {VERSION}",
                self.path.display()
            )));
        }
        if word(16) != self.slot_size {
            return Err(Error::Internal(format!(
                "the pre-image store {} holds snarfs of {} bytes, the store's are {}",
                self.path.display(),
                word(16),
                self.slot_size
            )));
        }
        Ok(Some((word(24), word(32), word(40) == 1)))
    }

    fn header_page(&self, counter: u64, sealed: Ticket, clean: bool) -> Vec<u8> {
        let mut page = vec![0u8; PAGE as usize];
        page[..8].copy_from_slice(MAGIC);
        page[8..12].copy_from_slice(&VERSION.to_le_bytes());
        page[16..24].copy_from_slice(&self.slot_size.to_le_bytes());
        page[24..32].copy_from_slice(&counter.to_le_bytes());
        page[32..40].copy_from_slice(&sealed.to_le_bytes());
        page[40..48].copy_from_slice(&(clean as u64).to_le_bytes());
        let check = blake3::hash(&page[..PAGE as usize - 32]);
        page[PAGE as usize - 32..].copy_from_slice(check.as_bytes());
        page
    }

    /// Says which slots hold pre-images still needed after an open (`data`: whether each
    /// holds data); every other slot is free, and every other record found is erased, so
    /// one the crash cut short or one no snapshot needs can never come back. Then slots
    /// are handed out.
    pub fn adopt(&self, in_use: &[(u32, bool)]) -> Result<()> {
        let mut used: Vec<u32> = in_use.iter().map(|&(slot, _)| slot).collect();
        used.sort_unstable();
        used.dedup();
        let seen = std::mem::take(&mut *self.seen.lock());
        for slot in seen {
            if used.binary_search(&slot).is_err() {
                self.file
                    .write_all_at(&[0u8; RECORD], self.record_at(slot))
                    .map_err(|e| self.io("erasing a record in", e))?;
            }
        }
        let mut s = self.slots.lock();
        let next = used.last().map_or(0, |&l| l + 1);
        let mut it = used.iter().peekable();
        s.free.clear();
        for slot in 0..next {
            if it.peek() == Some(&&slot) {
                it.next();
            } else {
                s.free.push(Reverse(slot));
            }
        }
        s.next = next;
        s.data = in_use.iter().filter(|(_, d)| *d).count() as u32;
        s.zero = in_use.len() as u32 - s.data;
        // The file keeps what is held and no more (the reserve is written again as slots
        // are taken); a fresh header says nothing is sealed past what was found (new
        // tickets are past it anyway).
        let keep = self.layout.end_of(next);
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > keep {
            self.file
                .set_len(keep)
                .map_err(|e| self.io("shortening", e))?;
        }
        s.filled = len.min(keep).max(HEADERS);
        s.last_use = None;
        s.adopted = true;
        drop(s);
        // Both copies, so each later header write overwrites written blocks: one into a
        // hole would need room, which a full disk does not have.
        self.write_header(false)?;
        self.write_header(false)?;
        self.file.sync_data().map_err(|e| self.io("syncing", e))
    }

    fn write_header(&self, clean: bool) -> Result<()> {
        let (counter, sealed) = {
            let mut c = self.commit.lock();
            c.counter += 1;
            (c.counter, if clean { c.issued } else { c.durable })
        };
        let page = self.header_page(counter, sealed, clean);
        self.file
            .write_all_at(&page, (counter % 2) * PAGE)
            .map_err(|e| self.io("writing the header of", e))
    }

    /// Takes a free slot for a pre-image (`data`: it holds data and counts against the
    /// budget; else it holds only a record). `None` when the budget is used up, or the
    /// file is failing.
    pub fn alloc(&self, data: bool) -> Option<u32> {
        let mut s = self.slots.lock();
        if s.closed() || (data && s.data >= self.max_data) || s.data + s.zero >= MAX_SLOTS {
            return None;
        }
        let slot = match s.free.pop() {
            Some(Reverse(slot)) => slot,
            None => {
                s.next += 1;
                s.next - 1
            }
        };
        s.last_use = Some(Instant::now());
        if data {
            s.data += 1;
        } else {
            s.zero += 1;
        }
        Some(slot)
    }

    /// Gives a slot back. Its blocks stay written, because overwriting is cheaper than
    /// allocating again: when the last slot is freed, slots are taken from the first again,
    /// and the filler gives the bytes back only once the file has been idle for
    /// [`SHRINK_AFTER`] (at once while writes into the file fail).
    pub fn free(&self, slot: u32, data: bool) {
        let mut s = self.slots.lock();
        s.free.push(Reverse(slot));
        if data {
            s.data -= 1;
        } else {
            s.zero -= 1;
        }
        if s.data + s.zero == 0 {
            s.free.clear();
            s.next = 0;
            if !self.failing.load(Ordering::Acquire) {
                return;
            }
            match self.file.set_len(HEADERS) {
                // Its space is back: a failure for want of it may be over.
                Ok(()) => {
                    s.filled = s.filled.min(HEADERS);
                    s.failed = None;
                    self.failing.store(false, Ordering::Release);
                }
                Err(e) => log::warn!(
                    "could not give back the pre-image store's space: {}",
                    e.chain()
                ),
            }
        }
    }

    /// Gives back the slot of a durable pre-image that turned out not to be needed while a
    /// table on disk may still list a snapshot it covers (one being broken): its record is
    /// erased at once, and the slot is free only after the next sync made that durable.
    pub fn free_after_commit(&self, slot: u32, data: bool) {
        if let Err(e) = self.file.write_all_at(&[0u8; RECORD], self.record_at(slot)) {
            // Never handed out again this session: its record may come back.
            log::warn!(
                "could not erase pre-image record {slot} in {} ({e}); its slot is not reused until the next mount",
                self.path.display()
            );
            return;
        }
        self.slots.lock().quarantine.push((slot, data));
    }

    /// Frees the quarantined slots in `done` (their erasure is durable now).
    fn release_quarantine(&self, done: Vec<(u32, bool)>) {
        for (slot, data) in done {
            self.free(slot, data);
        }
    }

    /// Records that a write into the file failed, closing it for a while.
    pub fn record_failure(&self, e: &Error) {
        let mut s = self.slots.lock();
        if !s.closed() {
            log::warn!(
                "pre-images cannot be written to disk for now: {}",
                e.chain()
            );
        }
        s.failed = Some((Instant::now(), e.chain().to_string()));
        self.failing.store(true, Ordering::Release);
        drop(s);
        // The reserve's room goes back to the filesystem while the file fails.
        self.reserve.kick();
    }

    fn record_success(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.slots.lock();
        if s.failed.take().is_some() {
            log::info!("pre-images can be written to disk again");
        }
        self.failing.store(false, Ordering::Release);
    }

    /// What the last write failure was, while it keeps the file closed.
    pub fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let s = self.slots.lock();
        s.failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_AFTER)
            .map(|(_, why)| why.clone())
    }

    /// Copies `len` bytes at `offset` of `src` into a slot inside the kernel, for a spilled
    /// (volatile) pre-image; a short source is zero-filled. On failure the file is closed
    /// for a while (the caller frees the slot).
    pub fn copy_in(&self, slot: u32, src: &File, offset: u64, len: u64) -> Result<()> {
        let r = self.copy_in_inner(slot, src, offset, len);
        match &r {
            Ok(()) => self.record_success(),
            Err(e) => self.record_failure(e),
        }
        r
    }

    fn copy_in_inner(&self, slot: u32, src: &File, offset: u64, len: u64) -> Result<()> {
        let mut src_off = offset as libc::loff_t;
        let mut dst_off = self.data_at(slot) as libc::loff_t;
        let mut left = len as usize;
        while left > 0 {
            // SAFETY: both descriptors are owned and open; the offsets are plain integers
            // the kernel updates.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut src_off,
                    self.file.as_raw_fd(),
                    &mut dst_off,
                    left,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.io("copying a pre-image into", e));
            }
            if n == 0 {
                // Past the end of the source: the rest of the snarf reads as zeros.
                let mut at = dst_off as u64;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    self.file
                        .write_all_at(&ZEROS[..k], at)
                        .map_err(|e| self.io("writing a pre-image to", e))?;
                    at += k as u64;
                    left -= k;
                }
                return Ok(());
            }
            left -= n as usize;
        }
        Ok(())
    }

    /// Starts a durable pre-image: takes a ticket, then writes the data (unless it is all
    /// zeros) and the record of `slot`. Wait for the ticket before issuing the live write.
    /// On failure the file is closed for a while (the caller frees the slot).
    pub fn write_durable(&self, slot: u32, record: &Record, data: &[u8]) -> Result<Ticket> {
        let ticket = {
            let mut c = self.commit.lock();
            c.issued += 1;
            let t = c.issued;
            c.writing.insert(t);
            t
        };
        let hash = if record.zero {
            [0u8; 16]
        } else {
            data_hash(data)
        };
        let r = (|| {
            if !record.zero {
                self.file
                    .write_all_at(data, self.data_at(slot))
                    .map_err(|e| self.io("writing a pre-image to", e))?;
            }
            self.file
                .write_all_at(&encode(record, &hash, ticket), self.record_at(slot))
                .map_err(|e| self.io("writing a pre-image record to", e))
        })();
        {
            let mut c = self.commit.lock();
            c.writing.remove(&ticket);
            if r.is_err() {
                // Never durable; a waiter on it is told so.
                c.failed_upto = c.failed_upto.max(ticket);
            }
        }
        match r {
            Ok(()) => {
                self.record_success();
                if self.reserve.low(&self.slots.lock()) {
                    self.reserve.kick();
                }
                Ok(ticket)
            }
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// Writes the reserve of empty slots now (see the module documentation), for a
    /// persistent snapshot about to be taken, so its first writes find slots whose sync
    /// needs no metadata. Never fails: without a reserve, slots are written as they are taken.
    pub fn prime(&self) {
        self.reserve.fill();
    }

    /// Bytes of the file on disk: slots in use, free ones and the reserve.
    pub fn file_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether `ticket` is durable already (no wait needed); takes no lock.
    pub fn is_durable(&self, ticket: Ticket) -> bool {
        self.durable_now.load(Ordering::Acquire) >= ticket
    }

    /// Waits until `ticket` is durable: the first waiter leads a commit (header, then one
    /// `fdatasync`) for everyone written so far, the others wait for it. `Err` with the
    /// reason when the sync failed: those pre-images cannot be relied on.
    pub fn wait(&self, ticket: Ticket) -> std::result::Result<(), String> {
        if ticket == 0 {
            return Ok(());
        }
        let mut c = self.commit.lock();
        loop {
            if ticket <= c.failed_upto {
                return Err(c
                    .failure
                    .clone()
                    .unwrap_or_else(|| "writing the pre-image failed".into()));
            }
            if c.durable >= ticket {
                return Ok(());
            }
            if c.leading {
                self.committed.wait(&mut c);
                continue;
            }
            c.leading = true;
            let target = c.writing.first().map_or(c.issued, |&w| w - 1);
            drop(c);
            // Erasures written before this sync are durable after it.
            let erased = std::mem::take(&mut self.slots.lock().quarantine);
            let r = self
                .write_header(false)
                .and_then(|_| self.file.sync_data().map_err(|e| self.io("syncing", e)));
            match &r {
                Ok(()) => self.release_quarantine(erased),
                Err(_) => self.slots.lock().quarantine.extend(erased),
            }
            c = self.commit.lock();
            c.leading = false;
            match r {
                Ok(()) => {
                    c.durable = c.durable.max(target);
                    self.durable_now.store(c.durable, Ordering::Release);
                }
                Err(e) => {
                    log::error!("{e}; the pre-images it held cannot be relied on");
                    c.failed_upto = c.failed_upto.max(target);
                    c.failure = Some(e.to_string());
                }
            }
            self.committed.notify_all();
        }
    }

    /// Forgets a failed sync once what it was to protect is given up (the persistent
    /// snapshots broken): writers waiting on those tickets go on.
    pub fn forgive(&self) {
        let mut c = self.commit.lock();
        c.durable = c.durable.max(c.failed_upto);
        c.failed_upto = 0;
        self.durable_now.store(c.durable, Ordering::Release);
        c.failure = None;
        self.committed.notify_all();
    }

    /// Reads `buf.len()` bytes at `offset` within a slot.
    pub fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, self.data_at(slot) + offset)
            .map_err(|e| self.io("reading a pre-image from", e))
    }

    /// Makes everything durable and marks the file closed cleanly, so the next open trusts
    /// every record without reading its data.
    pub fn seal(&self) -> Result<()> {
        let erased = std::mem::take(&mut self.slots.lock().quarantine);
        if let Err(e) = self.file.sync_data() {
            self.slots.lock().quarantine.extend(erased);
            return Err(self.io("syncing", e));
        }
        self.release_quarantine(erased);
        {
            // A clean close gives back every byte not held: the reserve and freed slots.
            let _busy = self.reserve.busy.lock();
            let mut s = self.slots.lock();
            let keep = self.layout.end_of(s.next);
            if self.file_bytes() > keep {
                self.file
                    .set_len(keep)
                    .map_err(|e| self.io("shortening", e))?;
                s.filled = s.filled.min(keep);
            }
        }
        self.write_header(true)?;
        self.file.sync_data().map_err(|e| self.io("syncing", e))
    }

    /// Bytes of data slots in use.
    pub fn used_bytes(&self) -> u64 {
        self.slots.lock().data as u64 * self.slot_size
    }

    /// Bytes of data slots allowed.
    pub fn budget_bytes(&self) -> u64 {
        self.max_data as u64 * self.slot_size
    }

    /// Whether a data slot could be taken now.
    pub fn has_room(&self) -> bool {
        let s = self.slots.lock();
        !s.closed() && s.data < self.max_data
    }
}

impl Drop for CowFile {
    fn drop(&mut self) {
        self.reserve.ctl.lock().stop = true;
        self.reserve.wake.notify_one();
        if let Some(t) = self.filler.take() {
            if t.join().is_err() {
                log::error!("the pre-image store's filler thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(snarf: u64, zero: bool) -> Record {
        Record {
            vol: 9,
            snarf,
            first: 3,
            last: 7,
            zero,
        }
    }

    #[test]
    fn slots_are_reused_lowest_first_and_bounded_by_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (cow, found, _) = CowFile::open(dir.path(), 4096, 2 * 4096).unwrap();
        assert!(found.is_empty());
        cow.adopt(&[]).unwrap();
        let a = cow.alloc(true).unwrap();
        let b = cow.alloc(true).unwrap();
        assert!(cow.alloc(true).is_none(), "the budget holds two");
        let z = cow.alloc(false).unwrap();
        assert_eq!((a, b, z), (0, 1, 2), "zero pre-images need no budget");
        cow.free(a, true);
        assert_eq!(cow.alloc(true), Some(0));
        assert_eq!(cow.used_bytes(), 2 * 4096);
    }

    #[test]
    fn durable_records_come_back_and_torn_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        cow.adopt(&[]).unwrap();
        let mut tickets = Vec::new();
        for i in 0..70u64 {
            let slot = cow.alloc(i % 5 != 0).unwrap();
            let data = vec![i as u8 + 1; 4096];
            tickets.push(cow.write_durable(slot, &rec(i, i % 5 == 0), &data).unwrap());
        }
        cow.wait(*tickets.last().unwrap()).unwrap();
        assert!(tickets.iter().all(|&t| cow.is_durable(t)));
        drop(cow);
        // As after kill -9: nothing was sealed by a close.
        let (cow, found, report) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        assert_eq!(found.len(), 70);
        assert_eq!(report.torn, 0);
        assert!(!report.clean);
        for f in &found {
            assert_eq!(f.record, rec(f.record.snarf, f.record.snarf % 5 == 0));
            if !f.record.zero {
                let mut buf = [0u8; 16];
                cow.read(f.slot, 100, &mut buf).unwrap();
                assert_eq!(buf, [f.record.snarf as u8 + 1; 16]);
            }
        }
        // A record of the last commit whose data never reached the disk is not trusted.
        cow.adopt(
            &found
                .iter()
                .map(|f| (f.slot, !f.record.zero))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let slot = cow.alloc(true).unwrap();
        let t = cow
            .write_durable(slot, &rec(500, false), &[5u8; 4096])
            .unwrap();
        cow.wait(t).unwrap();
        let other = cow.alloc(true).unwrap();
        cow.write_durable(other, &rec(501, false), &[6u8; 4096])
            .unwrap();
        cow.file
            .write_all_at(&[0u8; 4096], cow.data_at(other))
            .unwrap();
        drop(cow);
        let (_, found, report) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        assert!(found.iter().any(|f| f.record.snarf == 500));
        assert!(!found.iter().any(|f| f.record.snarf == 501));
        assert_eq!(report.torn, 1);
    }

    #[test]
    fn records_of_a_last_group_holding_no_data_come_back() {
        // Only all-zero records in the last group: the file ends inside its record page.
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        cow.adopt(&[]).unwrap();
        for i in 0..66u64 {
            let slot = cow.alloc(i < 64).unwrap();
            cow.write_durable(slot, &rec(i, i >= 64), &[i as u8 + 1; 4096])
                .unwrap();
        }
        drop(cow);
        let (_, found, report) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        let mut snarfs: Vec<u64> = found.iter().map(|f| f.record.snarf).collect();
        snarfs.sort_unstable();
        assert_eq!(snarfs, (0..66).collect::<Vec<_>>());
        assert_eq!(report.torn, 0);
        // A lone all-zero record: the file is its headers and 64 bytes.
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        cow.adopt(&[]).unwrap();
        let slot = cow.alloc(false).unwrap();
        cow.write_durable(slot, &rec(3, true), &[0; 4096]).unwrap();
        drop(cow);
        let (_, found, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        assert_eq!(
            found.iter().map(|f| f.record).collect::<Vec<_>>(),
            [rec(3, true)]
        );
    }

    #[test]
    fn a_discarded_record_is_erased_and_its_slot_waits_for_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        cow.adopt(&[]).unwrap();
        let a = cow.alloc(true).unwrap();
        let t = cow.write_durable(a, &rec(1, false), &[1u8; 4096]).unwrap();
        cow.wait(t).unwrap();
        cow.free_after_commit(a, true);
        // Not handed out again before a sync: new data there could meet the old record.
        let b = cow.alloc(true).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            cow.used_bytes(),
            2 * 4096,
            "still counted while quarantined"
        );
        let t = cow.write_durable(b, &rec(2, false), &[2u8; 4096]).unwrap();
        cow.wait(t).unwrap();
        assert_eq!(cow.alloc(true), Some(a), "free after the sync");
        drop(cow);
        // As after kill -9: the discarded record does not come back.
        let (_, found, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        assert_eq!(
            found.iter().map(|f| f.record.snarf).collect::<Vec<_>>(),
            vec![2]
        );
    }

    /// Bytes of the file's blocks on disk (a hole has none).
    fn allocated(cow: &CowFile) -> u64 {
        use std::os::unix::fs::MetadataExt;
        cow.file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn the_reserve_is_written_ahead_within_the_budget_and_is_no_record_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        // A budget of 256 slots of 4 KiB, smaller than the reserve: the reserve stops there.
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 256 * 4096).unwrap();
        cow.prime();
        assert_eq!(cow.file_bytes(), 0, "nothing is written before adopt");
        cow.adopt(&[]).unwrap();
        cow.prime();
        let end = cow.layout.end_of(256);
        assert_eq!(
            cow.file_bytes(),
            end,
            "the reserve fills the budget, no more"
        );
        assert!(
            allocated(&cow) >= end - HEADERS,
            "the reserve is written, not holes"
        );
        let mut tickets = Vec::new();
        for i in 0..3u64 {
            let slot = cow.alloc(true).unwrap();
            assert_eq!(slot, i as u32);
            tickets.push(
                cow.write_durable(slot, &rec(i, false), &[i as u8 + 1; 4096])
                    .unwrap(),
            );
        }
        cow.wait(tickets[2]).unwrap();
        assert_eq!(
            cow.file_bytes(),
            end,
            "the slots were taken inside the reserve"
        );
        drop(cow);
        // As after kill -9 (nothing sealed): the reserve's slots are empty slots.
        let (cow, found, report) = CowFile::open(dir.path(), 4096, 256 * 4096).unwrap();
        assert_eq!(report.torn, 0);
        let mut snarfs: Vec<u64> = found.iter().map(|f| f.record.snarf).collect();
        snarfs.sort_unstable();
        assert_eq!(snarfs, vec![0, 1, 2]);
        // A crash that cut the filling short (the file ends inside a piece of zeros).
        cow.adopt(&found.iter().map(|f| (f.slot, true)).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(
            cow.file_bytes(),
            cow.layout.end_of(3),
            "adopt keeps what is held"
        );
        cow.prime();
        cow.file.set_len(cow.layout.end_of(100) + 12345).unwrap();
        drop(cow);
        let (_, found, report) = CowFile::open(dir.path(), 4096, 256 * 4096).unwrap();
        assert_eq!((found.len(), report.torn), (3, 0));

        // A reserve larger than the budget is never written: a budget of 2 slots.
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 2 * 4096).unwrap();
        cow.adopt(&[]).unwrap();
        cow.prime();
        assert_eq!(cow.file_bytes(), cow.layout.end_of(2));
        // Record-only slots in use (no budget) move the reserve's end with them.
        let z = cow.alloc(false).unwrap();
        cow.write_durable(z, &rec(1, true), &[0; 4096]).unwrap();
        cow.prime();
        assert_eq!(cow.file_bytes(), cow.layout.end_of(3));
    }

    #[test]
    fn the_reserve_follows_the_slots_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let slots_ahead = (RESERVE_BYTES / 4096) as u32;
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 30).unwrap();
        cow.adopt(&[]).unwrap();
        cow.prime();
        assert_eq!(cow.file_bytes(), cow.layout.end_of(slots_ahead));
        // Taking more than half the reserve has the filler write more, off the write path.
        for i in 0..slots_ahead / 2 + 1 {
            let slot = cow.alloc(true).unwrap();
            cow.write_durable(slot, &rec(i as u64, false), &[7; 4096])
                .unwrap();
        }
        let want = cow.layout.end_of(slots_ahead / 2 + 1 + slots_ahead);
        let start = Instant::now();
        while cow.file_bytes() < want && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cow.file_bytes(), want);
    }

    #[test]
    fn freed_slots_stay_written_until_the_file_is_idle_and_go_back_at_once_when_failing() {
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 4 * 4096).unwrap();
        cow.adopt(&[]).unwrap();
        let a = cow.alloc(true).unwrap();
        let t = cow.write_durable(a, &rec(1, false), &[1; 4096]).unwrap();
        cow.wait(t).unwrap();
        cow.free(a, true);
        let kept = cow.file_bytes();
        assert!(kept >= cow.layout.end_of(1), "not given back at once");
        // Taken again from the first slot, an overwrite.
        assert_eq!(cow.alloc(true), Some(0));
        cow.free(0, true);
        let start = Instant::now();
        while cow.file_bytes() > HEADERS && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cow.file_bytes(), HEADERS, "given back once idle");
        assert!(start.elapsed() >= SHRINK_AFTER / 2);

        // While writes into the file fail, room goes back as soon as nothing is held.
        cow.prime();
        let a = cow.alloc(true).unwrap();
        cow.write_durable(a, &rec(2, false), &[2; 4096]).unwrap();
        cow.record_failure(&Error::Internal("disk full".into()));
        cow.free(a, true);
        assert_eq!(cow.file_bytes(), HEADERS);
        assert!(cow.failure().is_none(), "its room is back");
    }

    #[test]
    fn a_clean_seal_is_trusted_and_damage_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let (cow, _, _) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        cow.adopt(&[]).unwrap();
        let s0 = cow.alloc(true).unwrap();
        let s1 = cow.alloc(true).unwrap();
        cow.write_durable(s0, &rec(1, false), &[1u8; 4096]).unwrap();
        cow.write_durable(s1, &rec(2, false), &[2u8; 4096]).unwrap();
        cow.seal().unwrap();
        // A bit flipped in one record: that record is gone, the other stays.
        let at = cow.record_at(s1) + 9;
        cow.file.write_all_at(&[0xFF], at).unwrap();
        drop(cow);
        let (_, found, report) = CowFile::open(dir.path(), 4096, 1 << 20).unwrap();
        assert!(report.clean);
        assert_eq!(
            found.iter().map(|f| f.record.snarf).collect::<Vec<_>>(),
            vec![1]
        );
        // A store of another snarf size is refused, not misread.
        assert!(CowFile::open(dir.path(), 8192, 1 << 20).is_err());
    }
}
