//! The spill file: pre-images that did not fit the memory budget, one snarf-sized slot each,
//! in a single file under `STORE/spill/`. Freed slots are reused; the file shrinks to
//! nothing whenever no pre-image is spilled.
//!
//! A write into the spill file that fails (the disk is full, or failing) makes the spill
//! act as a full budget: no slot is handed out until [`RETRY_AFTER`] has passed or the file
//! has emptied (which gives its space back), so writers are throttled and, past the limit,
//! a snapshot is broken with the failure as its reason; a writer never sees the error.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Error, Result};
use crate::chain::ErrorChain;

/// Slot allocator and I/O over the spill file.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    slot_size: u64,
    max_slots: u32,
    slots: Mutex<Slots>,
    /// Whether a failure is recorded (checked first, so a good write takes no lock for it).
    failing: AtomicBool,
}

/// How long a failed spill write keeps the spill closed before one more try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Zeros for the end of a snarf past the end of its volume.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

#[derive(Debug, Default)]
struct Slots {
    free: Vec<u32>,
    next: u32,
    used: u32,
    /// The last failed write: when, and what the OS said.
    failed: Option<(Instant, String)>,
}

impl Slots {
    /// Whether a failure still keeps the spill closed.
    fn closed(&self) -> bool {
        self.failed
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < RETRY_AFTER)
    }
}

impl SpillFile {
    /// Creates (or empties) the spill file in `dir`, allowing `budget` bytes of slots.
    pub fn create(dir: &Path, slot_size: u64, budget: u64) -> Result<SpillFile> {
        let path = dir.join("preimages.spill");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating spill file {}", path.display()), e))?;
        let max_slots = (budget / slot_size).min(u32::MAX as u64) as u32;
        Ok(SpillFile {
            file,
            slot_size,
            max_slots,
            slots: Mutex::new(Slots::default()),
            failing: AtomicBool::new(false),
        })
    }

    /// Takes a free slot, or `None` when the disk budget is used up.
    pub fn alloc(&self) -> Option<u32> {
        let mut s = self.slots.lock();
        if s.closed() {
            return None;
        }
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None if s.next < self.max_slots => {
                s.next += 1;
                s.next - 1
            }
            None => return None,
        };
        s.used += 1;
        Some(slot)
    }

    /// Returns a slot to the free list. Its blocks stay allocated, because overwriting
    /// allocated blocks is much cheaper than allocating them again; they go back to the
    /// filesystem when the last slot is freed.
    pub fn free(&self, slot: u32) {
        let mut s = self.slots.lock();
        s.free.push(slot);
        s.used -= 1;
        if s.used == 0 {
            s.free.clear();
            s.next = 0;
            match self.file.set_len(0) {
                // Its space is back: a failure for want of it may be over.
                Ok(()) => {
                    s.failed = None;
                    self.failing.store(false, Ordering::Release);
                }
                Err(e) => log::warn!("could not give back the spill file's space: {e}"),
            }
        }
    }

    /// Records that a write into the spill file failed, closing the spill for a while.
    pub fn record_failure(&self, e: &Error) {
        let mut s = self.slots.lock();
        if !s.closed() {
            log::warn!(
                "pre-images cannot be spilled to disk for now: {}",
                e.chain()
            );
        }
        s.failed = Some((Instant::now(), e.chain().to_string()));
        self.failing.store(true, Ordering::Release);
    }

    /// Records that a spill write worked again.
    fn record_success(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.slots.lock();
        if s.failed.take().is_some() {
            log::info!("pre-images can be spilled to disk again");
        }
        self.failing.store(false, Ordering::Release);
    }

    /// What the last spill write failure was, while it keeps the spill closed.
    pub fn failure(&self) -> Option<String> {
        let s = self.slots.lock();
        s.failed
            .as_ref()
            .filter(|_| s.closed())
            .map(|(_, why)| why.clone())
    }

    /// Writes a pre-image into its slot.
    pub fn write(&self, slot: u32, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, slot as u64 * self.slot_size)
            .map_err(|e| Error::io("writing a pre-image to the spill file", e))?;
        self.record_success();
        Ok(())
    }

    /// Copies `len` bytes at `offset` of `src` into a slot inside the kernel (one copy
    /// through the page cache instead of two through a buffer). A short source is
    /// zero-filled to `len`.
    pub fn copy_in(&self, slot: u32, src: &File, offset: u64, len: u64) -> Result<()> {
        self.copy_in_inner(slot, src, offset, len)?;
        self.record_success();
        Ok(())
    }

    fn copy_in_inner(&self, slot: u32, src: &File, offset: u64, len: u64) -> Result<()> {
        let mut src_off = offset;
        let mut dst_off = slot as u64 * self.slot_size;
        let mut left = len as usize;
        while left > 0 {
            let copied = rustix::fs::copy_file_range(
                src,
                Some(&mut src_off),
                &self.file,
                Some(&mut dst_off),
                left,
            );
            let n = match copied {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(Error::io(
                        "copying a pre-image into the spill file",
                        e.into(),
                    ))
                }
            };
            if n == 0 {
                // Past the end of the source: the rest of the snarf reads as zeros.
                let mut at = dst_off;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    self.file
                        .write_all_at(&ZEROS[..k], at)
                        .map_err(|e| Error::io("writing a pre-image to the spill file", e))?;
                    at += k as u64;
                    left -= k;
                }
                return Ok(());
            }
            left -= n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` within a slot.
    pub fn read(&self, slot: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, slot as u64 * self.slot_size + offset)
            .map_err(|e| Error::io("reading a pre-image from the spill file", e))
    }

    /// Bytes of slots in use.
    pub fn used_bytes(&self) -> u64 {
        self.slots.lock().used as u64 * self.slot_size
    }

    /// Bytes of slots allowed.
    pub fn budget_bytes(&self) -> u64 {
        self.max_slots as u64 * self.slot_size
    }

    /// Whether a slot could be taken now.
    pub fn has_room(&self) -> bool {
        let s = self.slots.lock();
        !s.closed() && (!s.free.is_empty() || s.next < self.max_slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillFile::create(dir.path(), 4096, 2 * 4096).unwrap();
        let a = spill.alloc().unwrap();
        let b = spill.alloc().unwrap();
        assert!(spill.alloc().is_none());
        spill.write(b, &[7u8; 4096]).unwrap();
        let mut buf = [0u8; 10];
        spill.read(b, 100, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 10]);
        spill.free(a);
        assert_eq!(spill.used_bytes(), 4096);
        assert_eq!(spill.alloc(), Some(a));
    }
}
