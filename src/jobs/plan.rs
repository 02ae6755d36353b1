//! Planning a backup of a snapshot: which volumes, and per volume whether it is read in full
//! or only its changed snarfs (the rest taken from its last backup, the *base*). The job finds
//! the bases in the repository (it alone opens it); the engine side, which has the
//! changed-snarf tracking, decides. Both ends share these types over the protocol.

use serde::{Deserialize, Serialize};

use super::feed::FeedVolume;
use super::vocab::Mode;
use super::{Error, Result};
use crate::snapshot::{Changed, Engine, Snapshot, SnarfSet};

/// One volume of a snapshot, as the job first learns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDesc {
    /// Name in the snapshot.
    pub name: String,
    /// Volume id in its store (stable across renames).
    pub id: u64,
    /// Frozen size in bytes.
    pub size: u64,
    /// Snarf size in bytes.
    pub snarf_size: u32,
}

/// A snapshot, as the job first learns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDesc {
    /// Name.
    pub name: String,
    /// The epoch it froze; recorded in the backup as the base of the next incremental one.
    pub epoch: u64,
    /// When it was taken, ns since the Unix epoch.
    pub created_ns: i64,
    /// The store's unique id.
    pub store_id: String,
    /// The id of the store session the snapshot was taken in (its epoch says which
    /// session): recorded in the backup, so the next one can check the store lived through it.
    #[serde(default)]
    pub session_id: String,
    /// Its volumes, by name.
    pub volumes: Vec<VolumeDesc>,
}

impl SnapshotDesc {
    /// Describes `snap` of the engine's store.
    pub fn of(engine: &Engine, snap: &Snapshot) -> SnapshotDesc {
        SnapshotDesc {
            name: snap.name().to_string(),
            epoch: snap.epoch(),
            created_ns: snap.created_ns(),
            store_id: engine.store().store_id(),
            session_id: snap.session_id().to_string(),
            volumes: snap
                .volumes()
                .iter()
                .map(|(name, sv)| VolumeDesc {
                    name: name.clone(),
                    id: sv.volume.id(),
                    size: sv.attr.size,
                    snarf_size: sv.volume.snarf_size() as u32,
                })
                .collect(),
        }
    }
}

/// The last backup of a volume, found by the job in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The volume id it belongs to.
    pub volume_id: u64,
    /// The backup's id.
    pub backup: String,
    /// The volume's name in that backup.
    pub name: String,
    /// Epoch of the snapshot that backup was taken from.
    pub epoch: u64,
    /// The id of the store session that snapshot was taken in; `None` for backups made
    /// before sessions were recorded.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The volume's size then.
    pub size: u64,
    /// Its snarf size then.
    pub snarf_size: u32,
}

/// What the job asks the engine side to plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// The snapshot.
    pub snapshot: String,
    /// Only these volumes (`None`: all of the snapshot's).
    pub volumes: Option<Vec<String>>,
    /// Full, incremental or auto.
    pub mode: Mode,
    /// The last backup of each volume that has one.
    pub bases: Vec<Base>,
}

/// Why a volume is read in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum FullReason {
    /// The repository has no backup of this volume from this store.
    FirstBackup,
    /// The job asked for a full backup.
    ModeFull,
    /// Changed-snarf tracking cannot say what changed since the base.
    TrackingLost {
        /// The engine's words.
        reason: String,
    },
    /// The base has another snarf size.
    SnarfSizeChanged {
        /// The base backup.
        base: String,
    },
    /// The base was taken from a newer snapshot than this one.
    NewerBase {
        /// The base backup.
        base: String,
    },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::FirstBackup => write!(f, "first backup of this volume"),
            FullReason::ModeFull => write!(f, "mode=full"),
            FullReason::TrackingLost { reason } => write!(f, "tracking lost: {reason}"),
            FullReason::SnarfSizeChanged { base } => {
                write!(f, "the snarf size differs from backup {base}")
            }
            FullReason::NewerBase { base } => {
                write!(f, "the last backup {base} is of a newer snapshot")
            }
        }
    }
}

/// Full or incremental, per volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VolumeKind {
    /// Every snarf is read.
    Full {
        /// Why.
        reason: FullReason,
    },
    /// Only changed snarfs are read; the others are reused from the base.
    Incremental {
        /// The base backup.
        base: String,
        /// The volume's size in the base, when it differs from now (the snarfs past the
        /// smaller end are read too).
        old_size: Option<u64>,
    },
}

/// One volume of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedVolume {
    /// Name in the snapshot.
    pub name: String,
    /// Volume id.
    pub id: u64,
    /// Frozen size.
    pub size: u64,
    /// Snarf size.
    pub snarf_size: u32,
    /// Number of snarfs.
    pub snarfs: u64,
    /// How many will be sent (read).
    pub to_send: u64,
    /// Bytes those hold.
    pub to_send_bytes: u64,
    /// Full or incremental.
    pub kind: VolumeKind,
    /// Snarfs of a full volume known to read as zeros (holes): never read or sent, the
    /// job records them as zeros. When not 0, the plan carries the set of snarfs sent.
    #[serde(default)]
    pub zeros: u64,
}

impl PlannedVolume {
    /// Whether snarfs that are not sent are reused from a base.
    pub fn base(&self) -> Option<&str> {
        match &self.kind {
            VolumeKind::Incremental { base, .. } => Some(base),
            VolumeKind::Full { .. } => None,
        }
    }

    /// Whether the plan carries the set of snarfs sent for this volume (not all are).
    pub fn has_set(&self) -> bool {
        self.base().is_some() || self.zeros > 0
    }
}

/// A plan as the job receives it: per volume, what is sent and, where not all snarfs are,
/// exactly which (the job reuses the others from the base of an incremental volume, and
/// records them as zeros for a full one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The volumes, in the order snarfs name them (`vol` is a position in this list).
    pub volumes: Vec<PlannedVolume>,
    /// For each volume, the snarfs sent when not all are.
    pub sets: Vec<Option<SnarfSet>>,
}

impl Plan {
    /// The sets as a payload: the set of each volume that has one
    /// ([`PlannedVolume::has_set`]), in order ([`SnarfSet::to_bytes`]: runs, so the
    /// payload grows with the runs of snarfs sent, not with the volumes' sizes).
    pub fn sets_payload(&self) -> Vec<u8> {
        self.sets
            .iter()
            .flatten()
            .flat_map(|s| s.to_bytes())
            .collect()
    }

    /// Rebuilds a plan from the volumes and [`Plan::sets_payload`].
    pub fn from_payload(volumes: Vec<PlannedVolume>, payload: &[u8]) -> Option<Plan> {
        let mut at = 0usize;
        let mut sets = Vec::with_capacity(volumes.len());
        for v in &volumes {
            if v.has_set() {
                let (set, used) = SnarfSet::from_bytes(v.snarfs, payload.get(at..)?)?;
                at += used;
                sets.push(Some(set));
            } else {
                sets.push(None);
            }
        }
        (at == payload.len()).then_some(Plan { volumes, sets })
    }
}

/// Length of snarf `i` of a volume of `size` bytes.
pub fn snarf_len(size: u64, snarf_size: u64, i: u64) -> u64 {
    size.saturating_sub(i * snarf_size).min(snarf_size)
}

/// Bytes of the snarfs in `set` of a volume of `size` bytes (only the last snarf can be
/// short), counted by runs.
fn sent_bytes(set: &SnarfSet, size: u64, ss: u64) -> u64 {
    set.runs()
        .map(|(a, b)| (b * ss).min(size).saturating_sub(a * ss))
        .sum()
}

/// Makes the plan: the answer for the job, and what the feed hands out.
pub fn plan(
    engine: &Engine,
    snap: &Snapshot,
    req: &PlanRequest,
) -> Result<(Vec<PlannedVolume>, Vec<FeedVolume>)> {
    let names: Vec<String> = match &req.volumes {
        Some(list) => {
            for n in list {
                if snap.volume(n).is_none() {
                    return Err(Error::Plan(format!(
                        "snapshot \"{}\" has no volume named \"{n}\"; it has: {}",
                        snap.name(),
                        snap.volumes()
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            let mut l = list.clone();
            l.sort();
            l.dedup();
            l
        }
        None => snap.volumes().keys().cloned().collect(),
    };
    if names.is_empty() {
        return Err(Error::Plan(format!(
            "snapshot \"{}\" holds no volumes; there is nothing to back up",
            snap.name()
        )));
    }
    let mut planned = Vec::new();
    let mut feed = Vec::new();
    for name in names {
        let sv = snap
            .volume(&name)
            .ok_or_else(|| Error::Plan(format!("volume \"{name}\" left the snapshot")))?;
        let id = sv.volume.id();
        let size = sv.attr.size;
        let ss = sv.volume.snarf_size();
        let count = sv.snarf_count();
        let base = req.bases.iter().find(|b| b.volume_id == id);
        let decision = decide(engine, snap, &name, req.mode, base, size, ss, count)?;
        let (kind, only) = match decision {
            Ok((kind, set)) => (kind, Some(set)),
            Err(reason) => {
                if req.mode == Mode::Incremental {
                    return Err(Error::Plan(format!(
                        "volume \"{name}\" cannot be backed up incrementally: {reason}; use --mode auto or full"
                    )));
                }
                (VolumeKind::Full { reason }, None)
            }
        };
        let mut zeros = 0;
        let only = match only {
            Some(set) => Some(set),
            None => {
                // Holes are never read: only snarfs that may hold data are sent.
                let data = engine.data_snarfs(snap, sv);
                zeros = count - data.count();
                (zeros > 0).then_some(data)
            }
        };
        let (to_send, to_send_bytes) = match &only {
            Some(set) => (set.count(), sent_bytes(set, size, ss)),
            None => (count, size),
        };
        planned.push(PlannedVolume {
            name: name.clone(),
            id,
            size,
            snarf_size: ss as u32,
            snarfs: count,
            to_send,
            to_send_bytes,
            kind,
            zeros,
        });
        feed.push(FeedVolume { name, only });
    }
    Ok((planned, feed))
}

/// Incremental (with the snarfs to read), or the reason it must be full.
#[allow(clippy::too_many_arguments)]
fn decide(
    engine: &Engine,
    snap: &Snapshot,
    name: &str,
    mode: Mode,
    base: Option<&Base>,
    size: u64,
    ss: u64,
    count: u64,
) -> Result<Result<(VolumeKind, SnarfSet), FullReason>> {
    if mode == Mode::Full {
        return Ok(Err(FullReason::ModeFull));
    }
    let Some(base) = base else {
        return Ok(Err(FullReason::FirstBackup));
    };
    if base.snarf_size as u64 != ss {
        return Ok(Err(FullReason::SnarfSizeChanged {
            base: base.backup.clone(),
        }));
    }
    // The stamps speak for this copy of the store only: the base must have been taken in a
    // session it lived through, or a store restored from an older copy (or copied and run
    // elsewhere) would have its changes since skipped.
    let lived = match &base.session_id {
        Some(id) => engine.store().lived_through(base.epoch, id),
        None => Err("it does not record which session of the store it was taken in (it was made by an older snarf)".to_string()),
    };
    if let Err(why) = lived {
        return Ok(Err(FullReason::TrackingLost {
            reason: format!("the last backup {}: {why}", base.backup),
        }));
    }
    if base.epoch > snap.epoch() {
        return Ok(Err(FullReason::NewerBase {
            base: base.backup.clone(),
        }));
    }
    let mut set = match engine.changed_snarfs(snap, name, base.epoch)? {
        Changed::Snarfs(set) => set,
        Changed::Lost { reason } => return Ok(Err(FullReason::TrackingLost { reason })),
    };
    let mut old_size = None;
    if base.size != size {
        // The snarf holding the smaller end changed length; past the old end all is new.
        old_size = Some(base.size);
        let small = base.size.min(size);
        set.insert(small / ss);
        for i in base.size.div_ceil(ss)..count {
            set.insert(i);
        }
    }
    Ok(Ok((
        VolumeKind::Incremental {
            base: base.backup.clone(),
            old_size,
        },
        set,
    )))
}
