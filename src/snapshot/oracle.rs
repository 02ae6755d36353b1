//! The snapshot engine's reference model, for tests: plain in-memory copies of every live
//! volume and of every volume at every snapshot, changed the obvious way. A correct engine
//! (and a correct filesystem over it) shows exactly what this shows, so the engine's model
//! test (`model_tests.rs`) and the filesystem's reference test (`fuse/reftests.rs`) check
//! against the same oracle.

use std::collections::BTreeMap;

/// A volume as the oracle holds it.
#[derive(Debug, Clone)]
pub(crate) struct OracleVolume {
    /// The oracle's own id of the volume: kept across renames, never reused.
    pub id: u64,
    /// Every byte of it.
    pub data: Vec<u8>,
}

/// A snapshot as the oracle holds it: the volumes as they were when it was taken.
#[derive(Debug)]
pub(crate) struct OracleSnapshot {
    /// Its name.
    pub name: String,
    /// The volumes it froze, by name.
    pub volumes: BTreeMap<String, OracleVolume>,
    /// (volume id, snarf) pairs acknowledged as stored by a backup: reads may come back as
    /// `StoredInBackup` instead of data.
    pub acked: Vec<(u64, u64)>,
    /// The engine broke it (the oracle does not predict when; tests learn it).
    pub broken: bool,
}

/// The live volumes and the snapshots, oldest snapshot first.
#[derive(Debug, Default)]
pub(crate) struct Oracle {
    /// Live volumes by name.
    pub live: BTreeMap<String, OracleVolume>,
    /// Snapshots in the order they were taken.
    pub snaps: Vec<OracleSnapshot>,
    next_id: u64,
}

impl Oracle {
    /// A new live volume of `size` zero bytes (replacing none: the caller checks the name
    /// is free); returns its id.
    pub fn create(&mut self, name: &str, size: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.live.insert(
            name.to_string(),
            OracleVolume {
                id,
                data: vec![0; size as usize],
            },
        );
        id
    }

    /// Writes `data` at `offset` of live volume `name`, growing it (with zeros in any gap).
    pub fn write(&mut self, name: &str, offset: u64, data: &[u8]) {
        let v = self.live_mut(name);
        let end = offset as usize + data.len();
        if v.data.len() < end {
            v.data.resize(end, 0);
        }
        v.data[offset as usize..end].copy_from_slice(data);
    }

    /// Truncates or extends live volume `name` to `size` bytes.
    pub fn resize(&mut self, name: &str, size: u64) {
        self.live_mut(name).data.resize(size as usize, 0);
    }

    /// Renames a live volume, replacing one already called `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        if from != to {
            let v = self
                .live
                .remove(from)
                .unwrap_or_else(|| panic!("oracle: no live volume {from}"));
            self.live.insert(to.to_string(), v);
        }
    }

    /// Deletes a live volume; snapshots keep theirs.
    pub fn delete(&mut self, name: &str) {
        self.live.remove(name);
    }

    /// Takes snapshot `name` of every live volume.
    pub fn take(&mut self, name: &str) {
        self.snaps.push(OracleSnapshot {
            name: name.to_string(),
            volumes: self.live.clone(),
            acked: Vec::new(),
            broken: false,
        });
    }

    /// Releases the snapshot at position `index` (oldest first); returns it.
    pub fn release_at(&mut self, index: usize) -> OracleSnapshot {
        self.snaps.remove(index)
    }

    /// Releases snapshot `name`, if there is one.
    pub fn release(&mut self, name: &str) -> Option<OracleSnapshot> {
        let i = self.snaps.iter().position(|s| s.name == name)?;
        Some(self.release_at(i))
    }

    /// Snapshot `name`, if there is one.
    pub fn snapshot(&self, name: &str) -> Option<&OracleSnapshot> {
        self.snaps.iter().find(|s| s.name == name)
    }

    fn live_mut(&mut self, name: &str) -> &mut OracleVolume {
        self.live
            .get_mut(name)
            .unwrap_or_else(|| panic!("oracle: no live volume {name}"))
    }
}

/// What a read of up to `len` bytes at `offset` returns from a file holding `data`: the
/// bytes there, short at the end, none past it.
pub(crate) fn expected(data: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset.min(data.len() as u64)) as usize;
    let end = start + (data.len() - start).min(len);
    &data[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_keeps_snapshots_apart_from_live_volumes() {
        let mut o = Oracle::default();
        let a = o.create("a", 4);
        o.write("a", 2, b"xyz");
        assert_eq!(o.live["a"].data, b"\0\0xyz");
        o.take("s");
        o.write("a", 0, b"!");
        o.resize("a", 2);
        o.rename("a", "b");
        assert_eq!(o.live["b"].id, a);
        assert_eq!(o.live["b"].data, b"!\0");
        assert_eq!(o.snapshot("s").unwrap().volumes["a"].data, b"\0\0xyz");
        o.delete("b");
        assert!(o.live.is_empty());
        assert_eq!(o.release("s").map(|s| s.name), Some("s".to_string()));
        assert!(o.release("s").is_none());
        assert_ne!(o.create("c", 0), a, "ids are never reused");
    }

    #[test]
    fn expected_reads_are_short_at_the_end_and_empty_past_it() {
        let data = b"0123456789";
        assert_eq!(expected(data, 0, 4), b"0123");
        assert_eq!(expected(data, 8, 4), b"89");
        assert_eq!(expected(data, 10, 4), b"");
        assert_eq!(expected(data, u64::MAX, 4), b"");
        assert_eq!(expected(data, 3, 0), b"");
    }
}
