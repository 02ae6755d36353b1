//! The snapshot lifecycle: taking a snapshot of every volume at one epoch, listing and
//! finding snapshots, releasing them, and retiring a released or broken one (its pre-images
//! and the data kept past a shrunk volume's end are given back).

use std::sync::Arc;

use super::SnapshotInfo;
use super::{store, validate_name, Engine, Error, Result, SnapState, SnapVolume, Snapshot};
use crate::chain::ErrorChain;
use crate::store::VolumeId;

impl Engine {
    /// Stops keeping pre-images for a snapshot that was released or broken.
    pub(super) fn retire_snapshot(&self, snap: &Snapshot) {
        self.live.write().remove(&snap.epoch());
        self.free_unneeded(self.cache.keys());
        self.reclaim(snap);
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
            let vol = &sv.volume;
            let mut st = vol.write_state();
            let keep = st.size().max(self.needed_len(vol.id()));
            if keep < st.phys_len() {
                match vol.set_len(&mut st, keep, 0) {
                    Ok(()) if !vol.is_deleted() => self.note_logical_size(vol, &st),
                    Ok(()) => {}
                    Err(e) => {
                        log::warn!(
                            "could not give back space past the end of a volume: {}",
                            e.chain()
                        )
                    }
                }
            }
        }
    }

    /// Takes a snapshot of every live volume at once.
    pub fn take(&self, name: &str) -> Result<Arc<Snapshot>> {
        validate_name("snapshot", name)?;
        let mut named = self.named.write();
        if named.contains_key(name) {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let mut gate = self.gate.write();
        let epoch = *gate;
        let all = self.store.volumes();
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
            volumes,
        ));
        self.live.write().insert(epoch, snap.clone());
        *gate += 1;
        drop(gate);
        named.insert(name.to_string(), snap.clone());
        log::info!("took snapshot \"{name}\" at epoch {epoch:#x}");
        Ok(snap)
    }

    /// Releases a snapshot (live or broken) and frees what only it needed.
    pub fn release(&self, name: &str) -> Result<()> {
        let snap = self
            .named
            .write()
            .remove(name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))?;
        snap.set_state(SnapState::Released);
        self.retire_snapshot(&snap);
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
