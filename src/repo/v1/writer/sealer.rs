//! The pack sealer thread of a [`BackupWriter`](super::BackupWriter): full packs are sealed
//! here in order (trailer, fsync, logged in the transfer folder, renamed, folder fsynced),
//! so puts go on while a pack is fsynced; every snarf whose data a sealed pack holds is then
//! reported [`Durable`]. After a failure nothing later is reported durable.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::super::error::{Error, IoContext, Result};
use super::super::fault;
use super::super::fsx;
use super::super::pack::PackWriter;
use super::super::Repo;
use super::{ChunkId, Durable, DurableSink, Shared, State, VolumeSlot, PACK_LOG};
use crate::chain::ErrorChain;

/// A pack to seal (if any) and the snarfs to report durable once it is.
pub(super) struct SealJob {
    pub(super) pack: Option<PackWriter>,
    pub(super) pending: Vec<(VolumeSlot, u64, ChunkId)>,
}

/// What the sealer thread works with, shared with the writer.
pub(super) struct SealCtx {
    pub(super) repo: Repo,
    pub(super) tmp: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) sink: Option<DurableSink>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) pack_log: Mutex<File>,
    pub(super) progress: Mutex<SealProgress>,
    pub(super) idle: Condvar,
}

/// Sealings queued or running, and the first failure.
#[derive(Default)]
pub(super) struct SealProgress {
    pub(super) in_flight: usize,
    pub(super) error: Option<Error>,
    pub(super) failed: Option<String>,
}

impl SealCtx {
    /// The sealer thread: seals queued packs in order until the writer lets go.
    pub(super) fn run(self: Arc<SealCtx>, jobs: Receiver<SealJob>) {
        for job in jobs {
            let result = self.seal(job);
            let mut p = self.progress.lock();
            p.in_flight -= 1;
            if let Err(e) = result {
                if p.failed.is_none() {
                    p.failed = Some(e.chain().to_string());
                    p.error = Some(e);
                }
            }
            self.idle.notify_all();
        }
    }

    /// Seals one pack: finish, log, publish, then report its snarfs durable.
    fn seal(&self, job: SealJob) -> Result<()> {
        if self.progress.lock().failed.is_some() {
            // An earlier pack failed; nothing after it may be reported durable.
            if let Some(pack) = job.pack {
                let id = pack.id();
                drop(pack);
                fsx::remove_if_exists(
                    &self
                        .repo
                        .packs_dir()
                        .join(super::super::pack::part_name(&id)),
                )?;
            }
            return Ok(());
        }
        let finished = match job.pack {
            Some(pack) => {
                let finished = pack.finish()?;
                // Logged before the rename, so recovery finds every pack that may have been
                // sealed.
                let log = self.tmp.join(PACK_LOG);
                {
                    let mut f = self.pack_log.lock();
                    f.write_all(format!("{}\n", finished.id).as_bytes())
                        .and_then(|_| f.sync_data())
                        .ctx(|| format!("writing {}", log.display()))?;
                }
                fault::point("pack.logged");
                finished.publish()?;
                Some(finished)
            }
            None => None,
        };
        let mut events = Vec::new();
        {
            let mut st = self.state.lock();
            let mut fresh = self.shared.fresh.write();
            if let Some(finished) = &finished {
                st.new_packs.push(finished.id);
                st.known_packs.insert(finished.id);
                st.stats.packs += 1;
                for e in &finished.entries {
                    if let Some(f) = fresh.get_mut(&e.id) {
                        f.sealed = true;
                    }
                }
            }
            for (slot, snarf, id) in job.pending {
                if let Some(f) = fresh.get(&id) {
                    events.push(Durable {
                        slot,
                        snarf,
                        chunk: f.r,
                    });
                }
            }
        }
        if let Some(sink) = &self.sink {
            for e in events {
                sink(e);
            }
        }
        Ok(())
    }
}
