//! The key slots of an encrypted repository on its backend (`keys/<id>`): unlocking the
//! master key with a passphrase, and `snarf repo key add|remove|list`. A slot is created
//! create-only before anything refers to it, and removing one happens under the repository
//! lock and never takes the last, so a repository never loses its only way in.

use super::crypto::MasterKey;
use super::keyslot::{Cost, KeySlot};
use crate::repo::backend::{Backend, Created, Key, Kind, ObjectId};
use crate::repo::error::{Error, Result};

/// Largest key slot read: a real one is a few hundred bytes.
const MAX_SLOT_BYTES: u64 = 16 << 10;

/// One key slot as `snarf repo key list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotInfo {
    /// The slot's id (its file is `keys/<id>`).
    pub id: String,
    /// When it was made, Unix seconds.
    pub created: u64,
    /// The host it was made on.
    pub host: String,
    /// Its label.
    pub label: String,
}

/// Every key slot's id with the slot, or why it cannot be read, in id order.
fn slots(backend: &dyn Backend) -> Result<Vec<(ObjectId, Result<KeySlot>)>> {
    let mut ids: Vec<ObjectId> = backend
        .list(Kind::KeySlot)?
        .into_iter()
        .filter_map(|(k, _)| match k {
            Key::KeySlot(id) => Some(id),
            _ => None,
        })
        .collect();
    ids.sort_by_key(|id| id.0);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let slot = match backend.read(&Key::KeySlot(id), MAX_SLOT_BYTES)? {
            Some(data) => KeySlot::parse(&data, &id.to_string()),
            None => continue,
        };
        out.push((id, slot));
    }
    Ok(out)
}

/// Whether the backend holds any key slot (a plain repository must not).
pub fn any(backend: &dyn Backend) -> Result<bool> {
    Ok(!backend.list(Kind::KeySlot)?.is_empty())
}

/// The master key that `passphrase` unwraps from one of the slots.
pub fn unlock(backend: &dyn Backend, passphrase: &[u8]) -> Result<MasterKey> {
    let all = slots(backend)?;
    let mut tried = Vec::new();
    for (id, slot) in &all {
        tried.push(Key::KeySlot(*id).name());
        match slot {
            Ok(s) => match s.unwrap_key(passphrase, &id.to_string()) {
                Ok(Some(k)) => return Ok(k),
                Ok(None) => {}
                Err(e) => log::warn!("{}: {e}", backend.location()),
            },
            Err(e) => log::warn!("{}: {e}", backend.location()),
        }
    }
    Err(Error::WrongPassphrase {
        repo: backend.location(),
        slots: if tried.is_empty() {
            "it has none: keys/ is empty".into()
        } else {
            tried.join(", ")
        },
    })
}

/// Adds a slot wrapping `master` under `passphrase`; returns its id.
pub fn add(
    backend: &dyn Backend,
    master: &MasterKey,
    passphrase: &[u8],
    cost: Cost,
    label: &str,
) -> Result<ObjectId> {
    let id = ObjectId::generate();
    let slot = KeySlot::wrap(master, passphrase, &id.to_string(), cost, label)?;
    match backend.create(&Key::KeySlot(id), &slot.to_json()?)? {
        Created::Created => Ok(id),
        Created::AlreadyExists => Err(Error::BadArgument(format!(
            "{}: key slot {id} exists already",
            backend.location()
        ))),
    }
}

/// The slots, for `snarf repo key list`; an unreadable slot is listed with its problem as
/// its label.
pub fn list(backend: &dyn Backend) -> Result<Vec<SlotInfo>> {
    Ok(slots(backend)?
        .into_iter()
        .map(|(id, s)| match s {
            Ok(s) => SlotInfo {
                id: id.to_string(),
                created: s.created,
                host: s.host,
                label: s.label,
            },
            Err(e) => SlotInfo {
                id: id.to_string(),
                created: 0,
                host: String::new(),
                label: format!("(damaged: {e})"),
            },
        })
        .collect())
}

/// Removes slot `id` (the caller holds the repository lock); refuses the last slot that
/// opens, and a slot that does not exist.
pub fn remove(backend: &dyn Backend, id: &str) -> Result<()> {
    let repo = backend.location();
    let target = ObjectId::parse(id).ok_or_else(|| {
        Error::BadArgument(format!(
            "{id:?} is not a key slot id; list them with `snarf repo key list {repo}`"
        ))
    })?;
    let all = slots(backend)?;
    if !all.iter().any(|(i, _)| *i == target) {
        return Err(Error::BadArgument(format!(
            "repository {repo} has no key slot {id}; list them with `snarf repo key list {repo}`"
        )));
    }
    let others = all
        .iter()
        .filter(|(i, s)| *i != target && s.is_ok())
        .count();
    if others == 0 {
        return Err(Error::BadArgument(format!(
            "key slot {id} is the last of repository {repo}: removing it would lock everyone out; add another first (`snarf repo key add {repo}`)"
        )));
    }
    backend.delete(&Key::KeySlot(target))?;
    Ok(())
}
