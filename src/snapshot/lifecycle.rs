//! The snapshot lifecycle: taking a snapshot of every volume at one epoch (a persistent one
//! durable in the snapshot table before it is returned), listing and finding snapshots,
//! releasing them, and retiring a released or broken one (its pre-images and the data kept
//! past a shrunk volume's end are given back, once that is durable for a persistent one).

use std::sync::Arc;

use super::table::{self, TableEntry, TableState, TableVolume};
use super::SnapshotInfo;
use super::{
    store, validate_name, Durability, Engine, Error, Result, SnapState, SnapVolume, Snapshot,
};
use crate::chain::ErrorChain;
use crate::store::VolumeId;

impl Engine {
    /// Stops keeping pre-images for a snapshot that was released or broken.
    pub(super) fn retire_snapshot(&self, snap: &Snapshot) {
        self.live.write().remove(&snap.epoch());
        self.free_unneeded(self.cache.keys());
        self.reclaim(snap);
        snap.let_go_of_volumes();
    }

    /// Frees pre-images of the given snarfs that no live snapshot needs any more.
    pub(super) fn free_unneeded(&self, keys: Vec<(VolumeId, u64)>) {
        for (vol, index) in keys {
            let _stripe = self.stripes.write(vol, index);
            let unneeded: Vec<(u64, u64)> = {
                let ranges = self.cache.ranges(vol, index);
                let live = self.live.read();
                ranges
                    .into_iter()
                    .filter(|&(first, last)| {
                        !live.range(first..=last).any(|(_, s)| s.needs(vol, index))
                    })
                    .collect()
            };
            if !unneeded.is_empty() {
                self.cache
                    .remove_where(vol, index, |p| unneeded.contains(&(p.first, p.last)));
            }
        }
    }

    /// Gives back disk space past a volume's end that only this snapshot still needed.
    fn reclaim(&self, snap: &Snapshot) {
        for sv in snap.volumes().values() {
            self.trim_tail(&sv.volume);
        }
    }

    /// Gives back disk space past a volume's end that no live snapshot needs.
    pub(super) fn trim_tail(&self, vol: &store::Volume) {
        let mut st = vol.write_state();
        let keep = st.size().max(self.needed_len(vol.id()));
        if keep < st.phys_len() {
            match vol.set_len(&mut st, keep, 0) {
                Ok(()) if !vol.is_deleted() => self.note_logical_size(vol, &st),
                Ok(()) => {}
                Err(e) => log::warn!(
                    "could not give back space past the end of a volume: {}",
                    e.chain()
                ),
            }
        }
    }

    /// Writes the snapshot table: every persistent snapshot listed, with its state.
    pub(super) fn write_table(&self) -> Result<()> {
        let _one_at_a_time = self.table_lock.lock();
        let entries: Vec<TableEntry> = self
            .named
            .read()
            .values()
            .filter(|s| s.is_persistent())
            .filter_map(|s| table_entry(s))
            .collect();
        table::save(&self.store.cow_dir(), &entries)?;
        // Broken snapshots whose state is durable now can give their pre-images back.
        let done: Vec<Arc<Snapshot>> = std::mem::take(&mut *self.unpersisted.lock());
        for snap in done {
            self.retire_snapshot(&snap);
        }
        Ok(())
    }

    /// Takes a snapshot of every live volume at once, persistent or volatile as the
    /// engine's options say.
    pub fn take(&self, name: &str) -> Result<Arc<Snapshot>> {
        self.take_with(name, self.opts.durability)
    }

    /// Takes a snapshot of every live volume at once. A persistent one is in the durable
    /// snapshot table when this returns (if that cannot be written, no snapshot is taken).
    pub fn take_with(&self, name: &str, durability: Durability) -> Result<Arc<Snapshot>> {
        validate_name("snapshot", name)?;
        self.take_named(name, durability)
    }

    /// The freeze of a converge backup: a volatile snapshot under a name no user can
    /// give (`.snarf-…`), so it never clashes with theirs.
    pub(crate) fn take_reserved(&self, name: &str) -> Result<Arc<Snapshot>> {
        debug_assert!(super::is_reserved(name));
        self.take_named(name, Durability::Volatile)
    }

    fn take_named(&self, name: &str, durability: Durability) -> Result<Arc<Snapshot>> {
        if durability == Durability::Persistent {
            // Empty slots written ahead, before any lock: its first writes' pre-image
            // commits then overwrite written blocks, a sync with no metadata.
            self.cache.file().prime();
        }
        let mut named = self.named.write();
        if named.contains_key(name) {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let mut gate = self.gate.write();
        let epoch = *gate;
        let mut all = self.store.volumes();
        // A volume whose live restore's bitmap is damaged has no bytes anyone can read: it
        // is left out (and said so), so it does not stop the snapshots and backups of
        // every other volume.
        all.retain(|vname, volume| match volume.blocked() {
            Some(why) => {
                log::warn!(
                    "snapshot {name} leaves out volume \"{vname}\": {}",
                    crate::chain::ErrorChain::chain(&why)
                );
                false
            }
            None => true,
        });
        for (vname, volume) in &all {
            if let Some(why) = volume.unserved() {
                return Err(Error::Unserved {
                    volume: vname.clone(),
                    why,
                });
            }
        }
        let volumes = all
            .into_iter()
            .map(|(vname, volume)| {
                let attr = volume.attr();
                (vname, SnapVolume::new(volume, attr))
            })
            .collect();
        let snap = Arc::new(Snapshot::new(
            name.to_string(),
            epoch,
            store::volume::now_ns(),
            durability,
            self.store.session_id().to_string(),
            volumes,
        ));
        snap.hold_volumes();
        self.live.write().insert(epoch, snap.clone());
        *gate += 1;
        drop(gate);
        named.insert(name.to_string(), snap.clone());
        drop(named);
        if snap.is_persistent() {
            // Writers already capture for it (durably); if the table cannot be written
            // it never was, and those pre-images are freed.
            if let Err(e) = self.write_table() {
                let mut named = self.named.write();
                if named.get(name).is_some_and(|s| Arc::ptr_eq(s, &snap)) {
                    named.remove(name);
                }
                drop(named);
                snap.set_state(SnapState::Released);
                self.retire_snapshot(&snap);
                return Err(e);
            }
        }
        log::info!(
            "took {} snapshot \"{name}\" at epoch {epoch:#x}",
            durability.as_str()
        );
        Ok(snap)
    }

    /// Releases a snapshot (live or broken) and frees what only it needed.
    pub fn release(&self, name: &str) -> Result<()> {
        let snap = self
            .named
            .write()
            .remove(name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))?;
        if snap.is_persistent() {
            // Durably gone before its pre-images are: else a crash could bring it back
            // with their slots reused.
            if let Err(e) = self.write_table() {
                self.named.write().entry(name.to_string()).or_insert(snap);
                return Err(e);
            }
        }
        snap.set_state(SnapState::Released);
        self.retire_snapshot(&snap);
        if snap.is_persistent() {
            table::remove_stored(&self.store.cow_dir(), snap.epoch());
        }
        log::info!("released snapshot \"{name}\"");
        Ok(())
    }

    /// The listed snapshots, oldest first.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        let mut out: Vec<SnapshotInfo> = self
            .named
            .read()
            .values()
            .map(|s| SnapshotInfo {
                name: s.name().to_string(),
                epoch: s.epoch(),
                created_ns: s.created_ns(),
                state: s.state(),
                volumes: s.volumes().len(),
                durability: s.durability(),
            })
            .collect();
        out.sort_by_key(|s| s.epoch);
        out
    }

    /// The snapshot called `name`.
    pub fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>> {
        self.named
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))
    }

    pub(super) fn check_readable(snap: &Snapshot) -> Result<()> {
        match snap.state() {
            SnapState::Live => Ok(()),
            SnapState::Broken(reason) => Err(Error::Broken {
                name: snap.name().to_string(),
                reason,
            }),
            SnapState::Released => Err(Error::Released {
                name: snap.name().to_string(),
            }),
        }
    }
}

/// A persistent snapshot as the table keeps it; `None` once released.
fn table_entry(s: &Snapshot) -> Option<TableEntry> {
    let state = match s.state() {
        SnapState::Live => TableState::Live,
        SnapState::Broken(reason) => TableState::Broken(reason),
        SnapState::Released => return None,
    };
    Some(TableEntry {
        name: s.name().to_string(),
        epoch: s.epoch(),
        created_ns: s.created_ns(),
        session_id: s.session_id().to_string(),
        state,
        volumes: s
            .volumes()
            .iter()
            .map(|(name, sv)| TableVolume {
                name: name.clone(),
                id: sv.volume.id(),
                size: sv.attr.size,
                mtime_ns: sv.attr.mtime_ns,
                ctime_ns: sv.attr.ctime_ns,
                allocated: sv.attr.allocated,
            })
            .collect(),
    })
}
