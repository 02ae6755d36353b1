//! Backup objects (format 2): `backups/<id>`, one object per committed backup, holding its
//! header (time, snapshot, host, the caller's opaque `source` JSON, counts) and, per volume,
//! the root of its tree (see `tree`). The object is made with the backend's create-only
//! write, and that create is *the* commit point of a backup. It is sealed like every
//! metadata object (identity in a plain repository), bound to its own name, and validated
//! on every read before any name in it becomes a path or a key.

use serde::{Deserialize, Serialize};

use super::chunk::{BlobKind, ChunkRef, MAX_BLOB, REF_LEN};
use super::crypto;
use super::frame::Seal;
use crate::repo::backend::Key;
use crate::repo::error::{Error, Fix, Result};
use crate::repo::ids::BackupId;
use crate::repo::v1::manifest::BackupStats;

/// Backup object format version.
pub const FORMAT: u32 = 2;
/// Largest backup object read: a few KiB per volume, far below this.
pub const MAX_BYTES: u64 = 16 << 20;

/// One volume of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRoot {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Snarf size in bytes.
    pub snarf_size: u32,
    /// The root page of its tree (hex of the 64-byte reference); `None` if all zeros.
    pub root: Option<String>,
    /// Snarfs that were all zeros or holes.
    pub zero_snarfs: u64,
}

impl VolumeRoot {
    /// The root's reference (validated by [`BackupObject::decode`]).
    pub fn root_ref(&self) -> Option<ChunkRef> {
        self.root.as_deref().and_then(decode_ref)
    }
}

/// A committed backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupObject {
    /// Format version.
    pub format: u32,
    /// The backup's id.
    pub id: BackupId,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Creation time, human readable (UTC).
    pub created_utc: String,
    /// Name of the snapshot it was taken from.
    pub snapshot: String,
    /// Host that wrote it.
    pub host: String,
    /// Caller's opaque data.
    pub source: serde_json::Value,
    /// The volumes, in the order they were added.
    pub volumes: Vec<VolumeRoot>,
    /// Counts of what this backup wrote.
    pub stats: BackupStats,
}

/// Hex of a reference, for the JSON.
pub fn encode_ref(r: &ChunkRef) -> String {
    r.encode().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_ref(s: &str) -> Option<ChunkRef> {
    if s.len() != REF_LEN * 2 {
        return None;
    }
    let mut b = [0u8; REF_LEN];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    ChunkRef::decode(&b)
}

impl BackupObject {
    /// The object's key.
    pub fn key(&self) -> Key {
        Key::Backup(self.id.clone())
    }

    /// The stored bytes: the JSON, sealed and bound to the object's name.
    pub fn encode(&self, seal: &dyn Seal) -> Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::BadArgument(format!("cannot encode backup {}: {e}", self.id)))?;
        crypto::seal_object(seal, &self.key().name(), "backup", json)
    }

    /// Opens, parses and validates the stored bytes of backup `id` (see [`Self::validate`]);
    /// any failure is damage that names the object.
    pub fn decode(
        seal: &dyn Seal,
        location: &str,
        id: &BackupId,
        data: Vec<u8>,
    ) -> Result<BackupObject> {
        let key = Key::Backup(id.clone());
        let damaged = |why: String| Error::Damaged {
            repo: location.into(),
            path: key.name().into(),
            why,
            fix: Fix::Check,
        };
        let json = crypto::open_object(seal, &key.name(), "backup", data).map_err(&damaged)?;
        let obj: BackupObject =
            serde_json::from_slice(&json).map_err(|e| damaged(e.to_string()))?;
        obj.validate(id).map_err(damaged)?;
        Ok(obj)
    }

    /// What a backup object read back must satisfy before any of it is used: its own id
    /// and format; volume names that follow the store's naming rules, each once; snarf sizes
    /// of 1 byte to 8 MiB; tree roots that are tree pages; no control characters in the
    /// names printed one per line.
    pub fn validate(&self, id: &BackupId) -> std::result::Result<(), String> {
        if &self.id != id {
            return Err(format!(
                "it names backup {}, but it is backup {id}",
                self.id
            ));
        }
        if self.format != FORMAT {
            return Err(format!("its format is {}, not {FORMAT}", self.format));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            crate::store::validate_name("volume", &v.name).map_err(|e| e.to_string())?;
            if !names.insert(v.name.as_str()) {
                return Err(format!("it lists volume \"{}\" twice", v.name));
            }
            if v.snarf_size == 0 || v.snarf_size > MAX_BLOB {
                return Err(format!(
                    "volume \"{}\" has a snarf size of {}, not 1 byte to 8 MiB",
                    v.name, v.snarf_size
                ));
            }
            if v.size > i64::MAX as u64
                || v.size.div_ceil(u64::from(v.snarf_size)) > crate::store::volume::MAX_SNARFS
            {
                return Err(format!(
                    "volume \"{}\" has an impossible size of {} bytes",
                    v.name, v.size
                ));
            }
            if let Some(hex) = &v.root {
                match decode_ref(hex) {
                    Some(r) if r.kind == BlobKind::Page => {}
                    _ => {
                        return Err(format!(
                            "volume \"{}\" has a root that is not a tree page reference",
                            v.name
                        ))
                    }
                }
            }
        }
        for (what, text) in [("snapshot", &self.snapshot), ("host", &self.host)] {
            if text.chars().any(char::is_control) {
                return Err(format!(
                    "its {what} name \"{}\" holds control characters",
                    text.escape_debug()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::{ChunkId, PackId};
    use crate::repo::v2::crypto::{Aead, MasterKey};
    use crate::repo::v2::frame::Plain;

    fn object() -> BackupObject {
        let id = BackupId::generate(1_800_000_000);
        let root = ChunkRef {
            id: ChunkId::of(b"root page"),
            kind: BlobKind::Page,
            pack: PackId::generate(),
            offset: 32,
            stored_len: 100,
            within: 0,
            raw_len: 90,
        };
        BackupObject {
            format: FORMAT,
            id,
            created: 1_800_000_000,
            created_utc: "2027-01-15 08:00:00".into(),
            snapshot: "nightly".into(),
            host: "h".into(),
            source: serde_json::json!({"store": "s"}),
            volumes: vec![
                VolumeRoot {
                    name: "vm1.img".into(),
                    size: 1 << 40,
                    snarf_size: 65536,
                    root: Some(encode_ref(&root)),
                    zero_snarfs: 3,
                },
                VolumeRoot {
                    name: "empty.img".into(),
                    size: 1 << 30,
                    snarf_size: 65536,
                    root: None,
                    zero_snarfs: 16384,
                },
            ],
            stats: BackupStats::default(),
        }
    }

    #[test]
    fn backup_objects_round_trip_plain_and_sealed_and_are_bound_to_their_name() {
        let o = object();
        for seal in [
            &Plain as &dyn Seal,
            &Aead::new(MasterKey::generate().unwrap()),
        ] {
            let bytes = o.encode(seal).unwrap();
            let back = BackupObject::decode(seal, "r", &o.id, bytes.clone()).unwrap();
            assert_eq!(back, o);
            assert_eq!(back.volumes[0].root_ref().unwrap().kind, BlobKind::Page);
            let other = BackupId::generate(1_800_000_001);
            assert!(BackupObject::decode(seal, "r", &other, bytes).is_err());
        }
        let a = Aead::new(MasterKey::generate().unwrap());
        let sealed = o.encode(&a).unwrap();
        assert!(
            !sealed.windows(7).any(|w| w == b"vm1.img"),
            "a name in plain text"
        );
    }

    #[test]
    fn hostile_backup_objects_are_damage() {
        let o = object();
        let bad = |f: &dyn Fn(&mut BackupObject)| {
            let mut x = o.clone();
            f(&mut x);
            let msg = BackupObject::decode(&Plain, "r", &o.id, x.encode(&Plain).unwrap())
                .unwrap_err()
                .to_string();
            assert!(msg.contains("is damaged"), "{msg}");
        };
        bad(&|x| x.volumes[0].name = "../escaped".into());
        bad(&|x| x.volumes[1].name = "vm1.img".into());
        bad(&|x| x.volumes[0].snarf_size = 0);
        bad(&|x| x.volumes[0].snarf_size = 64 << 20);
        bad(&|x| x.volumes[0].size = u64::MAX);
        bad(&|x| x.volumes[0].size = (1 << 28) * u64::from(x.volumes[0].snarf_size) + 1);
        bad(&|x| x.volumes[0].root = Some("00".repeat(64)));
        bad(&|x| x.volumes[0].root = Some("zz".into()));
        bad(&|x| x.host = "a\nb".into());
        bad(&|x| x.format = 1);
        let msg = BackupObject::decode(&Plain, "r", &o.id, b"{garbage".to_vec())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is damaged"), "{msg}");
    }
}
