//! The backup repository. Format 1 (`v1`) keeps tables and a finishing record in a folder;
//! format 2 (`v2`) holds the same backups as objects behind one storage [`backend`] trait,
//! with tree manifests, frames and an encryption seam. [`Handle`] opens either from a
//! [`Location`], and [`upgrade`] migrates format 1 to 2. Shared here: the storage
//! backends, ids, errors, the lock, fault injection and file helpers.

pub mod backend;
pub mod copy;
pub mod error;
pub mod fault;
pub mod fsx;
pub mod handle;
pub mod ids;
pub mod location;
pub mod lock;
pub mod passphrase;
pub mod report;
pub mod retention;
mod span;
pub mod upgrade;
pub use handle::{BackupInfo, Handle, VolumeInfo, VolumeMap};
pub use location::Location;
pub mod v1;
pub mod v2;

pub use v1::{
    check, chunk, config, index, manifest, pack, prune, reader, repair, table, writer, BackupId,
    BackupStats, BackupWriter, CheckProgress, CheckReport, ChunkId, ChunkRef, Config, Decision,
    Durable, DurableSink, Error, FinishingStatus, Fix, Holder, LastFinishing, Manifest, NewBackup,
    PackId, Policy, PreparedChunk, Preparer, Problem, PruneReport, RepairProgress, RepairReport,
    Repo, RepoInitOptions, RepoLock, RestoreProgress, RestoreSummary, Result, VolumeEntry,
    VolumeReader, VolumeSlot, DEFAULT_COMPRESSION, DEFAULT_PACK_TARGET, FORMAT_VERSION,
};
