//! The fault-injection decorator (only with the `fault-injection` feature): wraps any
//! backend and makes every mutating operation that returned (a write, a create, a delete, a
//! finished upload) a fault point named `OP.FOLDER#N`, the Nth such operation of this
//! process, e.g. `create.backups#1` or `finish.packs#3`. A crash suite first runs a
//! scenario with a census (every point reached is recorded, in order), then kills the
//! scenario at each point of the census by arming `SNARF_FAULT_POINT` with its name: every
//! instant between two durable operations is covered without a hand-kept list, on every
//! backend the decorator wraps (a folder today, S3 later).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::super::error::Result;
use super::super::fault;
use super::{Backend, Created, Key, Kind, LockGuard, Upload};

/// A backend whose mutating operations are fault points (see the module documentation).
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    points: std::sync::Arc<Points>,
}

/// Counts per point name, and the census when one is kept in memory.
#[derive(Debug, Default)]
struct Points {
    counts: Mutex<HashMap<String, u64>>,
    census: Mutex<Option<Vec<String>>>,
}

impl Points {
    fn reached(&self, op: &str, kind: Kind) {
        let base = format!("{op}.{}", kind.folder());
        let n = {
            let mut c = self.counts.lock();
            let n = c.entry(base.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let name = format!("{base}#{n}");
        if let Some(census) = self.census.lock().as_mut() {
            census.push(name.clone());
        }
        fault::dynamic_point(&name);
    }
}

impl<B: Backend> Faulty<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Faulty<B> {
        Faulty {
            inner,
            points: Default::default(),
        }
    }

    /// Wraps `inner` and records every point reached, for [`Faulty::census`].
    pub fn with_census(inner: B) -> Faulty<B> {
        let f = Faulty::new(inner);
        *f.points.census.lock() = Some(Vec::new());
        f
    }

    /// The points reached so far, in order (empty without a census).
    pub fn census(&self) -> Vec<String> {
        self.points.census.lock().clone().unwrap_or_default()
    }
}

impl<B: Backend> Backend for Faulty<B> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn local_root(&self) -> Option<&std::path::Path> {
        self.inner.local_root()
    }
    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
        self.inner.read(key, cap)
    }
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.read_range(key, offset, len)
    }
    fn size(&self, key: &Key) -> Result<Option<u64>> {
        self.inner.size(key)
    }
    fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
        self.inner.write(key, data)?;
        self.points.reached("write", key.kind());
        Ok(())
    }
    fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
        let c = self.inner.create(key, data)?;
        self.points.reached("create", key.kind());
        Ok(c)
    }
    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
        Ok(Box::new(FaultyUpload {
            inner: self.inner.upload(key)?,
            kind: key.kind(),
            points: self.points.clone(),
        }))
    }
    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, key: &Key) -> Result<bool> {
        let d = self.inner.delete(key)?;
        self.points.reached("delete", key.kind());
        Ok(d)
    }
    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
        self.inner.lock(holder, wait)
    }
    fn sweep_leftovers(&self) -> Result<u64> {
        self.inner.sweep_leftovers()
    }
}

struct FaultyUpload {
    inner: Box<dyn Upload>,
    kind: Kind,
    points: std::sync::Arc<Points>,
}

impl Upload for FaultyUpload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write(data)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let FaultyUpload {
            inner,
            kind,
            points,
        } = *self;
        inner.finish()?;
        points.reached("finish", kind);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::LocalDir;
    use super::*;
    use crate::repo::ids::{BackupId, PackId};

    #[test]
    fn every_durable_operation_is_a_numbered_point_in_the_census() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDir::new(dir.path());
        local.create_layout().unwrap();
        let b = Faulty::with_census(local);
        let pack = Key::Pack(PackId::generate());
        let mut u = b.upload(&pack).unwrap();
        u.write(b"x").unwrap();
        u.finish().unwrap();
        let backup = Key::Backup(BackupId::generate(1_800_000_000));
        b.create(&backup, b"commit").unwrap();
        b.write(&backup, b"again").unwrap();
        b.create(&backup, b"taken").unwrap();
        b.delete(&pack).unwrap();
        // Reads and listings are not points.
        b.read(&backup, 100).unwrap();
        b.list(Kind::Pack).unwrap();
        assert_eq!(
            b.census(),
            [
                "finish.packs#1",
                "create.backups#1",
                "write.backups#1",
                "create.backups#2",
                "delete.packs#1"
            ]
        );
    }
}
