//! Typed object keys of a repository. Every object a backend stores is named by a [`Key`],
//! never by a free string: a key is made from a typed id ([`PackId`], [`BackupId`], ...), and
//! a name read back from a listing becomes a key only through [`Key::parse`], which accepts
//! exactly the names [`Key::name`] makes. So no name from disk or from an object store can
//! lead a read or a deletion outside its folder.
//!
//! ```text
//! config                 the repository's format file
//! keys/<id>              key slots (32 hex digits)
//! packs/<xx>/<id>        packs, fanned out by the first byte of their id (32 hex digits)
//! packs/<id>.pack        format 1 packs an upgraded repository keeps (legacy packs)
//! index/<id>             index runs (32 hex digits)
//! backups/<id>           committed backups (YYYYMMDD-HHMMSS-xxxx)
//! finishing/<name>       finishing records (a backup id, or prune-<32 hex digits>)
//! pins/<name>            pins (a name the store's naming rules accept)
//! state/<name>           small state objects: last-finishing, gc-pending
//! ```

use std::fmt;

use super::super::ids::{BackupId, PackId};

/// The folders of a repository, one per kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `config`.
    Config,
    /// `keys/`.
    KeySlot,
    /// `packs/`.
    Pack,
    /// `index/`.
    Index,
    /// `backups/`.
    Backup,
    /// `finishing/`.
    Finishing,
    /// `pins/`.
    Pin,
    /// `state/`.
    State,
}

impl Kind {
    /// Every kind that is a folder of objects (all but `config`).
    pub const FOLDERS: [Kind; 7] = [
        Kind::KeySlot,
        Kind::Pack,
        Kind::Index,
        Kind::Backup,
        Kind::Finishing,
        Kind::Pin,
        Kind::State,
    ];

    /// The folder's name (`config` for the format file).
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::KeySlot => "keys",
            Kind::Pack => "packs",
            Kind::Index => "index",
            Kind::Backup => "backups",
            Kind::Finishing => "finishing",
            Kind::Pin => "pins",
            Kind::State => "state",
        }
    }
}

/// A random 128-bit object id (index runs, key slots, prune records), 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// A fresh id, unique with overwhelming probability.
    pub fn generate() -> ObjectId {
        ObjectId(PackId::generate().0)
    }

    /// Parses the 32-digit lowercase hex form snarf writes.
    pub fn parse(s: &str) -> Option<ObjectId> {
        PackId::parse(s)
            .filter(|p| p.to_string() == s)
            .map(|p| ObjectId(p.0))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PackId(self.0).fmt(f)
    }
}

/// What a finishing record is about: a backup being committed, or a prune.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum FinishingName {
    /// The finishing of backup `id`.
    Backup(BackupId),
    /// A prune, named by a random id.
    Prune(ObjectId),
}

/// The small state objects of `state/`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum StateName {
    /// What the last completed finishing did.
    LastFinishing,
    /// Marker: some packs may be unreferenced; the next finishing collects them.
    GcPending,
}

impl StateName {
    /// Every state object.
    pub const ALL: [StateName; 2] = [StateName::LastFinishing, StateName::GcPending];

    fn name(self) -> &'static str {
        match self {
            StateName::LastFinishing => "last-finishing",
            StateName::GcPending => "gc-pending",
        }
    }
}

/// The name of an object in a repository.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Key {
    /// The format file.
    Config,
    /// A key slot (encrypted repositories).
    KeySlot(ObjectId),
    /// A pack.
    Pack(PackId),
    /// A format 1 pack kept by an upgrade.
    LegacyPack(PackId),
    /// An index run.
    Index(ObjectId),
    /// A committed backup.
    Backup(BackupId),
    /// A finishing record.
    Finishing(FinishingName),
    /// A pin: packs kept from gc for a reader outside the repository.
    Pin(String),
    /// A state object.
    State(StateName),
}

/// Longest pin name accepted (the store's name rules allow 255 bytes too).
const MAX_PIN: usize = 255;

impl Key {
    /// The pin `name`, if the store's naming rules accept it.
    pub fn pin(name: &str) -> Option<Key> {
        pin_ok(name).then(|| Key::Pin(name.to_string()))
    }

    /// The kind (folder) of this key.
    pub fn kind(&self) -> Kind {
        match self {
            Key::Config => Kind::Config,
            Key::KeySlot(_) => Kind::KeySlot,
            Key::Pack(_) | Key::LegacyPack(_) => Kind::Pack,
            Key::Index(_) => Kind::Index,
            Key::Backup(_) => Kind::Backup,
            Key::Finishing(_) => Kind::Finishing,
            Key::Pin(_) => Kind::Pin,
            Key::State(_) => Kind::State,
        }
    }

    /// The object's name inside the repository, `/`-separated.
    pub fn name(&self) -> String {
        match self {
            Key::Config => "config".into(),
            Key::KeySlot(id) => format!("keys/{id}"),
            Key::Pack(id) => {
                let hex = id.to_string();
                format!("packs/{}/{hex}", &hex[..2])
            }
            Key::LegacyPack(id) => format!("packs/{id}.pack"),
            Key::Index(id) => format!("index/{id}"),
            Key::Backup(id) => format!("backups/{id}"),
            Key::Finishing(FinishingName::Backup(id)) => format!("finishing/{id}"),
            Key::Finishing(FinishingName::Prune(id)) => format!("finishing/prune-{id}"),
            Key::Pin(name) => format!("pins/{name}"),
            Key::State(s) => format!("state/{}", s.name()),
        }
    }

    /// The key of object `name` of kind `kind` (the part after the folder, e.g. `ab/ab01…`
    /// for a pack), or `None` if snarf never makes such a name.
    pub fn parse(kind: Kind, name: &str) -> Option<Key> {
        match kind {
            Kind::Config => (name.is_empty()).then_some(Key::Config),
            Kind::KeySlot => ObjectId::parse(name).map(Key::KeySlot),
            Kind::Pack => {
                if let Some(hex) = name.strip_suffix(".pack") {
                    let id = PackId::parse(hex)?;
                    return (id.to_string() == hex).then_some(Key::LegacyPack(id));
                }
                let (fan, hex) = name.split_once('/')?;
                let id = PackId::parse(hex)?;
                let own = id.to_string();
                // Lowercase as snarf writes it, in the fan-out folder of its own first byte.
                (own == hex && fan == &own[..2]).then_some(Key::Pack(id))
            }
            Kind::Index => ObjectId::parse(name).map(Key::Index),
            Kind::Backup => BackupId::parse(name).map(Key::Backup),
            Kind::Finishing => match name.strip_prefix("prune-") {
                Some(hex) => {
                    ObjectId::parse(hex).map(|id| Key::Finishing(FinishingName::Prune(id)))
                }
                None => BackupId::parse(name).map(|id| Key::Finishing(FinishingName::Backup(id))),
            },
            Kind::Pin => Key::pin(name),
            Kind::State => StateName::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .map(Key::State),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A pin name: what the store accepts as a snapshot or volume name, so it is one path
/// component, and not hidden (hidden names are a folder backend's temporary files).
fn pin_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= MAX_PIN
        && crate::store::validate_name("pin", name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_from_its_own_name_only() {
        let pack = PackId::generate();
        let backup = BackupId::generate(1_800_000_000);
        let obj = ObjectId::generate();
        let keys = [
            Key::KeySlot(obj),
            Key::Pack(pack),
            Key::Index(obj),
            Key::Backup(backup.clone()),
            Key::Finishing(FinishingName::Backup(backup)),
            Key::Finishing(FinishingName::Prune(obj)),
            Key::pin("snapshot-abc-1f").unwrap(),
            Key::LegacyPack(pack),
            Key::State(StateName::LastFinishing),
            Key::State(StateName::GcPending),
        ];
        for k in keys {
            let name = k.name();
            let (folder, rest) = name.split_once('/').unwrap();
            assert_eq!(folder, k.kind().folder());
            assert_eq!(Key::parse(k.kind(), rest), Some(k.clone()), "{name}");
        }
        assert_eq!(Key::Config.name(), "config");
    }

    #[test]
    fn hostile_names_are_not_keys() {
        let hex = PackId::generate().to_string();
        let upper = hex.to_uppercase();
        for (kind, name) in [
            (Kind::Pack, format!("../{hex}")),
            (Kind::Pack, format!("zz/{hex}")),
            (Kind::Pack, hex.clone()),
            (Kind::Pack, format!("{}/{upper}", &upper[..2])),
            (Kind::Index, upper.clone()),
            (Kind::Index, format!("{hex}.tmp")),
            (Kind::Index, "../../etc/passwd".to_string()),
            (Kind::Backup, "20260101-000000-zzzz".to_string()),
            (Kind::Backup, ".20260101-000000-0000".to_string()),
            (Kind::Finishing, format!("prune-{upper}")),
            (Kind::Finishing, "prune-".to_string()),
            (Kind::Pin, "../x".to_string()),
            (Kind::Pin, ".hidden".to_string()),
            (Kind::Pin, "a/b".to_string()),
            (Kind::Pin, String::new()),
            (Kind::KeySlot, "x".to_string()),
            (Kind::KeySlot, upper.clone()),
            (Kind::Pack, format!("{}/{upper}", &hex[..2])),
            (Kind::Config, "x".to_string()),
            (Kind::Pack, format!("{upper}.pack")),
            (Kind::Pack, format!("{hex}.part")),
            (Kind::State, "other".to_string()),
        ] {
            assert_eq!(Key::parse(kind, &name), None, "{kind:?} {name:?}");
        }
    }
}
