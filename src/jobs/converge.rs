//! Converge backups on the engine side: a job planned on an instant's snapshot that is
//! released at once, then fed live, pass after pass, from
//! [`snapshot::converge::Converge`], and last from a freeze of just the snarfs written
//! during the last pass. The job commits the backup as of that freeze
//! ([`ConvergeEnd`]), so its base point for the next incremental is the freeze's epoch.
//!
//! A converge job holds no pre-images until its freeze, so its acknowledgements free
//! nothing: they are taken and dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::feed::Tier;
use super::plan::{PlannedVolume, SnapshotDesc};
use super::service::SnarfData;
use super::{Error, Result};
use crate::snapshot::converge::{Converge, ConvergePolicy};
use crate::snapshot::{Engine, SnarfSet};

/// The name a converge job's snapshots (the planning instant, then the freeze) go by: in
/// the reserved `.snarf-` space, so no user snapshot can clash with it.
pub fn reserved_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        ".snarf-converge-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a converge job ended on the engine side: what the backup is a copy of, and the
/// passes it took. The job records `desc` as its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergeEnd {
    /// The final freeze: its epoch is the backup's base point for the next incremental,
    /// its sizes the volumes' sizes in the backup.
    pub desc: SnapshotDesc,
    /// Live passes, the first included.
    pub passes: u32,
    /// Bytes the first pass read.
    pub first_bytes: u64,
    /// Bytes read again by later passes and the freeze.
    pub recopied_bytes: u64,
    /// Snarfs read from the freeze.
    pub frozen_snarfs: u64,
    /// How long the freeze was held, in microseconds.
    pub freeze_us: u64,
}

/// The engine side of a converge job once planned.
pub struct ConvergeFeed {
    engine: Arc<Engine>,
    run: Converge,
    planned: Vec<PlannedVolume>,
    buf: Vec<u8>,
    done: bool,
}

impl ConvergeFeed {
    /// Starts feeding `first` (per planned volume, the snarfs the backup needs; `None`: all)
    /// live after `mark`, the epoch of the planning snapshot (released by the caller).
    pub fn start(
        engine: Arc<Engine>,
        planned: Vec<PlannedVolume>,
        first: Vec<Option<SnarfSet>>,
        mark: u64,
        freeze_name: &str,
    ) -> Result<ConvergeFeed> {
        let sets = planned
            .iter()
            .zip(first)
            .map(|(v, set)| {
                let set = set.unwrap_or_else(|| SnarfSet::full(v.snarfs));
                (v.name.clone(), set)
            })
            .collect();
        let run = Converge::start(
            engine.clone(),
            sets,
            ConvergePolicy::default(),
            freeze_name,
            mark,
        )?;
        // The plan's instant is released: a name that means another volume since fails now.
        for (v, &id) in planned.iter().zip(run.volume_ids()) {
            if v.id != id {
                return Err(crate::snapshot::Error::VolumeReplaced(v.name.clone()).into());
            }
        }
        let buf = vec![0u8; engine.store().snarf_size() as usize];
        Ok(ConvergeFeed {
            engine,
            run,
            planned,
            buf,
            done: false,
        })
    }

    /// Up to `max` more snarfs; `None` once the copy is complete (the freeze released).
    pub fn next(&mut self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        let mut out = Vec::new();
        while out.len() < max.max(1) {
            let Some(p) = self.run.next(&mut self.buf)? else {
                self.done = true;
                // A volume that shrank sent fewer snarfs than planned: said here, by name.
                self.check_sizes()?;
                break;
            };
            let v = &self.planned[p.vol];
            let want = super::plan::snarf_len(v.size, u64::from(v.snarf_size), p.index);
            if p.index >= v.snarfs || p.len as u64 != want {
                return Err(changed_size(&v.name, v.size));
            }
            let bytes = &self.buf[..p.len];
            out.push(SnarfData {
                vol: p.vol as u32,
                snarf: p.index,
                len: p.len as u32,
                data: (!crate::repo::v2::chunk::is_all_zero(bytes)).then(|| bytes.to_vec()),
                tier: if p.frozen { Tier::Urgent } else { Tier::Cold },
            });
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// How the copy ended; an error if it is not complete yet, or if a volume changed size
    /// since the plan (the backup's tables were laid out for the planned sizes).
    pub fn end(&self) -> Result<ConvergeEnd> {
        let (true, Some(freeze)) = (self.done, self.run.freeze()) else {
            return Err(Error::Protocol(
                "a converge backup's end was asked for before every snarf was sent".into(),
            ));
        };
        self.check_sizes()?;
        let r = self.run.report();
        Ok(ConvergeEnd {
            desc: SnapshotDesc::of(&self.engine, freeze),
            passes: r.passes,
            first_bytes: r.first_bytes,
            recopied_bytes: r.recopied_bytes,
            frozen_snarfs: r.frozen_snarfs,
            freeze_us: r.freeze.as_micros().min(u64::MAX as u128) as u64,
        })
    }

    /// Every volume has its planned size at the freeze (the backup's tables were laid
    /// out for it).
    fn check_sizes(&self) -> Result<()> {
        let sizes = &self.run.report().sizes;
        for v in &self.planned {
            if sizes.get(&v.name).is_some_and(|&now| now != v.size) {
                return Err(changed_size(&v.name, v.size));
            }
        }
        Ok(())
    }

    /// The final freeze, once released: the snapshot the backup is a copy of.
    pub fn freeze(&self) -> Option<&Arc<crate::snapshot::Snapshot>> {
        self.run.freeze()
    }
}

/// The error of a volume whose size changed during the copy.
fn changed_size(name: &str, planned: u64) -> Error {
    Error::Plan(format!(
        "volume \"{name}\" changed size during the converge backup (it was {planned} bytes); nothing was committed; run it again, or back up a snapshot instead"
    ))
}
