//! Repository format 2: objects behind the storage backend, tree manifests, frames, and the
//! encryption seam. [`Repository`] is a format 2 repository over any backend: backups
//! (full, and incremental with unchanged leaves by reference), reading and restoring them,
//! check, prune and gc. The command line, the jobs and the mount reach it through
//! `repo::Handle`.

pub mod backup;
pub mod check;
pub mod chunk;
pub mod config;
pub mod crypto;
pub mod frame;
pub mod gc;
pub mod index;
pub mod keyslot;
pub mod pack;
pub mod pins;
pub mod reader;
pub mod repository;
pub mod squeeze;
pub mod tree;
pub mod unlock;
pub mod writer;

#[cfg(test)]
mod encrypted_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upload_tests;

pub use reader::VolumeReader;
pub use repository::{InitOptions, NewKey, Repository};
pub use writer::{Durable, Kept, NewBackup, Slot, Writer};
