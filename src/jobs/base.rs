//! What a backup records about where it came from (the manifest's `source` JSON), and how
//! the next backup of a volume finds its base: the newest committed backup holding the same
//! volume (same store id and volume id, whatever its name is now).
//!
//! ```json
//! {"kind": "snarf-snapshot", "store_id": "…", "snapshot_epoch": 4294967297,
//!  "session_id": "…",
//!  "volumes": [{"name": "vm1.img", "id": 1234, "size": 21474836480, "snarf_size": 65536}]}
//! ```

use serde::{Deserialize, Serialize};

use super::plan::{Base, SnapshotDesc};
use super::Result;
use crate::repo::Handle;

/// The `kind` of sources written by snarf backup jobs.
pub const KIND: &str = "snarf-snapshot";

/// One volume in the source record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceVolume {
    /// Name in the snapshot (and in the backup).
    pub name: String,
    /// Volume id in the store.
    pub id: u64,
    /// Frozen size.
    pub size: u64,
    /// Snarf size.
    pub snarf_size: u32,
}

/// The manifest's `source` for a backup of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Always [`KIND`].
    pub kind: String,
    /// The store's id.
    pub store_id: String,
    /// The snapshot's epoch: the next incremental backup reads what changed after it.
    pub snapshot_epoch: u64,
    /// The id of the store session the snapshot was taken in (see `store::lineage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The volumes backed up.
    pub volumes: Vec<SourceVolume>,
}

impl Source {
    /// The source record for backing up `names` of the snapshot `desc`.
    pub fn new(desc: &SnapshotDesc, names: &[String]) -> Source {
        Source {
            kind: KIND.to_string(),
            store_id: desc.store_id.clone(),
            snapshot_epoch: desc.epoch,
            session_id: (!desc.session_id.is_empty()).then(|| desc.session_id.clone()),
            volumes: desc
                .volumes
                .iter()
                .filter(|v| names.contains(&v.name))
                .map(|v| SourceVolume {
                    name: v.name.clone(),
                    id: v.id,
                    size: v.size,
                    snarf_size: v.snarf_size,
                })
                .collect(),
        }
    }

    /// As JSON for the manifest.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Parses a manifest's source; `None` if it was not written by a snarf backup job.
    pub fn parse(v: &serde_json::Value) -> Option<Source> {
        let s: Source = serde_json::from_value(v.clone()).ok()?;
        (s.kind == KIND).then_some(s)
    }
}

/// The base of each volume of `desc` named in `names` that has one in `repo`.
pub fn find_bases(repo: &Handle, desc: &SnapshotDesc, names: &[String]) -> Result<Vec<Base>> {
    let mut wanted: Vec<u64> = desc
        .volumes
        .iter()
        .filter(|v| names.contains(&v.name))
        .map(|v| v.id)
        .collect();
    let mut bases = Vec::new();
    let mut all = repo.list_backups()?;
    all.reverse();
    for m in all {
        if wanted.is_empty() {
            break;
        }
        let Some(src) = Source::parse(&m.source) else {
            continue;
        };
        if src.store_id != desc.store_id {
            continue;
        }
        for sv in &src.volumes {
            let Some(pos) = wanted.iter().position(|&id| id == sv.id) else {
                continue;
            };
            let Some(entry) = m.volume(&sv.name) else {
                continue;
            };
            wanted.swap_remove(pos);
            bases.push(Base {
                volume_id: sv.id,
                backup: m.id.to_string(),
                name: sv.name.clone(),
                epoch: src.snapshot_epoch,
                session_id: src.session_id.clone(),
                size: entry.size,
                snarf_size: entry.snarf_size,
            });
        }
    }
    Ok(bases)
}
