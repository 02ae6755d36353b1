//! Where a repository's objects live: one [`Backend`] trait with object-store semantics, so
//! an S3 bucket fits it natively and a local folder ([`LocalDir`]) is just one
//! implementation, [`SshBackend`] (a client of `snarf serve`, whose far side is `serve` over
//! the `wire` protocol) another, [`S3Backend`] (`s3://bucket/prefix`, an S3 bucket through
//! `object_store`) a third; the repository logic above runs unchanged over all of them.
//!
//! The operations and what each guarantees when it returns:
//! - [`Backend::read`], [`Backend::read_range`], [`Backend::size`]: whole objects, byte ranges
//!   (restore and `backups/` never fetch whole packs), sizes;
//! - [`Backend::write`]: atomic whole-object replace, durable;
//! - [`Backend::create`]: create-only, durable, [`Created::AlreadyExists`] if the key is taken
//!   (a filesystem's link(2), S3's `If-None-Match: *`): the commit points use it;
//! - [`Backend::upload`]: a streaming writer for packs, visible only once finished (or
//!   [`Upload::finish_later`]: the finish requested, its wait left to the caller);
//! - [`Backend::list`], [`Backend::delete`]: listings of one folder (every name validated into
//!   a [`Key`]) and durable deletion;
//! - [`Backend::lock`]: the repository lock (a flock for a folder, a lease object on S3).
//!
//! Keys are typed ([`Key`]): a name from a listing becomes a key only if it is a name snarf
//! makes, so nothing read back becomes a path unchecked. Decorators wrap the trait as
//! rustic's backend decorators do: `faulty` (with the `fault-injection` feature) makes
//! every durable operation a numbered fault point for the crash suites; [`Pipelined`] streams
//! uploads from a thread of its own, so a backup's compression never waits for a pipe or a
//! far fsync; a local cache of
//! metadata objects and retries for remote backends are to come with them.

#[cfg(feature = "fault-injection")]
pub mod faulty;
pub mod key;
pub mod local;
pub mod pipelined;
pub mod s3;
pub mod s3conf;
pub mod serve;
pub mod ssh;
pub mod wire;

use std::time::Duration;

pub use key::{FinishingName, Key, Kind, ObjectId, StateName};
pub use local::LocalDir;
pub use pipelined::Pipelined;
pub use s3::{S3Backend, S3Url};
pub use s3conf::S3Settings;
pub use ssh::{SshBackend, SshHost, SshOptions, SshTarget};

use super::error::{Error, Result};

/// What [`Backend::create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now does, durably.
    Created,
    /// An object of that key existed already; it was left as it was.
    AlreadyExists,
}

/// A streaming upload of one object, visible under its key only once [`Upload::finish`]
/// returns; dropped unfinished, it leaves nothing visible.
pub trait Upload: Send {
    /// Appends bytes.
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Appends bytes the caller gives away (a sealed frame), so an upload that hands them
    /// on to another thread needs no copy.
    fn write_owned(&mut self, data: Vec<u8>) -> Result<()> {
        self.write(&data)
    }
    /// Appends `len` bytes that `make` produces (a frame still to be sealed), so an upload
    /// with a thread of its own runs `make` there, off the caller's thread, while the caller
    /// already counts the bytes (a pack's next offset). By default `make` runs here. Bytes of
    /// another length fail the upload: the caller's offsets would be wrong.
    fn write_later(&mut self, len: usize, make: Deferred) -> Result<()> {
        let data = make()?;
        check_deferred_len(len, &data)?;
        self.write_owned(data)
    }
    /// Bytes written so far.
    fn len(&self) -> u64;
    /// True when nothing was written yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes the object durable and visible under its key.
    fn finish(self: Box<Self>) -> Result<()>;
    /// Starts making the object durable and visible, and returns what waits for it, so the
    /// caller can go on (stream the next object) while the far side fsyncs. By default it
    /// finishes at once; a backend with a round trip to make (ssh) only sends the request.
    fn finish_later(self: Box<Self>) -> Result<Box<dyn Finishing>> {
        self.finish()?;
        Ok(Box::new(Finished))
    }
}

/// Bytes an upload produces when it gets to them ([`Upload::write_later`]).
pub type Deferred = Box<dyn FnOnce() -> Result<Vec<u8>> + Send>;

/// The error for deferred bytes whose length is not the one announced.
pub(crate) fn check_deferred_len(len: usize, data: &[u8]) -> Result<()> {
    if data.len() == len {
        return Ok(());
    }
    Err(Error::BadArgument(format!(
        "deferred upload bytes came out {} bytes long, not the {len} announced (a bug)",
        data.len()
    )))
}

/// An upload being made durable ([`Upload::finish_later`]); dropped unwaited, the object
/// may or may not become visible (an unreferenced pack, adopted or collected later).
pub trait Finishing: Send {
    /// True once [`Finishing::wait`] would return without waiting.
    fn ready(&mut self) -> bool;
    /// Waits until the object is durable and visible under its key, or its upload failed.
    fn wait(self: Box<Self>) -> Result<()>;
}

/// A [`Finishing`] that is done already.
pub struct Finished;

impl Finishing for Finished {
    fn ready(&mut self) -> bool {
        true
    }
    fn wait(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A held repository lock; released when dropped.
pub trait LockGuard: Send + Sync + std::fmt::Debug {}

/// Storage for one repository's objects (see the module documentation).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the repository is, for messages (a path or a URL).
    fn location(&self) -> String;
    /// The whole object, `None` if it does not exist. Objects larger than `cap` bytes are
    /// refused unread (a hostile or damaged object cannot make a reader allocate without end).
    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>>;
    /// Exactly `len` bytes at `offset`; a missing object or a short one is an error.
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// The object's size, `None` if it does not exist.
    fn size(&self, key: &Key) -> Result<Option<u64>>;
    /// Replaces the object atomically; durable when it returns.
    fn write(&self, key: &Key, data: &[u8]) -> Result<()>;
    /// Creates the object only if the key is free; durable when it returns.
    fn create(&self, key: &Key, data: &[u8]) -> Result<Created>;
    /// Starts a streaming upload of a new object (a pack).
    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>>;
    /// The objects of one kind with their sizes, in no particular order. Names that are not
    /// keys snarf makes are skipped (and logged), never returned.
    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>>;
    /// Deletes the object durably; `false` if it did not exist.
    fn delete(&self, key: &Key) -> Result<bool>;
    /// Takes the repository lock for `holder` (a description for messages), waiting up to
    /// `wait` if given; fails at once with `Error::Locked` naming the holder otherwise.
    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>>;
    /// Removes what crashed writers left that no key names (temporary files, unfinished
    /// uploads). Only a holder of the lock may call it.
    fn sweep_leftovers(&self) -> Result<u64>;
    /// The local folder holding the objects, for a backend that is one (none for remote
    /// backends).
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
    /// Why the backend's connection is gone, for one that has a connection and lost it
    /// (every call on it fails from then on; a long-lived holder opens a new one).
    fn connection_lost(&self) -> Option<super::error::Error> {
        None
    }
}
