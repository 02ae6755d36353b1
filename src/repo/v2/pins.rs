//! Pins (format 2): `pins/<name>` objects, one pack id per line, that keep packs from gc
//! for a reader outside the repository whether or not a committed backup references them.
//! The mount daemon pins the packs holding the snarfs whose pre-images it freed on a job's
//! acknowledgement, so a snapshot still being read keeps its data even if that backup is
//! abandoned; gc (`gc::referenced`) reads every pin before it deletes anything.
//!
//! In an encrypted repository a pin is sealed (bound to its object name) and stored under a
//! keyed hash of its name, so neither the pack ids nor the snapshot names are in clear.

use std::collections::HashSet;

use super::crypto;
use super::gc::MAX_PIN_BYTES;
use super::repository::Repository;
use crate::repo::backend::Key;
use crate::repo::error::{Error, Fix, Result};
use crate::repo::ids::PackId;

impl Repository {
    fn pin_key(&self, name: &str) -> Result<Key> {
        let bad = || {
            Error::BadArgument(format!(
                "{name:?} is not a pin name (one path component, not hidden)"
            ))
        };
        let key = Key::pin(name).ok_or_else(bad)?;
        match self.master_key() {
            None => Ok(key),
            Some(k) => Key::pin(&k.hidden_name(name)).ok_or_else(bad),
        }
    }

    /// The packs pin `name` holds (none if there is no such pin).
    pub fn pinned(&self, name: &str) -> Result<HashSet<PackId>> {
        self.read_pin(&self.pin_key(name)?)
    }

    /// The packs of the pin stored as `key` (none if there is none); a sealed pin that
    /// fails authentication is an error naming it.
    pub(crate) fn read_pin(&self, key: &Key) -> Result<HashSet<PackId>> {
        let Some(data) = self.backend().read(key, MAX_PIN_BYTES)? else {
            return Ok(HashSet::new());
        };
        let data = if self.seal().is_plain() {
            data
        } else {
            crypto::open_object(self.seal(), &key.name(), "pin", data).map_err(|why| {
                Error::Damaged {
                    repo: self.location().into(),
                    path: key.name().into(),
                    why,
                    fix: Fix::Check,
                }
            })?
        };
        Ok(String::from_utf8_lossy(&data)
            .lines()
            .filter_map(PackId::parse)
            .collect())
    }

    /// Adds `packs` to pin `name` (created if missing); durable when it returns.
    pub fn pin(&self, name: &str, packs: &[PackId]) -> Result<()> {
        let key = self.pin_key(name)?;
        let have = self.pinned(name)?;
        let mut text = String::new();
        let mut all: Vec<PackId> = have.iter().copied().collect();
        all.sort();
        let before = all.len();
        for p in packs {
            if !have.contains(p) && !all[before..].contains(p) {
                all.push(*p);
            }
        }
        if all.len() == before && self.backend().size(&key)?.is_some() {
            return Ok(());
        }
        for p in &all {
            text.push_str(&format!("{p}\n"));
        }
        if text.len() as u64 > MAX_PIN_BYTES {
            return Err(Error::BadArgument(format!(
                "pin {name} would hold {} packs, more than gc reads from one pin",
                all.len()
            )));
        }
        let data = if self.seal().is_plain() {
            text.into_bytes()
        } else {
            crypto::seal_object(self.seal(), &key.name(), "pin", text.into_bytes())?
        };
        self.backend().write(&key, &data)
    }

    /// Removes pin `name`; its packs go at a later gc if nothing else uses them.
    pub fn unpin(&self, name: &str) -> Result<()> {
        let key = self.pin_key(name)?;
        self.backend().delete(&key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::{Backend, LocalDir};
    use std::sync::Arc;

    #[test]
    fn pins_add_up_and_go_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(&dir.path().join("r"));
        b.create_layout().unwrap();
        let b: Arc<dyn Backend> = Arc::new(b);
        let repo = Repository::init(b, &super::super::InitOptions::default()).unwrap();
        let (a, b) = (PackId::generate(), PackId::generate());
        repo.pin("snap-1", &[a]).unwrap();
        repo.pin("snap-1", &[a, b, b]).unwrap();
        assert_eq!(repo.pinned("snap-1").unwrap(), HashSet::from([a, b]));
        let text = std::fs::read_to_string(dir.path().join("r/pins/snap-1")).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(super::super::gc::referenced(&repo).unwrap().contains(&b));
        repo.unpin("snap-1").unwrap();
        assert!(repo.pinned("snap-1").unwrap().is_empty());
        repo.unpin("snap-1").unwrap();
        for bad in ["", ".hidden", "a/b", ".."] {
            assert!(repo.pin(bad, &[a]).is_err(), "{bad:?}");
        }
    }
}
