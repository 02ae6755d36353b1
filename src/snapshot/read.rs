//! Snapshot reads: a volume as a snapshot froze it, from the pre-image covering the
//! snapshot's epoch where there is one and from the live file elsewhere, and whether a
//! snarf is known to be a hole without reading it.

use super::{Engine, Error, Result, SnapVolume, Snapshot};
use crate::store::{Volume, VolumeState};

impl Engine {
    /// Reads a volume as the snapshot froze it; returns the bytes read (short at its end).
    pub fn read_snapshot(
        &self,
        snap: &Snapshot,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        Self::check_readable(snap)?;
        let sv = snap.volume(volume).ok_or_else(|| Error::NoSuchVolume {
            snapshot: snap.name().to_string(),
            volume: volume.to_string(),
        })?;
        let size = sv.attr.size;
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        let vol = &sv.volume;
        let shift = vol.snarf_shift();
        let mask = vol.snarf_size() - 1;
        let st = vol.read_state();
        let epoch = snap.epoch();
        // Consecutive snarfs the snapshot sees live are read with one pread, holding their
        // stripes until it is done; the others are read one by one.
        let mut run: Option<usize> = None;
        let mut held = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let index = pos >> shift;
            let within = pos & mask;
            let n = ((mask + 1 - within) as usize).min(len - done);
            let guard = self.stripes.read_recursive(vol.id(), index);
            let live =
                st.stamp(index) <= epoch && self.cache.location(vol.id(), index, epoch).is_none();
            if live {
                run.get_or_insert(done);
                held.push(guard);
                done += n;
                continue;
            }
            drop(guard);
            if let Some(start) = run.take() {
                Self::read_live(vol, offset, &mut buf[start..done], start)?;
                held.clear();
            }
            let out = &mut buf[done..done + n];
            self.read_snarf_as_of(snap, volume, sv, &st, index, within, out)?;
            done += n;
        }
        if let Some(start) = run.take() {
            Self::read_live(vol, offset, &mut buf[start..done], start)?;
        }
        drop(held);
        drop(st);
        // A break during the read may have freed pre-images it used.
        Self::check_readable(snap)?;
        Ok(len)
    }

    /// Reads `out` from the live file at `offset + at`, zeros past its end.
    fn read_live(vol: &Volume, offset: u64, out: &mut [u8], at: usize) -> Result<()> {
        let got = vol.pread(out, offset + at as u64)?;
        out[got..].fill(0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn read_snarf_as_of(
        &self,
        snap: &Snapshot,
        volume: &str,
        sv: &SnapVolume,
        st: &VolumeState,
        index: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let vol = &sv.volume;
        let _stripe = self.stripes.read(vol.id(), index);
        if let Some(r) = self.cache.read(vol.id(), index, snap.epoch(), within, out) {
            return r;
        }
        if st.stamp(index) <= snap.epoch() {
            let pos = (index << vol.snarf_shift()) + within;
            let got = vol.pread(out, pos)?;
            out[got..].fill(0);
            return Ok(());
        }
        if sv.is_stored(index) {
            return Err(Error::StoredInBackup {
                snapshot: snap.name().to_string(),
                volume: volume.to_string(),
                snarf: index,
            });
        }
        Self::check_readable(snap)?;
        Err(Error::Internal(format!(
            "snapshot \"{}\" has no pre-image for snarf {index} of volume \"{volume}\"",
            snap.name()
        )))
    }

    /// Whether snarf `index` of a snapshot's volume is all zeros without reading it, when
    /// that is cheap to know (a zero pre-image, or a hole in the live file); `false` means
    /// "not known to be zero".
    pub fn snapshot_snarf_is_hole(&self, snap: &Snapshot, sv: &SnapVolume, index: u64) -> bool {
        let vol = &sv.volume;
        let st = vol.read_state();
        let _stripe = self.stripes.read(vol.id(), index);
        if let Some(zero) = self.cache.is_zero(vol.id(), index, snap.epoch()) {
            return zero;
        }
        st.stamp(index) <= snap.epoch() && vol.snarf_is_hole(index)
    }
}
