//! Command grammar and table renderers for the files under `MOUNTPOINT/control/`: pure
//! text in, text out, so the mount, the CLI and tests share one contract.
//!
//! Writes: `control/snapshot` and `control/jobs` are transaction files. One write carries
//! one command; [`parse`] returns the [`Command`] or a [`Rejection`] whose
//! [`message`](Rejection::message) the FUSE layer hands back on the same descriptor after
//! failing the write with EINVAL. Every other control file is a read-only table and
//! rejects every write.
//!
//! Reads: the layers above fill [`JobRow`], [`PidRow`], [`FinishingRow`] and
//! [`StatusReport`]; `render_*` turns them into aligned text tables (see [`table`] for the
//! escaping that keeps `awk` field counts stable) and `render_*_json` into the `.json`
//! twins.
//!
//! The job words themselves (a backup request, its mode, a job's state) are the jobs
//! layer's ([`crate::jobs::vocab`]); this layer only parses and renders them.

pub mod cron;
pub mod file;
pub mod grammar;
pub mod metrics;
pub mod rows;
pub mod schedule;
pub mod table;
pub mod words;

#[cfg(test)]
mod fuzz_tests;

pub use file::ControlFile;
pub use grammar::{parse, Command, RejectKind, Rejection, RestoreRequest, MAX_COMMAND_BYTES};
pub use metrics::{render_metrics, BackupTimes, MetricsReport, VolumeIo, METRICS_CONTENT_TYPE};
pub use rows::{
    render_finishing, render_finishing_json, render_jobs, render_jobs_json, render_pids,
    render_pids_json, render_snapshots, render_status, render_status_json, FinishingRow,
    FinishingState, JobRow, LiveRestoreStatus, PidRow, RecoveryStatus, RepositoryStatus,
    SnapshotState, SnapshotStatus, StatusReport, Usage, VolumeStatus,
};
