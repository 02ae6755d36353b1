//! One volume: a sparse backing file split into snarfs, its logical size, and the epoch of
//! the last write to each snarf (the stamp), which drives both copy-on-write and
//! changed-snarf tracking.
//!
//! Stamps ([`Stamps`]) cost memory in proportion to the snarfs written, at most 8 bytes
//! per snarf once a volume is written all over. A volume may have at most [`MAX_SNARFS`]
//! snarfs, which bounds that worst case: every size that enters (create, truncate, a
//! write past the end, a file found at open) is checked against [`max_volume_size`], and
//! stamps are allocated fallibly, so a size the engine cannot serve is an error, never an
//! abort. A volume file found larger than that is listed but *not served*: it can be read,
//! truncated to a size that is served, renamed or deleted; writes are refused (EFBIG).
//!
//! Every open file of a volume shares its one backing descriptor, and the kernel reports a
//! write-back error once per descriptor. So the volume keeps its own *error sequence*, as
//! the kernel's errseq_t does per file: each error a sync meets is recorded, each open file
//! holds an [`ErrorCursor`] taken at open, and its next fsync reports every error recorded
//! since, whichever file's sync met it first. Writes need no attribution to a file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::intent::{self, Intent, Ticket};
use super::iostats::IoStats;
use super::restored::Restore;
use super::stamps::{NoMemory, Stamps};
use super::{Error, Result};

/// A volume's identity inside its store; stays the same across renames, so incremental
/// backups and snapshots follow the data, not the name.
pub type VolumeId = u64;

/// Most snarfs one volume may have: 2^28, so its stamps take at most 2 GiB of memory even
/// when every snarf was written (16 TiB volumes with the default 64 KiB snarfs).
pub const MAX_SNARFS: u64 = 1 << 28;

/// Largest volume size served with snarfs of `1 << snarf_shift` bytes.
pub fn max_volume_size(snarf_shift: u32) -> u64 {
    MAX_SNARFS
        .checked_shl(snarf_shift)
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64)
}

/// A live volume. Shared (`Arc`) by the store's name table, snapshots that froze it and
/// open file handles; its backing file is removed when the last of them lets go of a
/// deleted volume.
#[derive(Debug)]
pub struct Volume {
    id: VolumeId,
    snarf_shift: u32,
    file: File,
    /// Epoch from which this volume's stamps are trustworthy: its creation, or the open of
    /// the store if tracking was lost.
    tracked_since: u64,
    /// Non-zero once stamps were lost (see [`Volume::uncertain_before`]).
    uncertain_before: u64,
    state: RwLock<VolumeState>,
    mtime_ns: AtomicI64,
    ctime_ns: AtomicI64,
    /// Set once the volume's name is gone; the backing file then lives at this path and is
    /// unlinked on drop.
    retired: Mutex<Option<PathBuf>>,
    deleted: AtomicBool,
    /// Persistent snapshots holding this volume: while any does, a deleted volume's file
    /// outlives this process (the next one finds the snapshot again).
    persistent_holds: std::sync::atomic::AtomicU32,
    /// The error sequence: errors recorded so far (high 32 bits) and the errno of the
    /// latest (low 32 bits).
    errors: AtomicU64,
    /// Held across a sync of the backing file and the recording of its error, so a sync
    /// that returns clean after another met the error sees it recorded.
    sync_lock: Mutex<()>,
    /// Reads and writes served, for metrics.
    io: IoStats,
    /// The write-intent bitmap, once the store attached it (a store opened without one
    /// tracks nothing across an unclean stop).
    intent: std::sync::OnceLock<Intent>,
    /// The live restore, while the volume is under one.
    restore: std::sync::OnceLock<Restore>,
    /// A live restore whose bitmap could not be loaded (the file, and why): the volume's
    /// bytes cannot be told from the backup's, so it serves nothing until it is deleted.
    blocked: std::sync::OnceLock<(PathBuf, String)>,
}

/// An open file's place in its volume's error sequence (see the module notes).
#[derive(Debug)]
pub struct ErrorCursor(AtomicU64);

/// The part of a volume that changes with resizes, guarded by the volume's lock: writers
/// hold it shared (the size cannot move under them), resizes hold it exclusively.
#[derive(Debug)]
pub struct VolumeState {
    size: u64,
    /// Length of the backing file; larger than `size` while a snapshot still needs data
    /// past a shrink.
    phys_len: u64,
    stamps: Stamps,
    /// log2 of the snarf size (to tell whether the stamps cover the file).
    shift: u32,
}

/// A volume's attributes, for stat and for snapshots that freeze them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeAttr {
    /// Logical size in bytes.
    pub size: u64,
    /// Last data modification, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Last status change, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Bytes allocated on disk by the backing file.
    pub allocated: u64,
}

/// Current time in nanoseconds since the Unix epoch (the one clock, [`crate::sys::clock`]).
pub fn now_ns() -> i64 {
    crate::sys::clock::now_ns()
}

fn snarfs_for(len: u64, shift: u32) -> u64 {
    len.div_ceil(1u64 << shift)
}

/// The store error for stamps of `count` snarfs that did not fit in memory.
fn no_memory(count: u64, e: NoMemory) -> Error {
    Error::OutOfMemory {
        what: format!("changed-snarf stamps of a volume of {count} snarfs"),
        bytes: e.bytes,
    }
}

/// `count` stamps of value `epoch`.
fn new_stamps(count: u64, epoch: u64) -> Result<Stamps> {
    Stamps::new(count, epoch).map_err(|e| no_memory(count, e))
}

impl Volume {
    /// Wraps an opened backing file. `stamps` are the saved stamps, if any, one per snarf of
    /// the file (the caller has checked them). A file longer than the engine serves, or
    /// whose stamps do not fit in memory, gives a volume that is not served (see
    /// [`Volume::served`]) rather than an error, so the store still opens.
    pub(super) fn new(
        id: VolumeId,
        snarf_shift: u32,
        file: File,
        tracked_since: u64,
        uncertain_before: u64,
        stamps: Option<Stamps>,
    ) -> Result<Volume> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading attributes of volume {id:016x}"), e))?;
        let len = meta.len();
        let count = snarfs_for(len, snarf_shift);
        let stamps: Stamps = match stamps {
            Some(saved) if saved.len() == count => saved,
            _ if len > max_volume_size(snarf_shift) => new_stamps(0, 0)?,
            // Saved stamps that do not fit the file would hide changes: never used. (The
            // store checks them first; zero stamps here only pair with tracking that
            // starts now.)
            Some(_) => {
                return Err(Error::BadState {
                    path: PathBuf::from(format!("state/stamps/{id:016x}")),
                    why: "its stamps do not match the volume file's length".into(),
                })
            }
            None => match new_stamps(count, 0) {
                Ok(stamps) => stamps,
                Err(_) => new_stamps(0, 0)?,
            },
        };
        let mtime = meta_time(meta.modified());
        Ok(Volume {
            id,
            snarf_shift,
            file,
            tracked_since,
            uncertain_before,
            state: RwLock::new(VolumeState {
                size: len,
                phys_len: len,
                stamps,
                shift: snarf_shift,
            }),
            mtime_ns: AtomicI64::new(mtime),
            ctime_ns: AtomicI64::new(mtime),
            retired: Mutex::new(None),
            deleted: AtomicBool::new(false),
            persistent_holds: std::sync::atomic::AtomicU32::new(0),
            errors: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            io: IoStats::default(),
            intent: std::sync::OnceLock::new(),
            restore: std::sync::OnceLock::new(),
            blocked: std::sync::OnceLock::new(),
        })
    }

    /// Attaches the write-intent bitmap (once; a second is dropped).
    pub(super) fn attach_intent(&self, intent: Intent) {
        let _ = self.intent.set(intent);
    }

    /// Attaches a live restore (once; a second is dropped).
    pub(super) fn attach_restore(&self, restore: Restore) {
        let _ = self.restore.set(restore);
    }

    /// Blocks the volume: its live restore's bitmap `path` cannot be trusted (`why`), so
    /// reads, writes and snapshots of it fail naming the file, while every other volume
    /// is served as usual.
    pub(super) fn block(&self, path: PathBuf, why: String) {
        let _ = self.blocked.set((path, why));
    }

    /// Why the volume serves nothing, if it is blocked (see [`Volume::block`]).
    pub fn blocked(&self) -> Option<Error> {
        self.blocked.get().map(|(path, why)| Error::RestoreDamaged {
            path: path.clone(),
            why: why.clone(),
        })
    }

    /// The live restore, while one is under way (`None` once every snarf is local).
    pub fn restore(&self) -> Option<&Restore> {
        self.restore.get().filter(|r| !r.is_done())
    }

    /// The live restore, under way or ended in this process (for what it did).
    pub fn live_restore(&self) -> Option<&Restore> {
        self.restore.get()
    }

    /// Writes live bytes: through the live restore while one is under way (whole snarfs
    /// not yet local are marked so no fetch overwrites them), else straight to the file.
    pub fn write_data(&self, data: &[u8], offset: u64) -> Result<()> {
        if let Some(why) = self.blocked() {
            return Err(why);
        }
        match self.restore() {
            Some(r) => r.write(self, offset, data),
            None => self.pwrite(data, offset),
        }
    }

    /// The write-intent bitmap, if attached.
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.get()
    }

    /// Marks the regions of snarfs `first..=last` dirty in the write-intent bitmap; the
    /// write into them is issued only once [`Volume::wait_marked`] of the ticket returned.
    pub fn mark_written(&self, first: u64, last: u64) -> Ticket {
        match self.intent.get() {
            Some(i) if first <= last => i.mark(intent::region_of(first), intent::region_of(last)),
            _ => 0,
        }
    }

    /// Waits until the marks of `ticket` are durable.
    pub fn wait_marked(&self, ticket: Ticket) -> Result<()> {
        match self.intent.get() {
            Some(i) => i.wait(ticket),
            None => Ok(()),
        }
    }

    /// The volume's read and write counters.
    pub fn io(&self) -> &IoStats {
        &self.io
    }

    /// Largest size this volume may have.
    pub fn max_size(&self) -> u64 {
        max_volume_size(self.snarf_shift)
    }

    /// Why writes to this volume are refused, if they are: its file is larger than the
    /// engine serves, or its stamps could not be allocated. Truncating it to a served size
    /// serves it again.
    pub fn unserved(&self) -> Option<Error> {
        self.unserved_in(&self.state.read())
    }

    /// [`Volume::unserved`] for a caller that holds the volume's state.
    pub fn unserved_in(&self, st: &VolumeState) -> Option<Error> {
        if let Some(why) = self.blocked() {
            return Some(why);
        }
        if st.served() {
            return None;
        }
        Some(if st.phys_len > self.max_size() {
            Error::TooLarge {
                size: st.phys_len,
                max: self.max_size(),
            }
        } else {
            Error::OutOfMemory {
                what: format!(
                    "changed-snarf stamps of a volume of {} snarfs",
                    snarfs_for(st.phys_len, self.snarf_shift)
                ),
                bytes: (snarfs_for(st.phys_len, self.snarf_shift) / super::stamps::GROUP)
                    .saturating_mul(64),
            }
        })
    }

    /// The volume's identity.
    pub fn id(&self) -> VolumeId {
        self.id
    }

    /// Size of one snarf in bytes.
    pub fn snarf_size(&self) -> u64 {
        1 << self.snarf_shift
    }

    /// log2 of the snarf size.
    pub fn snarf_shift(&self) -> u32 {
        self.snarf_shift
    }

    /// The epoch from which stamps are trustworthy for changed-snarf queries.
    pub fn tracked_since(&self) -> u64 {
        self.tracked_since
    }

    /// 0, or the epoch of an open that found this volume's stamps lost (after an unclean
    /// stop, say): for writes before it the stamps are lower bounds only, so a snarf a
    /// snapshot older than it handed to a backup may have changed since, even where its
    /// stamp says not.
    pub fn uncertain_before(&self) -> u64 {
        self.uncertain_before
    }

    /// Shared access for reads and writes: the size cannot change while it is held.
    pub fn read_state(&self) -> RwLockReadGuard<'_, VolumeState> {
        self.state.read()
    }

    /// Exclusive access for resizes.
    pub fn write_state(&self) -> RwLockWriteGuard<'_, VolumeState> {
        self.state.write()
    }

    /// Current logical size.
    pub fn size(&self) -> u64 {
        self.state.read().size
    }

    /// Attributes as stat shows them.
    pub fn attr(&self) -> VolumeAttr {
        let size = self.size();
        let allocated = self
            .file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        VolumeAttr {
            size,
            mtime_ns: self.mtime_ns.load(Ordering::Relaxed),
            ctime_ns: self.ctime_ns.load(Ordering::Relaxed),
            allocated,
        }
    }

    /// Records a data change now (mtime and ctime).
    pub fn touch_data(&self) {
        let now = now_ns();
        self.mtime_ns.store(now, Ordering::Relaxed);
        self.ctime_ns.store(now, Ordering::Relaxed);
    }

    /// Records a status change now (ctime only), as a rename does.
    pub fn touch_status(&self) {
        self.ctime_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// Sets the modification time, as `touch -m` or `cp -p` would.
    pub fn set_mtime(&self, mtime_ns: i64) {
        self.mtime_ns.store(mtime_ns, Ordering::Relaxed);
        self.touch_status();
    }

    /// Reads raw bytes of the backing file at `offset`, up to the physical length; a read
    /// past it comes back short. Callers decide what is visible.
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if let Some(why) = self.blocked() {
            // Its holes may be snarfs still in the backup: zeros would be wrong bytes.
            return Err(why);
        }
        if let Some(r) = self.restore() {
            if !buf.is_empty() {
                let last = (offset + buf.len() as u64 - 1) >> self.snarf_shift;
                r.ensure_read(self, offset >> self.snarf_shift, last)?;
            }
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("reading volume {:016x}", self.id), e)),
            }
        }
        Ok(done)
    }

    /// Writes raw bytes to the backing file at `offset`.
    pub fn pwrite(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(format!("writing volume {:016x}", self.id), e))
    }

    /// Reads a whole snarf (short at the end of the backing file) into `buf`, zero-filling
    /// what lies past the physical end.
    pub fn read_snarf(&self, index: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.pread(buf, index << self.snarf_shift)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// The backing file, for in-kernel copies of its snarfs.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether snarf `index` is entirely a hole in the backing file (reads as zeros
    /// without having been written).
    pub fn snarf_is_hole(&self, index: u64) -> bool {
        if self.restore().is_some_and(|r| !r.is_local(index)) {
            // Its bytes are in the backup, not here yet.
            return false;
        }
        let start = index << self.snarf_shift;
        match self.seek(start, true) {
            Ok(Some(next_data)) => next_data >= start + self.snarf_size(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Flushes written data to stable storage. An error is recorded in the volume's error
    /// sequence, so every open file that has not seen it yet is told at its next fsync.
    pub fn sync_data(&self) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        self.file.sync_data().map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO) as u32 as u64;
            let _ = self
                .errors
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |seq| {
                    Some((((seq >> 32) + 1) << 32) | errno)
                });
            Error::io(format!("syncing volume {:016x}", self.id), e)
        })
    }

    /// A cursor at the end of the error sequence, for a file opened now: it sees the
    /// errors recorded from now on.
    pub fn error_cursor(&self) -> ErrorCursor {
        ErrorCursor(AtomicU64::new(self.errors.load(Ordering::Acquire) >> 32))
    }

    /// The latest error recorded since `cursor`, as the OS error it was; moves the cursor
    /// to the end, so each error is reported once per open file.
    pub fn check_errors(&self, cursor: &ErrorCursor) -> Result<()> {
        let seq = self.errors.load(Ordering::Acquire);
        let count = seq >> 32;
        let seen = cursor.0.swap(count, Ordering::AcqRel);
        if count <= seen {
            return Ok(());
        }
        Err(Error::io(
            format!(
                "writing volume {:016x} back to disk failed since this file last synced; data written through it may be lost",
                self.id
            ),
            std::io::Error::from_raw_os_error((seq & 0xffff_ffff) as i32),
        ))
    }

    /// Whether `cursor` has errors it was not told about yet.
    pub fn has_unseen_errors(&self, cursor: &ErrorCursor) -> bool {
        self.errors.load(Ordering::Acquire) >> 32 > cursor.0.load(Ordering::Acquire)
    }

    /// Next offset at or after `offset` holding data (`SEEK_DATA`) or a hole (`SEEK_HOLE`)
    /// in the backing file; `None` when there is none before the end.
    pub fn seek(&self, offset: u64, data: bool) -> Result<Option<u64>> {
        // The shared file position this moves is never used: all I/O is pread/pwrite.
        let from = match data {
            true => rustix::fs::SeekFrom::Data(offset),
            false => rustix::fs::SeekFrom::Hole(offset),
        };
        let found = match rustix::fs::seek(&self.file, from) {
            Ok(at) => Some(at),
            Err(rustix::io::Errno::NXIO) => None,
            Err(e) => {
                return Err(Error::io(
                    format!("seeking in volume {:016x}", self.id),
                    e.into(),
                ))
            }
        };
        let Some(r) = self.restore() else {
            return Ok(found);
        };
        // Snarfs not restored yet are holes in the file but data of the volume.
        let missing = r
            .next_missing(offset >> self.snarf_shift)
            .map(|k| (k << self.snarf_shift).max(offset));
        Ok(match (data, found, missing) {
            (true, Some(at), Some(m)) => Some(at.min(m)),
            // A missing snarf is inside the backup's size, which the file never shrinks below.
            (true, None, Some(m)) => Some(m),
            (true, found, _) => found,
            // Only the end is sure to be a hole while snarfs from here on are missing.
            (false, Some(at), Some(_)) => {
                Some(self.file.metadata().map(|m| m.len()).unwrap_or(at).max(at))
            }
            (false, found, _) => found,
        })
    }

    /// Zeroes `len` bytes at `offset` in the backing file, freeing whole blocks.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        if rustix::fs::fallocate(&self.file, punch, offset, len).is_ok() {
            return Ok(());
        }
        // Filesystems without hole punching get explicit zeros.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.pwrite(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Marks the volume deleted; its backing file now lives at `path` and goes when the
    /// last reference does.
    pub(super) fn retire(&self, path: PathBuf) {
        *self.retired.lock() = Some(path);
        self.deleted.store(true, Ordering::Release);
        self.touch_status();
    }

    /// A persistent snapshot now holds this volume (see [`Volume::let_go`]).
    pub fn hold(&self) {
        self.persistent_holds.fetch_add(1, Ordering::AcqRel);
    }

    /// A persistent snapshot that held this volume was released or broken.
    pub fn let_go(&self) {
        let _ = self
            .persistent_holds
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether the volume has been deleted from the live namespace.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Sets the backing file's length. Snarfs that come into existence get stamp `epoch`:
    /// their content (zeros) is new as far as changed-snarf tracking is concerned. A length
    /// past [`Volume::max_size`] is refused, and so is one whose stamps cannot be allocated,
    /// before anything changes. A volume that was not served is served again afterwards, all
    /// its snarfs stamped `epoch` (its next backup reads it in full).
    pub fn set_len(&self, state: &mut VolumeState, len: u64, epoch: u64) -> Result<()> {
        if len > self.max_size() {
            return Err(Error::TooLarge {
                size: len,
                max: self.max_size(),
            });
        }
        let count = snarfs_for(len, self.snarf_shift);
        // The bitmap knows the new length, and the regions of the snarfs that come into
        // being (and the one holding the smaller end), before the file changes.
        if let Some(i) = self.intent.get() {
            let from = len.min(state.phys_len) >> self.snarf_shift;
            let marked = if count > from {
                i.mark(intent::region_of(from), intent::region_of(count - 1))
            } else {
                0
            };
            i.wait(i.note_len(len).max(marked))?;
        }
        if !state.served() {
            // Nothing is known about the old snarfs: every one counts as written now.
            let stamps = new_stamps(count, epoch)?;
            self.file
                .set_len(len)
                .map_err(|e| Error::io(format!("resizing volume {:016x}", self.id), e))?;
            state.stamps = stamps;
            state.phys_len = len;
            return Ok(());
        }
        let old = state.stamps.len();
        if count > old {
            state
                .stamps
                .resize(count, epoch)
                .map_err(|e| no_memory(count, e))?;
        }
        if let Err(e) = self.file.set_len(len) {
            if count > old {
                // Shrinking stamps needs no memory.
                let _ = state.stamps.resize(old, epoch);
            }
            return Err(Error::io(format!("resizing volume {:016x}", self.id), e));
        }
        state.phys_len = len;
        if count < old {
            let _ = state.stamps.resize(count, epoch);
        }
        Ok(())
    }

    /// Writes the stamps in their saved form ([`Stamps::save`]), for a clean close.
    pub(super) fn write_stamps(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.state.read().stamps.save(out)
    }

    /// Bytes of memory the volume's bookkeeping uses.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Volume>() + self.state.read().stamps.bytes()
    }
}

impl VolumeState {
    /// Whether the stamps cover the backing file (see [`Volume::unserved`]).
    pub fn served(&self) -> bool {
        self.stamps.len() == snarfs_for(self.phys_len, self.shift)
    }

    /// Logical size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Length of the backing file.
    pub fn phys_len(&self) -> u64 {
        self.phys_len
    }

    /// Number of snarfs with a stamp (covering the backing file).
    pub fn snarf_count(&self) -> u64 {
        self.stamps.len()
    }

    /// Epoch of the last write to snarf `index`; 0 if never written since tracking began.
    pub fn stamp(&self, index: u64) -> u64 {
        self.stamps.get(index)
    }

    /// Makes sure the stamp of snarf `index` can be set without memory; call it before a
    /// write into the snarf changes anything, since this is the step that can fail.
    pub fn prepare_stamp(&self, index: u64) -> Result<()> {
        self.stamps
            .prepare(index)
            .map_err(|e| no_memory(self.stamps.len(), e))
    }

    /// Records that snarf `index` was written in `epoch` (prepared with
    /// [`VolumeState::prepare_stamp`]).
    pub fn set_stamp(&self, index: u64, epoch: u64) {
        self.stamps.set(index, epoch);
    }

    /// Calls `f` with each snarf whose stamp is newer than `since`, and its stamp, in
    /// ascending order; unwritten groups of snarfs cost one comparison each.
    pub fn for_each_newer(&self, since: u64, f: impl FnMut(u64, u64)) {
        self.stamps.for_each_newer(since, f)
    }

    /// The first snarf at or after `from` whose stamp is newer than `epoch`.
    pub fn first_newer(&self, from: u64, epoch: u64) -> Option<u64> {
        self.stamps.first_newer(from, epoch)
    }

    /// Sets the logical size; the caller keeps the backing file at least this long.
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if *self.persistent_holds.get_mut() > 0 {
            // A persistent snapshot needs the file after this process.
            return;
        }
        if let Some(path) = self.retired.get_mut().take() {
            if let Some(i) = self.intent.get() {
                let _ = std::fs::remove_file(i.path());
            }
            if let Some(r) = self.restore.get() {
                let _ = std::fs::remove_file(r.path());
            }
            if let Some((bitmap, _)) = self.blocked.get() {
                let _ = std::fs::remove_file(bitmap);
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!(
                    "could not remove deleted volume file {}: {e}",
                    path.display()
                );
            }
        }
    }
}

fn meta_time(t: std::io::Result<SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_else(now_ns)
}
