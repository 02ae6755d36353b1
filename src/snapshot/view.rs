//! A snapshot: the volumes, sizes and times frozen at one epoch, its state (live, broken,
//! released), whether it is persistent, and which snarfs a backup has already stored, so
//! their pre-images need not be kept for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::bitset::AtomicSnarfSet;
use crate::store::{Durability, Volume, VolumeAttr, VolumeId};

/// One volume as a snapshot froze it.
#[derive(Debug)]
pub struct SnapVolume {
    /// The volume (its live data and stamps; pre-images fill in what changed since).
    pub volume: Arc<Volume>,
    /// Size and times when the snapshot was taken.
    pub attr: VolumeAttr,
    /// Snarfs a backup has stored; allocated at the first one.
    stored: OnceLock<AtomicSnarfSet>,
}

impl SnapVolume {
    pub(super) fn new(volume: Arc<Volume>, attr: VolumeAttr) -> SnapVolume {
        SnapVolume {
            volume,
            attr,
            stored: OnceLock::new(),
        }
    }

    /// Number of snarfs in the frozen size.
    pub fn snarf_count(&self) -> u64 {
        self.attr.size.div_ceil(self.volume.snarf_size())
    }

    /// Whether a backup has stored snarf `index` of this snapshot.
    pub fn is_stored(&self, index: u64) -> bool {
        self.stored.get().is_some_and(|s| s.contains(index))
    }

    /// Marks snarf `index` stored; returns whether it was newly marked.
    pub fn mark_stored(&self, index: u64) -> bool {
        self.stored
            .get_or_init(|| AtomicSnarfSet::new(self.snarf_count()))
            .insert(index)
    }

    /// The first snarf at or after `from` a backup has stored.
    pub fn next_stored(&self, from: u64) -> Option<u64> {
        self.stored.get()?.next_from(from)
    }

    /// How many snarfs a backup has stored.
    pub fn stored_count(&self) -> u64 {
        self.stored.get().map_or(0, |s| s.count())
    }
}

/// A snapshot's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapState {
    /// Readable; pre-images are kept for it.
    Live,
    /// Broken to protect live writers; reads fail with the reason.
    Broken(String),
    /// Released; gone from the listing.
    Released,
}

/// A frozen view of every volume at one epoch.
#[derive(Debug)]
pub struct Snapshot {
    name: String,
    epoch: u64,
    created_ns: i64,
    durability: Durability,
    /// The id of the store session it was taken in.
    session_id: String,
    volumes: BTreeMap<String, SnapVolume>,
    by_id: HashMap<VolumeId, String>,
    state: Mutex<SnapState>,
    /// Whether it holds its volumes ([`Volume::hold`]) still.
    holding: std::sync::atomic::AtomicBool,
}

impl Snapshot {
    pub(super) fn new(
        name: String,
        epoch: u64,
        created_ns: i64,
        durability: Durability,
        session_id: String,
        volumes: BTreeMap<String, SnapVolume>,
    ) -> Snapshot {
        let by_id = volumes
            .iter()
            .map(|(name, sv)| (sv.volume.id(), name.clone()))
            .collect();
        Snapshot {
            name,
            epoch,
            created_ns,
            durability,
            session_id,
            volumes,
            by_id,
            state: Mutex::new(SnapState::Live),
            holding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// For a persistent snapshot: holds its volumes' files past this process (see
    /// [`Volume::hold`]); done once.
    pub(super) fn hold_volumes(&self) {
        if self.is_persistent() && !self.holding.swap(true, std::sync::atomic::Ordering::AcqRel) {
            for sv in self.volumes.values() {
                sv.volume.hold();
            }
        }
    }

    /// Lets go of what [`Snapshot::hold_volumes`] held (released or broken); done once.
    pub(super) fn let_go_of_volumes(&self) {
        if self
            .holding
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            for sv in self.volumes.values() {
                sv.volume.let_go();
            }
        }
    }

    /// Persistent or volatile.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Whether it outlives the mount.
    pub fn is_persistent(&self) -> bool {
        self.durability == Durability::Persistent
    }

    /// The id of the store session it was taken in (a backup records it, so the next one
    /// can check this copy of the store lived through it).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The epoch it froze: it sees every write of this epoch and earlier.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When it was taken, nanoseconds since the Unix epoch.
    pub fn created_ns(&self) -> i64 {
        self.created_ns
    }

    /// The frozen volumes by name.
    pub fn volumes(&self) -> &BTreeMap<String, SnapVolume> {
        &self.volumes
    }

    /// One frozen volume by name.
    pub fn volume(&self, name: &str) -> Option<&SnapVolume> {
        self.volumes.get(name)
    }

    /// One frozen volume by id.
    pub fn volume_by_id(&self, id: VolumeId) -> Option<&SnapVolume> {
        self.by_id.get(&id).and_then(|n| self.volumes.get(n))
    }

    /// The current state.
    pub fn state(&self) -> SnapState {
        self.state.lock().clone()
    }

    pub(super) fn set_state(&self, state: SnapState) {
        *self.state.lock() = state;
    }

    /// Whether this snapshot still needs the contents of snarf `index` of volume `vol` as
    /// they were at its epoch: it froze that volume at a size reaching the snarf, and no
    /// backup has stored the snarf yet.
    pub fn needs(&self, vol: VolumeId, index: u64) -> bool {
        match self.volume_by_id(vol) {
            Some(sv) => index < sv.snarf_count() && !sv.is_stored(index),
            None => false,
        }
    }
}
