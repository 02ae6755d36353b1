//! The pre-image cache: the old contents of snarfs, captured at their first write after a
//! snapshot, kept until no snapshot needs them.
//!
//! Each pre-image covers a range of epochs `[first, last]`: `first` is the epoch of the write
//! that produced the contents, `last` the epoch before the write that replaced them. Every
//! snapshot taken in that range sees this one copy.
//!
//! A pre-image a persistent snapshot needs is *durable*: written once to a slot of the
//! pre-image store on disk ([`CowFile`]) with its record, and memory keeps a copy only while
//! the memory budget has room, as a cache for fast reads and backups (no second copy is
//! needed). One only volatile snapshots need lives in memory up to the memory budget, then in
//! a slot of the same file (spilled, not synced). The disk budget bounds both kinds of slot;
//! all-zero contents cost no data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

use super::cow::{CowFile, Record, Ticket};
use super::Result;
use crate::store::VolumeId;

/// Where a pre-image's bytes are.
#[derive(Debug)]
pub enum Stored {
    /// The snarf was all zeros.
    Zero,
    /// In memory.
    Mem(Box<[u8]>),
    /// Spilled to a slot of the pre-image file (volatile: no record, not synced).
    Spill(u32),
    /// Durable in a slot of the pre-image file, with its record; `mem` is a cached copy.
    Durable {
        /// The slot.
        slot: u32,
        /// All zeros: the slot holds only the record.
        zero: bool,
        /// A copy in memory, counted in the memory budget.
        mem: Option<Box<[u8]>>,
    },
}

impl Stored {
    /// Whether the contents are all zeros.
    pub fn is_zero(&self) -> bool {
        matches!(self, Stored::Zero | Stored::Durable { zero: true, .. })
    }

    /// Where the contents are held, for a backup's fetch order.
    pub fn location(&self) -> Location {
        match self {
            Stored::Zero | Stored::Durable { zero: true, .. } => Location::Zero,
            Stored::Mem(_) | Stored::Durable { mem: Some(_), .. } => Location::Memory,
            Stored::Spill(_) | Stored::Durable { .. } => Location::Spill,
        }
    }
}

/// One captured pre-image.
#[derive(Debug)]
pub struct Preimage {
    /// Epoch of the write that produced these contents (0: never written).
    pub first: u64,
    /// Last epoch whose snapshots see these contents.
    pub last: u64,
    /// The contents.
    pub data: Stored,
}

impl Preimage {
    /// Whether the snapshot of `epoch` sees this pre-image.
    pub fn covers(&self, epoch: u64) -> bool {
        (self.first..=self.last).contains(&epoch)
    }
}

/// Room taken in a budget before the contents are read, so a capture never overshoots.
#[derive(Debug)]
pub enum Reservation {
    /// One snarf of the memory budget.
    Mem,
    /// A spill slot.
    Spill(u32),
}

/// Where the held pre-images are, for status and for a backup's fetch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Pre-images held, of every kind.
    pub held: u64,
    /// Of which all-zero (no storage).
    pub zero: u64,
    /// Bytes of memory used by pre-image contents.
    pub mem_used: u64,
    /// Memory budget in bytes.
    pub mem_budget: u64,
    /// Bytes of data slots on disk in use (spilled and durable pre-images).
    pub disk_used: u64,
    /// Disk budget in bytes.
    pub disk_budget: u64,
}

/// The cache.
#[derive(Debug)]
pub struct PreimageCache {
    map: DashMap<(VolumeId, u64), Vec<Preimage>>,
    snarf_size: u64,
    mem_budget: u64,
    mem_used: AtomicU64,
    held: AtomicU64,
    zero: AtomicU64,
    spill: CowFile,
    /// Snarf buffers of freed memory pre-images, reused so a capture neither allocates nor
    /// zeroes memory; together with the held ones they never exceed the memory budget.
    pool: Mutex<Vec<Box<[u8]>>>,
    /// When a capture buffer last could not be allocated: memory then counts as full for a
    /// while, so writers go to the spill file or wait instead of failing or spinning.
    mem_failed: Mutex<Option<Instant>>,
    /// Whether `mem_failed` is set (checked first, so captures take no lock for it).
    mem_failing: AtomicBool,
    space: Mutex<()>,
    space_freed: Condvar,
}

impl PreimageCache {
    /// A cache for snarfs of `snarf_size` bytes with the given memory budget over the
    /// pre-image file (whose budget is the disk budget).
    pub fn new(snarf_size: u64, mem_budget: u64, spill: CowFile) -> PreimageCache {
        PreimageCache {
            map: DashMap::new(),
            snarf_size,
            mem_budget,
            mem_used: AtomicU64::new(0),
            held: AtomicU64::new(0),
            zero: AtomicU64::new(0),
            spill,
            pool: Mutex::new(Vec::new()),
            mem_failed: Mutex::new(None),
            mem_failing: AtomicBool::new(false),
            space: Mutex::new(()),
            space_freed: Condvar::new(),
        }
    }

    /// Takes room for one snarf: memory first, then a spill slot; `None` when both are full.
    pub fn reserve(&self) -> Option<Reservation> {
        if !self.mem_closed() {
            let size = self.snarf_size;
            let mem = self
                .mem_used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + size <= self.mem_budget).then_some(used + size)
                });
            if mem.is_ok() {
                return Some(Reservation::Mem);
            }
        }
        self.reserve_spill()
    }

    /// Takes a spill slot; `None` when the disk budget is full or the spill is failing.
    pub fn reserve_spill(&self) -> Option<Reservation> {
        self.spill.alloc(true).map(Reservation::Spill)
    }

    /// The pre-image file.
    pub fn file(&self) -> &CowFile {
        &self.spill
    }

    /// Keeps the contents `data` of a snarf durably (see the module notes): a slot, its
    /// data and record written, a copy kept in memory if the budget has room (else `data`
    /// goes back to the pool). Returns the contents and the ticket to wait for before the
    /// live write; `None` (with `data` recycled) when there is no room or the write failed,
    /// which counts as no room.
    pub fn keep_durable(&self, record: Record, data: Box<[u8]>) -> Option<(Stored, Ticket)> {
        let Some(slot) = self.spill.alloc(!record.zero) else {
            self.recycle(data);
            return None;
        };
        let ticket = match self.spill.write_durable(slot, &record, &data) {
            Ok(t) => t,
            Err(e) => {
                // The file now counts as full for a while. Freed first: emptying the file
                // must not count as the failure being over, or writers would retry at once
                // forever instead of waiting and then breaking a snapshot.
                self.spill.free(slot, !record.zero);
                self.spill.record_failure(&e);
                self.recycle(data);
                self.notify_space();
                return None;
            }
        };
        let size = self.snarf_size;
        let cached = !record.zero
            && !self.mem_closed()
            && self
                .mem_used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + size <= self.mem_budget).then_some(used + size)
                })
                .is_ok();
        let mem = if cached {
            Some(data)
        } else {
            self.recycle(data);
            None
        };
        Some((
            Stored::Durable {
                slot,
                zero: record.zero,
                mem,
            },
            ticket,
        ))
    }

    /// Whether a durable slot could be taken now (the disk budget).
    pub fn has_durable_room(&self) -> bool {
        self.spill.has_room()
    }

    fn mem_closed(&self) -> bool {
        if !self.mem_failing.load(Ordering::Acquire) {
            return false;
        }
        let mut failed = self.mem_failed.lock();
        if failed.is_some_and(|at| at.elapsed() < super::cow::RETRY_AFTER) {
            return true;
        }
        *failed = None;
        self.mem_failing.store(false, Ordering::Release);
        false
    }

    /// Gives back room that was not used.
    pub fn unreserve(&self, r: Reservation) {
        match r {
            Reservation::Mem => {
                self.mem_used.fetch_sub(self.snarf_size, Ordering::AcqRel);
            }
            Reservation::Spill(slot) => self.spill.free(slot, true),
        }
        self.notify_space();
    }

    /// Whether a reservation could succeed now.
    pub fn has_room(&self) -> bool {
        (!self.mem_closed()
            && self.mem_used.load(Ordering::Acquire) + self.snarf_size <= self.mem_budget)
            || self.spill.has_room()
    }

    /// Why pre-images cannot be spilled right now, if a spill write failed lately.
    pub fn spill_failure(&self) -> Option<String> {
        self.spill.failure()
    }

    /// How full the disk budget is, from 0 to 1 (1 when there is no disk budget and memory
    /// is full).
    pub fn disk_fill(&self) -> f64 {
        let budget = self.spill.budget_bytes();
        if budget == 0 {
            return if self.has_room() { 0.0 } else { 1.0 };
        }
        self.spill.used_bytes() as f64 / budget as f64
    }

    /// Whether memory is used up (new pre-images go to the spill file).
    pub fn memory_full(&self) -> bool {
        self.mem_used.load(Ordering::Acquire) + self.snarf_size > self.mem_budget
    }

    /// A snarf-sized buffer to capture into: a reused one when there is one. `None` when
    /// memory cannot be had; memory then counts as full for a while.
    pub fn buffer(&self) -> Option<Box<[u8]>> {
        if let Some(buf) = self.pool.lock().pop() {
            return Some(buf);
        }
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(self.snarf_size as usize).is_err() {
            log::warn!(
                "no memory for a {} byte pre-image buffer; pre-images go to the spill file for now",
                self.snarf_size
            );
            *self.mem_failed.lock() = Some(Instant::now());
            self.mem_failing.store(true, Ordering::Release);
            return None;
        }
        v.resize(self.snarf_size as usize, 0);
        Some(v.into_boxed_slice())
    }

    /// Hands back a capture buffer that was not kept.
    pub fn recycle(&self, buf: Box<[u8]>) {
        let mut pool = self.pool.lock();
        let pooled = (pool.len() as u64 + 1) * self.snarf_size;
        if pooled + self.mem_used.load(Ordering::Acquire) <= self.mem_budget {
            pool.push(buf);
        }
    }

    /// Stores a snarf straight from a volume's file into a spill slot. On failure the slot
    /// is freed and the spill is closed for a while (it acts as full).
    pub fn spill_from(&self, slot: u32, src: &std::fs::File, offset: u64) -> Result<Stored> {
        match self.spill.copy_in(slot, src, offset, self.snarf_size) {
            Ok(()) => Ok(Stored::Spill(slot)),
            Err(e) => {
                // Freed first: emptying the file must not count as the failure being over.
                self.spill.free(slot, true);
                self.spill.record_failure(&e);
                self.notify_space();
                Err(e)
            }
        }
    }

    /// Adds a pre-image for a snarf. The caller holds the snarf's stripe exclusively.
    pub fn insert(&self, vol: VolumeId, snarf: u64, p: Preimage) {
        self.held.fetch_add(1, Ordering::Relaxed);
        if p.data.is_zero() {
            self.zero.fetch_add(1, Ordering::Relaxed);
        }
        self.map.entry((vol, snarf)).or_default().push(p);
    }

    /// Copies bytes of the pre-image that the snapshot of `epoch` sees, if there is one.
    /// `offset` is within the snarf. The caller holds the snarf's stripe.
    pub fn read(
        &self,
        vol: VolumeId,
        snarf: u64,
        epoch: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<()>> {
        let entry = self.map.get(&(vol, snarf))?;
        let p = entry.iter().find(|p| p.covers(epoch))?;
        Some(match &p.data {
            Stored::Zero => {
                buf.fill(0);
                Ok(())
            }
            Stored::Mem(bytes) => {
                let start = offset as usize;
                buf.copy_from_slice(&bytes[start..start + buf.len()]);
                Ok(())
            }
            Stored::Spill(slot) => self.spill.read(*slot, offset, buf),
            Stored::Durable { zero: true, .. } => {
                buf.fill(0);
                Ok(())
            }
            Stored::Durable {
                mem: Some(bytes), ..
            } => {
                let start = offset as usize;
                buf.copy_from_slice(&bytes[start..start + buf.len()]);
                Ok(())
            }
            Stored::Durable { slot, .. } => self.spill.read(*slot, offset, buf),
        })
    }

    /// The `first` epoch of the pre-image covering `epoch`, if there is one: the epoch of the
    /// last write the snapshot of `epoch` saw.
    pub fn first_epoch_for(&self, vol: VolumeId, snarf: u64, epoch: u64) -> Option<u64> {
        let entry = self.map.get(&(vol, snarf))?;
        entry.iter().find(|p| p.covers(epoch)).map(|p| p.first)
    }

    /// Whether the pre-image covering `epoch` is all zeros (`None`: there is none).
    pub fn is_zero(&self, vol: VolumeId, snarf: u64, epoch: u64) -> Option<bool> {
        let entry = self.map.get(&(vol, snarf))?;
        entry
            .iter()
            .find(|p| p.covers(epoch))
            .map(|p| p.data.is_zero())
    }

    /// Drops the pre-images of a snarf for which `unneeded` says yes, freeing their room.
    /// The caller holds the snarf's stripe exclusively. Returns how many were dropped.
    pub fn remove_where(
        &self,
        vol: VolumeId,
        snarf: u64,
        mut unneeded: impl FnMut(&Preimage) -> bool,
    ) -> usize {
        let mut dropped = Vec::new();
        if let dashmap::Entry::Occupied(mut entry) = self.map.entry((vol, snarf)) {
            let list = entry.get_mut();
            let mut i = 0;
            while i < list.len() {
                if unneeded(&list[i]) {
                    dropped.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if list.is_empty() {
                entry.remove();
            }
        }
        let n = dropped.len();
        for p in dropped {
            self.release_storage(p.data);
        }
        if n > 0 {
            self.held.fetch_sub(n as u64, Ordering::Relaxed);
            self.notify_space();
        }
        n
    }

    /// Frees the storage of contents that turned out not to be needed. A durable one's
    /// record may be read by a crash recovery before the snapshot it was for is durably
    /// gone (it is being broken), so its slot is reused only once its record is durably
    /// erased ([`CowFile::free_after_commit`]).
    pub fn discard(&self, data: Stored) {
        match data {
            Stored::Zero => return,
            Stored::Durable { slot, zero, mem } => {
                if let Some(bytes) = mem {
                    self.mem_used
                        .fetch_sub(bytes.len() as u64, Ordering::AcqRel);
                }
                self.spill.free_after_commit(slot, !zero);
            }
            other => self.release_storage_counted(other),
        }
        self.notify_space();
    }

    fn release_storage_counted(&self, data: Stored) {
        match data {
            Stored::Zero => {}
            Stored::Mem(bytes) => {
                self.mem_used
                    .fetch_sub(bytes.len() as u64, Ordering::AcqRel);
            }
            Stored::Spill(slot) => self.spill.free(slot, true),
            Stored::Durable { slot, zero, mem } => {
                if let Some(bytes) = mem {
                    self.mem_used
                        .fetch_sub(bytes.len() as u64, Ordering::AcqRel);
                }
                self.spill.free(slot, !zero);
            }
        }
    }

    fn release_storage(&self, data: Stored) {
        if data.is_zero() {
            self.zero.fetch_sub(1, Ordering::Relaxed);
        }
        self.release_storage_counted(data);
    }

    /// Keys of all snarfs holding pre-images (a copy, so no map lock is held afterwards).
    pub fn keys(&self) -> Vec<(VolumeId, u64)> {
        self.map.iter().map(|e| *e.key()).collect()
    }

    /// Epoch ranges of a snarf's pre-images, with where each is held.
    pub fn ranges_placed(&self, vol: VolumeId, snarf: u64) -> Vec<(u64, u64, Location)> {
        self.map
            .get(&(vol, snarf))
            .map(|e| {
                e.iter()
                    .map(|p| (p.first, p.last, p.data.location()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Epoch ranges of a snarf's pre-images.
    pub fn ranges(&self, vol: VolumeId, snarf: u64) -> Vec<(u64, u64)> {
        self.map
            .get(&(vol, snarf))
            .map(|e| e.iter().map(|p| (p.first, p.last)).collect())
            .unwrap_or_default()
    }

    /// Where the contents of the pre-image covering `epoch` are held: memory, spill or
    /// zero (for a backup's fetch order).
    pub fn location(&self, vol: VolumeId, snarf: u64, epoch: u64) -> Option<Location> {
        let entry = self.map.get(&(vol, snarf))?;
        entry
            .iter()
            .find(|p| p.covers(epoch))
            .map(|p| p.data.location())
    }

    /// Figures for status.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            held: self.held.load(Ordering::Relaxed),
            zero: self.zero.load(Ordering::Relaxed),
            mem_used: self.mem_used.load(Ordering::Relaxed),
            mem_budget: self.mem_budget,
            disk_used: self.spill.used_bytes(),
            disk_budget: self.spill.budget_bytes(),
        }
    }

    fn notify_space(&self) {
        let _g = self.space.lock();
        self.space_freed.notify_all();
    }

    /// Waits until room may have been freed (on disk, when `durable`), or `timeout`
    /// passes.
    pub fn wait_for_room(&self, timeout: Duration, durable: bool) {
        let mut g = self.space.lock();
        if (durable && self.has_durable_room()) || (!durable && self.has_room()) {
            return;
        }
        self.space_freed.wait_for(&mut g, timeout);
    }
}

/// Where a pre-image's contents are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// All zeros, no storage.
    Zero,
    /// In memory.
    Memory,
    /// On disk, in the pre-image file (spilled, or durable and not cached in memory).
    Spill,
}
