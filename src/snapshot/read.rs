//! Snapshot reads: a volume as a snapshot froze it, from the pre-image covering the
//! snapshot's epoch where there is one and from the live file elsewhere, and whether a
//! snarf is known to be a hole without reading it.

use super::{Engine, Error, Result, SnapVolume, Snapshot, SnarfSet};
use crate::store::{Volume, VolumeId, VolumeState};

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
        let unsure = Self::unsure(snap, sv);
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
            let live = st.stamp(index) <= epoch
                && !(unsure && sv.is_stored(index))
                && self.cache.location(vol.id(), index, epoch).is_none();
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
        let stored_unsure = Self::unsure(snap, sv) && sv.is_stored(index);
        if st.stamp(index) <= snap.epoch() && !stored_unsure {
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

    /// Whether the snapshot predates an open that found its volume's stamps lost: a snarf
    /// it handed to a backup may have been written since even where the stamp says not, so
    /// such a snarf is read from where the backup stored it, never from the live file.
    fn unsure(snap: &Snapshot, sv: &SnapVolume) -> bool {
        snap.epoch() < sv.volume.uncertain_before() && sv.stored_count() > 0
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
        st.stamp(index) <= snap.epoch()
            && !(Self::unsure(snap, sv) && sv.is_stored(index))
            && vol.snarf_is_hole(index)
    }
}

impl Engine {
    /// Whether the pre-image a snapshot sees for snarf `index` is all zeros; `false` when
    /// it has none there.
    fn zero_preimage(&self, snap: &Snapshot, vol: VolumeId, index: u64) -> bool {
        let _stripe = self.stripes.read(vol, index);
        self.cache.is_zero(vol, index, snap.epoch()) == Some(true)
    }

    /// The first snarf at or after `from` of a snapshot's volume that may hold data; every
    /// snarf from `from` up to it reads as zeros through the snapshot. `None`: zeros to the
    /// end. Holes of the live file are skipped with `SEEK_DATA`, and unwritten groups of
    /// stamps in one step, so a sparse volume costs in proportion to its data.
    pub fn next_data_snarf(&self, snap: &Snapshot, sv: &SnapVolume, from: u64) -> Option<u64> {
        let vol = &sv.volume;
        let count = sv.snarf_count();
        let shift = vol.snarf_shift();
        let epoch = snap.epoch();
        let st = vol.read_state();
        let mut i = from;
        while i < count {
            // The live file is looked at before the stamps: a hole there is the snapshot's
            // content unless a write since the snapshot began (its stamp is set first).
            let live = match vol.seek(i << shift, true) {
                Ok(Some(at)) => (at >> shift).clamp(i, count),
                Ok(None) => count,
                Err(_) => return Some(i),
            };
            let mut j = i;
            while let Some(k) = st.first_newer(j, epoch).filter(|&k| k < live) {
                if !self.zero_preimage(snap, vol.id(), k) {
                    return Some(k);
                }
                j = k + 1;
            }
            if Self::unsure(snap, sv) {
                // A snarf handed to a backup may not be what the live file holds now.
                if let Some(k) = sv.next_stored(i).filter(|&k| k < live) {
                    return Some(k);
                }
            }
            if live >= count {
                return None;
            }
            // Live data: the snapshot's too, unless rewritten since over a zero pre-image.
            if st.stamp(live) <= epoch || !self.zero_preimage(snap, vol.id(), live) {
                return Some(live);
            }
            i = live + 1;
        }
        None
    }

    /// The first snarf at or after `from` of a snapshot's volume known to read as zeros
    /// (`None`: none is known before the end). Only whole snarfs that are holes of the live
    /// file (and were not written since the snapshot, or were over a zero pre-image) count,
    /// so an answer may come later than the first zeros but never marks data as a hole.
    pub fn next_hole_snarf(&self, snap: &Snapshot, sv: &SnapVolume, from: u64) -> Option<u64> {
        let vol = &sv.volume;
        let count = sv.snarf_count();
        let shift = vol.snarf_shift();
        let size = 1u64 << shift;
        let epoch = snap.epoch();
        let st = vol.read_state();
        let mut i = from;
        while i < count {
            let hole = match vol.seek(i << shift, false) {
                Ok(Some(at)) => at,
                Ok(None) => return None,
                Err(_) => return None,
            };
            let c = hole.div_ceil(size).max(i);
            if c >= count {
                return None;
            }
            // Snarf `c` starts in a hole; it is one if no data follows within it.
            let whole = match vol.seek(c << shift, true) {
                Ok(Some(data)) => data >= (c + 1) << shift,
                Ok(None) => true,
                Err(_) => false,
            };
            if !whole {
                i = c + 1;
                continue;
            }
            let stored_unsure = Self::unsure(snap, sv) && sv.is_stored(c);
            if (st.stamp(c) <= epoch && !stored_unsure) || self.zero_preimage(snap, vol.id(), c) {
                return Some(c);
            }
            i = c + 1;
        }
        None
    }

    /// The snarfs of a snapshot's volume that may hold data; every other one reads as
    /// zeros, so a backup records those without reading them.
    pub fn data_snarfs(&self, snap: &Snapshot, sv: &SnapVolume) -> SnarfSet {
        let count = sv.snarf_count();
        let mut set = SnarfSet::new(count);
        let mut i = 0;
        while let Some(d) = self.next_data_snarf(snap, sv, i) {
            let end = self.next_hole_snarf(snap, sv, d + 1).unwrap_or(count);
            set.insert_range(d, end);
            i = end;
        }
        set
    }
}
