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
                break;
            };
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
        let r = self.run.report();
        for v in &self.planned {
            let now = r.sizes.get(&v.name).copied().unwrap_or(v.size);
            if now != v.size {
                return Err(Error::Plan(format!(
                    "volume \"{}\" changed size during the converge backup (from {} to {now} bytes); nothing was committed; run it again, or back up a snapshot instead",
                    v.name, v.size
                )));
            }
        }
        Ok(ConvergeEnd {
            desc: SnapshotDesc::of(&self.engine, freeze),
            passes: r.passes,
            first_bytes: r.first_bytes,
            recopied_bytes: r.recopied_bytes,
            frozen_snarfs: r.frozen_snarfs,
            freeze_us: r.freeze.as_micros().min(u64::MAX as u128) as u64,
        })
    }

    /// The final freeze, once released: the snapshot the backup is a copy of.
    pub fn freeze(&self) -> Option<&Arc<crate::snapshot::Snapshot>> {
        self.run.freeze()
    }
}
