//! Striped per-snarf locks: a fixed table of reader-writer locks, each snarf mapped to one by
//! hashing, so capture and snapshot reads of the same snarf exclude each other without any
//! per-snarf memory, and different snarfs rarely share a lock.
//!
//! Beside each lock is the commit ticket of the latest durable pre-image captured under it:
//! a writer that finds a snarf already captured in its epoch (by another writer, whose
//! pre-image may not be durable yet) waits for that ticket too before its live write is
//! issued. Snarfs sharing a stripe may wait for each other's commit; that only costs the
//! wait for a sync already under way.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::VolumeId;

/// Number of stripes; a power of two.
const STRIPES: usize = 4096;

/// The lock table.
#[derive(Debug)]
pub struct Stripes {
    locks: Box<[RwLock<()>]>,
    tickets: Box<[AtomicU64]>,
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes {
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            tickets: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Stripes {
    fn index(vol: VolumeId, snarf: u64) -> usize {
        // Neighbouring snarfs land on different stripes, so a sequential reader and a
        // writer a few snarfs ahead do not collide.
        let h =
            (vol ^ snarf.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        (h >> 52) as usize & (STRIPES - 1)
    }

    fn slot(&self, vol: VolumeId, snarf: u64) -> &RwLock<()> {
        &self.locks[Self::index(vol, snarf)]
    }

    /// Notes that a durable pre-image of the snarf was captured with `ticket`; call it with
    /// the stripe held exclusively, before the snarf's stamp is set.
    pub fn note_ticket(&self, vol: VolumeId, snarf: u64, ticket: u64) {
        self.tickets[Self::index(vol, snarf)].fetch_max(ticket, Ordering::AcqRel);
    }

    /// The latest ticket noted for the snarf's stripe (0: none); read after the stamp.
    pub fn ticket(&self, vol: VolumeId, snarf: u64) -> u64 {
        self.tickets[Self::index(vol, snarf)].load(Ordering::Acquire)
    }

    /// Shared hold on a snarf: its pre-images and stamp cannot change meanwhile.
    pub fn read(&self, vol: VolumeId, snarf: u64) -> RwLockReadGuard<'_, ()> {
        self.slot(vol, snarf).read()
    }

    /// Shared hold on a snarf that may be taken while holding others (a reader covering a
    /// run of snarfs whose stripes may repeat): it does not queue behind waiting writers,
    /// which never hold more than one stripe, so no cycle can form.
    pub fn read_recursive(&self, vol: VolumeId, snarf: u64) -> RwLockReadGuard<'_, ()> {
        self.slot(vol, snarf).read_recursive()
    }

    /// Exclusive hold on a snarf, for capturing or freeing its pre-images.
    pub fn write(&self, vol: VolumeId, snarf: u64) -> RwLockWriteGuard<'_, ()> {
        self.slot(vol, snarf).write()
    }
}
