//! Striped per-snarf locks: a fixed table of reader-writer locks, each snarf mapped to one by
//! hashing, so capture and snapshot reads of the same snarf exclude each other without any
//! per-snarf memory, and different snarfs rarely share a lock.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::store::VolumeId;

/// Number of stripes; a power of two.
const STRIPES: usize = 4096;

/// The lock table.
#[derive(Debug)]
pub struct Stripes {
    locks: Box<[RwLock<()>]>,
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes {
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl Stripes {
    fn slot(&self, vol: VolumeId, snarf: u64) -> &RwLock<()> {
        // Neighbouring snarfs land on different stripes, so a sequential reader and a
        // writer a few snarfs ahead do not collide.
        let h =
            (vol ^ snarf.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        &self.locks[(h >> 52) as usize & (STRIPES - 1)]
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
