//! What an open of the engine finds: the persistent snapshots of the table, each volume
//! found again by id (renamed or deleted since, it is the same data), the snarfs their
//! backups stored, and the durable pre-images they still need. After an unclean stop the
//! same holds, because nothing a persistent snapshot needs was ever overwritten before it
//! was durable:
//!
//! * a pre-image record a crash cut short protects a live write that was never issued, so
//!   it is dropped ([`super::cow`] checks the data of the last commits against their hash);
//! * a snarf with a durable pre-image covering a snapshot gets a stamp past that pre-image,
//!   so it is never captured again for that snapshot: the stamps of an unclean stop are lost
//!   (0 until a write), and only the pre-images say what was written when;
//! * a snapshot whose volume file was changed behind snarf's back, or is shorter than the
//!   snapshot froze it, is broken with the reason, as is one whose volume is gone.
//!
//! Whatever no snapshot needs is given back: records (erased), deleted volumes' files, the
//! data kept past a shrunk volume's end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::cow::{Found, OpenReport};
use super::preimage::{Preimage, Stored};
use super::table::{self, TableState};
use super::{Durability, Engine, Result, SnapState, SnapVolume, Snapshot};
use crate::store::{Volume, VolumeAttr, VolumeId};

/// What an open found, for `control/status` and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The last session did not close cleanly.
    pub unclean: bool,
    /// Persistent snapshots restored readable.
    pub snapshots: u64,
    /// Persistent snapshots listed broken (broken before, or now with the reason).
    pub broken: u64,
    /// Snapshots broken by this open, with why.
    pub broken_now: Vec<(String, String)>,
    /// Durable pre-images restored.
    pub preimages: u64,
    /// Durable pre-images no snapshot needs any more, given back.
    pub discarded: u64,
    /// Pre-image records a crash cut short (their live writes were never issued), dropped.
    pub torn: u64,
    /// Regions of volumes whose write-intent bits were set at an unclean stop: their snarfs
    /// count as changed for the next backup.
    pub dirty_regions: u64,
}

impl Engine {
    /// Restores the persistent snapshots and their pre-images (see the module notes).
    pub(super) fn recover(&self, found: Vec<Found>, opened: OpenReport) -> Result<RecoveryReport> {
        let cow = self.store.cow_dir();
        let first_epoch = self.store.first_epoch();
        let mut report = RecoveryReport {
            unclean: self.store.recovered_unclean(),
            torn: opened.torn,
            ..RecoveryReport::default()
        };
        let retired = self.store.take_retired();
        let mut by_id: HashMap<VolumeId, Arc<Volume>> = self
            .store
            .volumes()
            .into_values()
            .map(|v| (v.id(), v))
            .collect();
        for (id, v) in &retired {
            by_id.entry(*id).or_insert_with(|| v.clone());
        }
        report.dirty_regions = by_id
            .values()
            .filter_map(|v| v.intent())
            .map(|i| i.recovered().0.len() as u64)
            .sum();
        let mut snaps = Vec::new();
        for e in table::load(&cow, first_epoch)? {
            let mut volumes = BTreeMap::new();
            let mut why = None;
            for tv in &e.volumes {
                let Some(vol) = by_id.get(&tv.id) else {
                    why.get_or_insert(format!("its volume \"{}\" is gone from the store", tv.name));
                    continue;
                };
                if self.store.changed_behind(tv.id) {
                    why.get_or_insert(format!(
                        "the file of its volume \"{}\" was changed outside snarf while the store was closed, so it no longer reads what it froze",
                        tv.name
                    ));
                }
                if vol.read_state().phys_len() < tv.size {
                    why.get_or_insert(format!(
                        "the file of its volume \"{}\" is shorter than the snapshot froze it",
                        tv.name
                    ));
                }
                let attr = VolumeAttr {
                    size: tv.size,
                    mtime_ns: tv.mtime_ns,
                    ctime_ns: tv.ctime_ns,
                    allocated: tv.allocated,
                };
                volumes.insert(tv.name.clone(), SnapVolume::new(vol.clone(), attr));
            }
            let snap = Snapshot::new(
                e.name.clone(),
                e.epoch,
                e.created_ns,
                Durability::Persistent,
                e.session_id.clone(),
                volumes,
            );
            match (&e.state, why) {
                (TableState::Broken(reason), _) => {
                    snap.set_state(SnapState::Broken(reason.clone()));
                    report.broken += 1;
                }
                (TableState::Live, Some(why)) => {
                    log::warn!("breaking snapshot \"{}\": {why}", e.name);
                    snap.set_state(SnapState::Broken(why.clone()));
                    report.broken += 1;
                    report.broken_now.push((e.name.clone(), why));
                }
                (TableState::Live, None) => {
                    snap.hold_volumes();
                    for (vol, first, n) in table::load_stored(&cow, e.epoch)? {
                        if let Some(sv) = snap.volume_by_id(vol) {
                            for i in first..first.saturating_add(n).min(sv.snarf_count()) {
                                sv.mark_stored(i);
                            }
                        }
                    }
                    report.snapshots += 1;
                }
            }
            snaps.push(Arc::new(snap));
        }
        let keep: Vec<u64> = snaps
            .iter()
            .filter(|s| s.state() == SnapState::Live)
            .map(|s| s.epoch())
            .collect();
        for epoch in table::stale_stored(&cow, &keep) {
            table::remove_stored(&cow, epoch);
        }
        {
            let mut named = self.named.write();
            let mut live = self.live.write();
            for s in &snaps {
                named.insert(s.name().to_string(), s.clone());
                if s.state() == SnapState::Live {
                    live.insert(s.epoch(), s.clone());
                }
            }
        }

        let mut in_use = Vec::new();
        for f in found {
            let r = f.record;
            let needed = r.last < first_epoch
                && self
                    .live
                    .read()
                    .range(r.first..=r.last)
                    .any(|(_, s)| s.needs(r.vol, r.snarf));
            let Some(vol) = by_id.get(&r.vol).filter(|_| needed) else {
                report.discarded += 1;
                continue;
            };
            if never_issued(vol, &r) {
                report.torn += 1;
                continue;
            }
            let overlaps = self
                .cache
                .ranges(r.vol, r.snarf)
                .iter()
                .any(|&(a, b)| a <= r.last && r.first <= b);
            if overlaps {
                log::warn!(
                    "two pre-images of snarf {} of volume {:016x} cover the same epochs; the second is dropped",
                    r.snarf,
                    r.vol
                );
                report.discarded += 1;
                continue;
            }
            {
                // Never captured again for the snapshots it covers.
                let st = vol.read_state();
                if r.snarf < st.snarf_count() && st.stamp(r.snarf) <= r.last {
                    st.prepare_stamp(r.snarf)?;
                    st.set_stamp(r.snarf, r.last + 1);
                }
            }
            self.cache.insert(
                r.vol,
                r.snarf,
                Preimage {
                    first: r.first,
                    last: r.last,
                    data: Stored::Durable {
                        slot: f.slot,
                        zero: r.zero,
                        mem: None,
                    },
                },
            );
            in_use.push((f.slot, !r.zero));
            report.preimages += 1;
        }
        self.cache.file().adopt(&in_use)?;

        // Deleted volumes a restored snapshot holds stay; the others go with `retired`.
        let held: Vec<Arc<Volume>> = retired
            .values()
            .filter(|v| snaps.iter().any(|s| s.volume_by_id(v.id()).is_some()))
            .cloned()
            .collect();
        self.store.hold_retired(&held);
        drop(retired);
        for vol in self.store.volumes().values().chain(held.iter()) {
            self.trim_tail(vol);
        }
        if !report.broken_now.is_empty() {
            self.write_table()?;
        }
        if report != RecoveryReport::default() {
            log::info!(
                "restored {} persistent snapshot(s) ({} broken) with {} pre-image(s); {} no longer needed, {} cut short by a crash{}",
                report.snapshots,
                report.broken,
                report.preimages,
                report.discarded,
                report.torn,
                if report.unclean {
                    " (the store was not closed cleanly)"
                } else {
                    ""
                }
            );
        }
        Ok(report)
    }
}

/// Whether the write a durable pre-image protects was never issued, as the volume's
/// write-intent bitmap recovered at an unclean open says: a write past the bitmap's
/// checkpoint (its epoch is `last + 1`) is issued only once its region is marked durably,
/// and the pre-image's commit and the mark's run side by side, so a crash between the two
/// leaves a record of a write that never happened. The snarf still reads what the record
/// holds; keeping it would count the snarf as written since the checkpoint.
fn never_issued(vol: &Volume, r: &super::cow::Record) -> bool {
    let Some(intent) = vol.intent() else {
        return false;
    };
    let (dirty, at) = intent.recovered();
    at > 0
        && !intent.given_up()
        && r.last >= intent.since()
        && !dirty.contains(&crate::store::intent::region_of(r.snarf))
}
