//! The engine side of one backup job: describe the snapshot, make the plan, hand out snarf
//! data in the feed's order, take acknowledgements. The daemon's socket server drives one per
//! connection; in direct mode (no mount) the job drives one in-process. Either way the same
//! [`Session`] calls reach it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::feed::{Feed, Handed};
use super::plan::{self, Plan, PlanRequest, SnapshotDesc};
use super::proto::AckItem;
use super::released::Released;
use super::{Error, Result};
use crate::repo::Repo;
use crate::snapshot::{self, Engine, Snapshot};

/// One snarf's data as a job receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnarfData {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Length in bytes.
    pub len: u32,
    /// The bytes; `None` when all zeros.
    pub data: Option<Vec<u8>>,
}

/// What a backup job asks of the engine side, wherever that runs.
pub trait Session: Send + Sync {
    /// What the snapshot holds.
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc>;
    /// Makes the plan and starts handing out snarfs; the backup goes to `repo`.
    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan>;
    /// Up to `max` more snarfs; `None` once every planned snarf was handed out.
    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>>;
    /// The backup stored these snarfs (durably).
    fn ack(&self, items: &[AckItem]) -> Result<()>;
    /// The job is about to commit (for listings); nothing to answer.
    fn committing(&self) {}
    /// The backup is committed.
    fn done(&self, backup: &str) -> Result<()>;
    /// The job gives up.
    fn abort(&self, reason: &str);
    /// The mount daemon's pid, when the engine runs there.
    fn daemon_pid(&self) -> Option<u32> {
        None
    }
}

struct Active {
    snap: Arc<Snapshot>,
    feed: Feed,
    repo: Option<Repo>,
}

/// The engine side of one job; see the module documentation.
pub struct JobService {
    engine: Arc<Engine>,
    released: Option<Arc<Released>>,
    active: OnceLock<Active>,
    buf: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService").finish_non_exhaustive()
    }
}

impl JobService {
    /// A job over `engine`. With `released`, acknowledged snarfs are recorded there (and
    /// their packs pinned) so the snapshot stays readable; direct mode passes `None`.
    pub fn new(engine: Arc<Engine>, released: Option<Arc<Released>>) -> JobService {
        JobService {
            engine,
            released,
            active: OnceLock::new(),
            buf: Mutex::new(Vec::new()),
        }
    }

    fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>> {
        let snap = self.engine.snapshot(name)?;
        match snap.state() {
            snapshot::SnapState::Live => Ok(snap),
            snapshot::SnapState::Broken(reason) => Err(snapshot::Error::Broken {
                name: name.to_string(),
                reason,
            }
            .into()),
            snapshot::SnapState::Released => Err(snapshot::Error::Released {
                name: name.to_string(),
            }
            .into()),
        }
    }

    fn active(&self) -> Result<&Active> {
        self.active
            .get()
            .ok_or_else(|| Error::Protocol("snarfs were asked for before a plan".into()))
    }

    /// Counts of the feed, once planned.
    pub fn feed_stats(&self) -> Option<super::FeedStats> {
        self.active.get().map(|a| a.feed.stats())
    }

    /// Reads one handed snarf, from the repository if an earlier backup of this snapshot
    /// already stored it and its pre-image is gone.
    fn read(&self, a: &Active, h: Handed) -> Result<SnarfData> {
        let mut buf = std::mem::take(&mut *self.buf.lock());
        let result = a.feed.read(h, &mut buf);
        let nonzero = match result {
            Ok(nz) => nz,
            Err(snapshot::Error::StoredInBackup {
                snapshot: _,
                volume,
                snarf,
            }) if self.released.is_some() => {
                let r = self.released.as_ref().map(Arc::clone);
                if let Some(r) = r {
                    r.read(&a.snap, &volume, snarf, 0, &mut buf)?;
                }
                !crate::repo::chunk::is_all_zero(&buf)
            }
            Err(e) => return Err(e.into()),
        };
        let len = buf.len() as u32;
        let data = if nonzero {
            Some(buf)
        } else {
            *self.buf.lock() = buf;
            None
        };
        Ok(SnarfData {
            vol: h.vol as u32,
            snarf: h.snarf,
            len,
            data,
        })
    }
}

impl Session for JobService {
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
        let snap = self.snapshot(snapshot)?;
        Ok(SnapshotDesc::of(&self.engine, &snap))
    }

    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
        if self.active.get().is_some() {
            return Err(Error::Protocol("a job makes one plan".into()));
        }
        let snap = self.snapshot(&req.snapshot)?;
        let (planned, volumes) = plan::plan(&self.engine, &snap, req)?;
        let repo = match &self.released {
            // The daemon reads acknowledged snarfs back from here; the job holds the lock.
            Some(_) => Some(Repo::open_quiet(repo)?),
            None => None,
        };
        let sets = volumes.iter().map(|v| v.only.clone()).collect();
        let feed = Feed::new(self.engine.clone(), snap.clone(), volumes)?;
        let _ = self.active.set(Active { snap, feed, repo });
        Ok(Plan {
            volumes: planned,
            sets,
        })
    }

    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        let a = self.active()?;
        let handed = a.feed.next(max);
        if handed.is_empty() {
            return Ok(None);
        }
        handed
            .into_iter()
            .map(|h| self.read(a, h))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ack(&self, items: &[AckItem]) -> Result<()> {
        let a = self.active()?;
        let mut ids = Vec::with_capacity(items.len());
        for it in items {
            let id = a.feed.volume_id(it.vol as usize).ok_or_else(|| {
                Error::Protocol(format!(
                    "an ack names volume {} of the plan, which has fewer",
                    it.vol
                ))
            })?;
            ids.push((id, it.snarf, it.chunk));
        }
        if let (Some(released), Some(repo)) = (&self.released, &a.repo) {
            // Recorded and pinned first: a reader who misses the pre-image finds the chunk.
            released.record(&a.snap, repo, &ids)?;
        }
        for it in items {
            a.feed.ack(it.vol as usize, it.snarf);
        }
        Ok(())
    }

    fn done(&self, _backup: &str) -> Result<()> {
        Ok(())
    }

    fn abort(&self, _reason: &str) {}
}
