//! The write path: live writes and resizes, and the copy-on-write capture of a snarf's old
//! contents before the first write to it after a snapshot that still needs them.

use super::cow::Record;
use super::preimage::{Preimage, Reservation, Stored};
use super::throttle::Step;
use super::{store, Capture, Engine, Error, Result};
use crate::chain::ErrorChain;
use crate::store::{Volume, VolumeId, VolumeState};

/// Whether a buffer is all zeros (checked 16 bytes at a time).
fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

impl Engine {
    /// Writes live data at any offset and length, growing the volume if the write ends
    /// past it. Captures pre-images first where a snapshot needs them; waits (never fails)
    /// when the pre-image budgets are full. Nothing a snapshot needs makes it fail: the
    /// only errors are the write's own (its size, the volume's I/O).
    pub fn write(&self, vol: &Volume, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let max = vol.max_size();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= max)
            .ok_or(Error::TooLarge {
                offset,
                len: data.len() as u64,
                max,
            })?;
        if let Some(r) = vol.restore() {
            // Snarfs the write covers in part come from the backup first, before any lock
            // of the engine is taken (a fetch may wait for the repository).
            r.prepare_write(vol, offset, data.len() as u64)?;
        }
        let spilled_before = self.cache.stats().disk_used;
        self.until_done(|| self.write_once(vol, offset, end, data))?;
        vol.touch_data();
        vol.io().record_write(data.len());
        self.pace(spilled_before);
        Ok(())
    }

    /// One try of [`Engine::write`], with the locks it needs held until it returns.
    fn write_once(&self, vol: &Volume, offset: u64, end: u64, data: &[u8]) -> Result<Step> {
        let gate = self.gate.read();
        let epoch = *gate;
        {
            let st = vol.read_state();
            if let Some(why) = vol.unserved_in(&st) {
                return Err(why.into());
            }
            let from = offset.min(st.size());
            let step = self.preserve(vol, &st, from, end, epoch)?;
            if step != Step::Done {
                return Ok(step);
            }
            if end <= st.size() {
                vol.write_data(data, offset)?;
                return Ok(Step::Done);
            }
        }
        // The write extends the volume: grow and write under the exclusive hold.
        let mut st = vol.write_state();
        let from = offset.min(st.size());
        let mut step = self.preserve(vol, &st, from, end, epoch)?;
        if step == Step::Done && end > st.size() {
            step = self.grow_locked(vol, &mut st, end, epoch)?;
        }
        if step != Step::Done {
            return Ok(step);
        }
        vol.write_data(data, offset)?;
        Ok(Step::Done)
    }

    /// Sets a volume's size (truncate). Growing fills with zeros; shrinking keeps whatever
    /// a snapshot still needs on disk until it is released.
    pub fn resize(&self, vol: &Volume, new_size: u64) -> Result<()> {
        if let Some(why) = vol.blocked() {
            // A truncate must not make a blocked volume look served.
            return Err(why.into());
        }
        if new_size > vol.max_size() {
            return Err(store::Error::TooLarge {
                size: new_size,
                max: vol.max_size(),
            }
            .into());
        }
        if let Some(r) = vol.restore() {
            if new_size < r.origin().size {
                return Err(store::Error::Restoring {
                    volume: vol.id(),
                    backup: r.origin().backup.clone(),
                }
                .into());
            }
        }
        self.until_done(|| self.resize_once(vol, new_size))?;
        vol.touch_data();
        Ok(())
    }

    /// One try of [`Engine::resize`], with the locks it needs held until it returns.
    fn resize_once(&self, vol: &Volume, new_size: u64) -> Result<Step> {
        let gate = self.gate.read();
        let epoch = *gate;
        let mut st = vol.write_state();
        let old = st.size();
        if new_size > old {
            let mut step = self.preserve(vol, &st, old, new_size, epoch)?;
            if step == Step::Done {
                step = self.grow_locked(vol, &mut st, new_size, epoch)?;
            }
            return Ok(step);
        }
        if new_size < old {
            st.set_size(new_size);
            let keep = new_size.max(self.needed_len(vol.id()));
            if keep < st.phys_len() {
                // Only gives space back; if it fails the data past the end stays and
                // is recorded as such, exactly as when a snapshot needs it.
                if let Err(e) = vol.set_len(&mut st, keep, epoch) {
                    log::warn!(
                        "could not give back the space past the new end of volume {:016x}: {}",
                        vol.id(),
                        e.chain()
                    );
                }
            }
            self.note_logical_size(vol, &st);
        }
        Ok(Step::Done)
    }

    /// Grows to `new_size`. The caller has preserved every existing snarf from the old end
    /// on for this epoch.
    fn grow_locked(
        &self,
        vol: &Volume,
        st: &mut VolumeState,
        new_size: u64,
        epoch: u64,
    ) -> Result<Step> {
        let old = st.size();
        // Bytes past the logical end that a shrink left on disk must read as zeros now.
        // Those up to `zero_end` have been preserved for every snapshot that needs them;
        // those past it may still be needed on disk.
        let zero_end = new_size.min(st.phys_len());
        if old < zero_end {
            if let Err(e) = vol.zero_range(old, zero_end - old) {
                if self.needed_len(vol.id()) > zero_end {
                    return Ok(Step::TailLost {
                        vol: vol.id(),
                        from: zero_end,
                        reason: format!(
                            "the data kept past the end of a shrunk volume could not be kept while it grew again: {}",
                            e.chain()
                        ),
                    });
                }
                // Nothing on disk past the old end is needed: drop it rather than zero it.
                vol.set_len(st, old, epoch)?;
            }
        }
        if new_size > st.phys_len() {
            vol.set_len(st, new_size, epoch)?;
        }
        st.set_size(new_size);
        self.note_logical_size(vol, st);
        Ok(Step::Done)
    }

    /// Keeps the store's record of a logical size shorter than the backing file in step,
    /// so a crash while data is kept past the end does not expose it. If the record cannot
    /// be written now (a full disk), the change stays pending and the next fsync of the
    /// volume writes it or reports the error: a resize is not made to fail by it.
    pub(super) fn note_logical_size(&self, vol: &Volume, st: &VolumeState) {
        let size = (st.phys_len() > st.size()).then_some(st.size());
        if let Err(e) = self.store.set_logical_size(vol, size) {
            log::warn!(
                "the logical size of volume {:016x} could not be recorded now (the next fsync tries again): {}",
                vol.id(),
                e.chain()
            );
        }
    }

    /// Bytes of a volume that live snapshots still need on disk.
    pub(super) fn needed_len(&self, vol: VolumeId) -> u64 {
        self.live
            .read()
            .values()
            .filter_map(|s| s.volume_by_id(vol).map(|sv| sv.attr.size))
            .max()
            .unwrap_or(0)
    }

    /// Captures pre-images for every existing snarf overlapping `[from, end)` whose first
    /// write in `epoch` this is and that a live snapshot needs, and stamps them `epoch`.
    /// Returns once every pre-image captured for those snarfs (here or by another writer
    /// in this epoch) that a persistent snapshot needs is durable, so the caller may issue
    /// its live write. The only error is memory for the stamps themselves, found before
    /// anything changed.
    fn preserve(
        &self,
        vol: &Volume,
        st: &VolumeState,
        from: u64,
        end: u64,
        epoch: u64,
    ) -> Result<Step> {
        if from >= end {
            return Ok(Step::Done);
        }
        let shift = vol.snarf_shift();
        let first = from >> shift;
        let last = ((end - 1) >> shift).min(st.snarf_count().saturating_sub(1));
        if st.snarf_count() == 0 || first > last {
            return Ok(Step::Done);
        }
        // The regions' write-intent bits go to disk while the pre-images are captured; both
        // are durable before the caller issues its write.
        let marked = vol.mark_written(first, last);
        let mut ticket = 0;
        for i in first..=last {
            if st.stamp(i) < epoch {
                // Before anything is captured: setting the stamp afterwards must not fail.
                st.prepare_stamp(i)?;
                let step = self.capture(vol, st, i, epoch);
                if step != Step::Done {
                    return Ok(step);
                }
            }
            // Read after the stamp: a capture notes its ticket before it sets the stamp.
            ticket = ticket.max(self.stripes.ticket(vol.id(), i));
        }
        let file = self.cache.file();
        if !file.is_durable(ticket) {
            if let Err(why) = file.wait(ticket) {
                return Ok(Step::DurableLost {
                    reason: format!(
                        "its pre-images could not be made durable in {} ({why})",
                        self.store.cow_dir().display()
                    ),
                });
            }
        }
        vol.wait_marked(marked)?;
        Ok(Step::Done)
    }

    /// The slow path of `preserve` for one snarf. Never an error: a full or failing spill
    /// disk and memory that cannot be had are no room (wait, then break a snapshot); old
    /// contents that cannot be read break the snapshots that need them.
    fn capture(&self, vol: &Volume, st: &VolumeState, index: u64, epoch: u64) -> Step {
        let id = vol.id();
        let _stripe = self.stripes.write(id, index);
        let w = st.stamp(index);
        if w >= epoch {
            return Step::Done;
        }
        if !self.live_need(id, index, w, epoch - 1) {
            st.set_stamp(index, epoch);
            return Step::Done;
        }
        if let Some(r) = vol.restore() {
            // The old contents are the backup's while the snarf is not restored yet.
            if let Err(e) = r.ensure_local(vol, index, index) {
                return Step::Unkeepable {
                    vol: id,
                    snarf: index,
                    first: w,
                    last: epoch - 1,
                    reason: format!(
                        "the old contents of snarf {index} of a volume under live restore could not be fetched to keep them: {}",
                        e.chain()
                    ),
                };
            }
        }
        if self.persistent_need(id, index, w, epoch - 1) {
            return self.capture_durable(vol, st, index, w, epoch);
        }
        let Some(room) = self.cache.reserve() else {
            return Step::NeedRoom { durable: false };
        };
        let data = match room {
            // A hole (never written) costs no copy and no budget; checked only on the
            // spill path, where contents are never seen, since memory captures are
            // checked for zeros as they are read.
            Reservation::Spill(_) if vol.snarf_is_hole(index) => {
                self.cache.unreserve(room);
                Stored::Zero
            }
            Reservation::Spill(slot) => {
                match self
                    .cache
                    .spill_from(slot, vol.file(), index << vol.snarf_shift())
                {
                    Ok(data) => data,
                    // The spill disk is full or failing: it now counts as full.
                    Err(_) => return Step::NeedRoom { durable: false },
                }
            }
            Reservation::Mem => {
                let Some(mut contents) = self.cache.buffer() else {
                    // Memory counts as full for a while; the next try spills or waits.
                    self.cache.unreserve(room);
                    return Step::NeedRoom { durable: false };
                };
                if let Err(e) = vol.read_snarf(index, &mut contents) {
                    self.cache.recycle(contents);
                    self.cache.unreserve(room);
                    return Step::Unkeepable {
                        vol: id,
                        snarf: index,
                        first: w,
                        last: epoch - 1,
                        reason: format!(
                            "the old contents of snarf {index} of a volume could not be read to keep them: {}",
                            e.chain()
                        ),
                    };
                }
                if is_zero(&contents) {
                    self.cache.recycle(contents);
                    self.cache.unreserve(room);
                    Stored::Zero
                } else {
                    Stored::Mem(contents)
                }
            }
        };
        let p = Preimage {
            first: w,
            last: epoch - 1,
            data,
        };
        {
            // Decide and insert under the live table, so a release either sees this
            // pre-image or is seen by this decision.
            let live = self.live.read();
            let needed = live.range(w..epoch).any(|(_, s)| s.needs(id, index));
            if needed {
                let location = p.data.location();
                self.cache.insert(id, index, p);
                drop(live);
                self.notify_capture(&Capture {
                    volume: id,
                    snarf: index,
                    first: w,
                    last: epoch - 1,
                    location,
                });
            } else {
                self.cache.discard(p.data);
            }
        }
        st.set_stamp(index, epoch);
        Step::Done
    }

    /// [`Engine::capture`] of a snarf a persistent snapshot needs: its contents are read,
    /// written to a durable slot with their record, and cached in memory if there is room;
    /// the commit ticket is noted on the snarf's stripe for [`Engine::preserve`] to wait for.
    fn capture_durable(
        &self,
        vol: &Volume,
        st: &VolumeState,
        index: u64,
        w: u64,
        epoch: u64,
    ) -> Step {
        let id = vol.id();
        if !self.cache.has_durable_room() {
            return Step::NeedRoom { durable: true };
        }
        let Some(mut contents) = self.cache.buffer() else {
            return Step::NeedRoom { durable: true };
        };
        if let Err(e) = vol.read_snarf(index, &mut contents) {
            self.cache.recycle(contents);
            return Step::Unkeepable {
                vol: id,
                snarf: index,
                first: w,
                last: epoch - 1,
                reason: format!(
                    "the old contents of snarf {index} of a volume could not be read to keep them: {e}"
                ),
            };
        }
        let record = Record {
            vol: id,
            snarf: index,
            first: w,
            last: epoch - 1,
            zero: is_zero(&contents),
        };
        // No room, or the write failed (the file now counts as full for a while).
        let Some((data, ticket)) = self.cache.keep_durable(record, contents) else {
            return Step::NeedRoom { durable: true };
        };
        let live = self.live.read();
        if live.range(w..epoch).any(|(_, s)| s.needs(id, index)) {
            let location = data.location();
            self.stripes.note_ticket(id, index, ticket);
            self.cache.insert(
                id,
                index,
                Preimage {
                    first: w,
                    last: epoch - 1,
                    data,
                },
            );
            drop(live);
            self.notify_capture(&Capture {
                volume: id,
                snarf: index,
                first: w,
                last: epoch - 1,
                location,
            });
        } else {
            drop(live);
            self.cache.discard(data);
        }
        st.set_stamp(index, epoch);
        Step::Done
    }

    /// Whether a live persistent snapshot with epoch in `[from, to]` needs snarf `index` of
    /// `vol` (its pre-image must then be durable).
    fn persistent_need(&self, vol: VolumeId, index: u64, from: u64, to: u64) -> bool {
        from <= to
            && self
                .live
                .read()
                .range(from..=to)
                .any(|(_, s)| s.is_persistent() && s.needs(vol, index))
    }

    /// Whether a live snapshot with epoch in `[from, to]` needs snarf `index` of `vol`.
    fn live_need(&self, vol: VolumeId, index: u64, from: u64, to: u64) -> bool {
        if from > to {
            return false;
        }
        self.live
            .read()
            .range(from..=to)
            .any(|(_, s)| s.needs(vol, index))
    }
}
