//! The one way a snapshot is read when backups may have taken snarfs of it: once a backup
//! stored a snarf, the daemon frees its pre-image and the engine answers
//! [`Error::StoredInBackup`] for it. [`StoredSnarfs`] is where such snarfs come back from
//! (the jobs layer plugs the repository in); [`Engine::read_snapshot_through`] reads
//! everything else from the engine and asks it only for those.

use super::{Engine, Error, Snapshot};

/// Where snarfs come back from once a backup stored them and their pre-images were freed.
pub trait StoredSnarfs {
    /// The source's error; it carries the engine's own errors too.
    type Error: From<Error>;

    /// Reads bytes `within..within + buf.len()` of snarf `snarf` of `volume` in `snap`,
    /// which a backup stored.
    fn read_stored(
        &self,
        snap: &Snapshot,
        volume: &str,
        snarf: u64,
        within: u64,
        buf: &mut [u8],
    ) -> Result<(), Self::Error>;
}

impl Engine {
    /// Reads a volume as the snapshot froze it, like [`Engine::read_snapshot`], except that
    /// snarfs a backup stored are read from `stored` (without it they fail as
    /// [`Error::StoredInBackup`]). Returns the bytes read (short at the volume's end).
    pub fn read_snapshot_through<S: StoredSnarfs + ?Sized>(
        &self,
        snap: &Snapshot,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
        stored: Option<&S>,
    ) -> Result<usize, S::Error> {
        // The common case: nothing in the range was handed to a backup.
        match self.read_snapshot(snap, volume, offset, buf) {
            Err(Error::StoredInBackup { .. }) => {}
            other => return Ok(other?),
        }
        let Some(stored) = stored else {
            return Ok(self.read_snapshot(snap, volume, offset, buf)?);
        };
        let sv = snap.volume(volume).ok_or_else(|| Error::NoSuchVolume {
            snapshot: snap.name().to_string(),
            volume: volume.to_string(),
        })?;
        let size = sv.attr.size;
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        let ss = sv.volume.snarf_size();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let snarf = pos / ss;
            let within = pos % ss;
            let n = ((ss - within) as usize).min(len - done);
            let piece = &mut buf[done..done + n];
            match self.read_snapshot(snap, volume, pos, piece) {
                Ok(_) => {}
                Err(Error::StoredInBackup { .. }) => {
                    stored.read_stored(snap, volume, snarf, within, piece)?
                }
                Err(e) => return Err(e.into()),
            }
            done += n;
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::snapshot::EngineOptions;
    use crate::store::{InitOptions, Store};

    /// Serves stored snarfs from a copy of the volume as it was, recording each request.
    struct Copy {
        bytes: Vec<u8>,
        snarf: u64,
        asked: RefCell<Vec<(u64, u64, usize)>>,
    }

    impl StoredSnarfs for Copy {
        type Error = Error;

        fn read_stored(
            &self,
            _snap: &Snapshot,
            _volume: &str,
            snarf: u64,
            within: u64,
            buf: &mut [u8],
        ) -> Result<(), Error> {
            self.asked.borrow_mut().push((snarf, within, buf.len()));
            if snarf == 3 {
                return Err(Error::Internal("the copy has no snarf 3".into()));
            }
            let at = (snarf * self.snarf + within) as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn only_stored_snarfs_come_from_the_source_and_its_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        Store::init(&root, &InitOptions::default()).unwrap();
        let store = Store::open(&root, "test").unwrap();
        let opts = EngineOptions::from_store(&store);
        let engine = Engine::new(store, opts).unwrap();
        let vol = engine.create_volume("v", 0).unwrap();
        let ss = vol.snarf_size();
        let old: Vec<u8> = (0..4 * ss).map(|i| (i % 251) as u8).collect();
        engine.write(&vol, 0, &old).unwrap();
        let snap = engine.take("s").unwrap();
        // Snarfs 1 and 3 change after the snapshot; a backup stores them, so their
        // pre-images are freed and only the source has them.
        engine.write(&vol, ss, &vec![7u8; ss as usize]).unwrap();
        engine.write(&vol, 3 * ss, &vec![8u8; ss as usize]).unwrap();
        engine.release_snarf(&snap, vol.id(), 1).unwrap();
        engine.release_snarf(&snap, vol.id(), 3).unwrap();
        let copy = Copy {
            bytes: old.clone(),
            snarf: ss,
            asked: RefCell::new(Vec::new()),
        };

        // A read straddling snarfs 0, 1 and 2 takes only the piece of snarf 1 from the copy.
        let (from, len) = (ss / 2, 2 * ss as usize);
        let mut buf = vec![0u8; len];
        let n = engine
            .read_snapshot_through(&snap, "v", from, &mut buf, Some(&copy))
            .unwrap();
        assert_eq!(n, len);
        assert!(buf == old[from as usize..from as usize + len]);
        assert_eq!(*copy.asked.borrow(), [(1, 0, ss as usize)]);

        // Without a source, a stored snarf is what the engine says it is.
        let none: Option<&Copy> = None;
        let err = engine
            .read_snapshot_through(&snap, "v", ss, &mut buf[..10], none)
            .unwrap_err();
        assert!(
            matches!(err, Error::StoredInBackup { snarf: 1, .. }),
            "{err}"
        );

        // The source's own failure is the read's, not a silent short read.
        let err = engine
            .read_snapshot_through(&snap, "v", 3 * ss + 5, &mut buf[..10], Some(&copy))
            .unwrap_err();
        assert!(err.to_string().contains("no snarf 3"), "{err}");
        // Past the end of the volume nothing is read, from either.
        let n = engine
            .read_snapshot_through(&snap, "v", 4 * ss, &mut buf, Some(&copy))
            .unwrap();
        assert_eq!(n, 0);
    }
}
