//! snarf: a FUSE filesystem that shows live, frozen snapshots of a block store while it is
//! being written, and backs them up into a deduplicated, crash-safe repository.
//!
//! The layers depend on each other in one direction only, top to bottom (see DESIGN.md):
//! `cli` → `fuse` → `control` → `jobs` → `pids` → `repo` → `snapshot` → `store`, and
//! under them all `sys`, the one place each operating-system chore (durable files, locks,
//! the clock, /proc) is done.
//! Everything below `fuse` is plain Rust that tests drive without a kernel mount.

pub mod chain;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod fuse;
pub mod jobs;
pub mod mounts;
pub mod pids;
pub mod repo;
pub mod snapshot;
pub mod store;
pub mod sys;
pub mod units;
