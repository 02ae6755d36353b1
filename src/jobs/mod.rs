//! Backup jobs over a snapshot: the order snarfs are fetched in, the hashing and
//! compression pipeline, progress, and the socket protocol between a job and the daemon.
//!
//! A job runs as its own `snarf backup` process, so a failing or killed job never hurts the
//! mount. Its pieces, one job each:
//!
//! * [`feed`]: which snarf comes next (urgent captures to the front, held pre-images, then
//!   what the page cache holds, then disk order; each snarf once) and acknowledgements that
//!   free pre-images.
//! * [`plan`]: full or incremental per volume, and why.
//! * [`converge`]: the engine side of a converge backup (fed live in passes, then from a
//!   freeze of what the last pass missed).
//! * [`service`]: the engine side of a job ([`JobService`]) and the [`Session`] a job
//!   talks to, in the daemon or in-process (direct mode).
//! * [`proto`], [`client`], [`conversation`], [`server`]: framed messages over a stream;
//!   the job's end; the engine's end over any stream; the daemon's socket server and job
//!   listing.
//! * [`released`]: where acknowledged snarfs were stored, so snapshot reads still work
//!   after their pre-images are freed (the repository behind the snapshot layer's
//!   [`StoredSnarfs`](crate::snapshot::StoredSnarfs)).
//! * [`base`]: what a backup records of its source, and finding the base of an incremental.
//! * [`pipeline`]: reader → hashing/compression workers → writer, with bounded queues.
//! * [`progress`]: what a job reports its progress to (the terminal is the command line's),
//!   and the words of its summary.
//! * [`report`]: the report file a job started through `control/jobs` keeps for the daemon.
//! * [`spec`]: the command line of a job process, shared by the daemon that starts it and
//!   the `snarf backup` that parses it.
//! * [`vocab`]: the words every layer above shares: a [`BackupRequest`], its [`Mode`], a
//!   job's [`JobState`].

pub mod base;
pub mod client;
pub mod converge;
pub mod conversation;
pub mod error;
pub mod feed;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod proto;
pub mod released;
pub mod report;
pub mod server;
pub mod service;
pub mod spec;
pub mod vocab;

pub use error::{Error, Result};
pub use feed::{AckKind, Feed, FeedStats, FeedVolume, Handed, PageCache, Residency, Tier};
pub use pipeline::{BackupOptions, SentByTier, Summary, VolumeSummary};
pub use plan::{FullReason, Plan, PlanRequest, PlannedVolume, SnapshotDesc, VolumeKind};
pub use progress::{NoProgress, Progress, ProgressSink};
pub use released::Released;
pub use server::{JobPhase, JobServer, JobStatus};
pub use service::{Batch, JobService, Session, SnarfData, SnarfRef};
pub use vocab::{BackupRequest, JobState, Mode, CONVERGE_LABEL};

#[cfg(test)]
mod ack_tests;
#[cfg(test)]
mod ack_v2_tests;
#[cfg(test)]
mod converge_tests;
#[cfg(test)]
mod tests;
