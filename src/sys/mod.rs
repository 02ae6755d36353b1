//! What snarf asks of the operating system, each done in one place: durable files
//! ([`durable`]: write new, replace atomically, fsync folders, make and remove entries
//! durably), file locks ([`lock`]: flock), the clock and the UTC calendar ([`clock`]), and
//! processes ([`proc`]: signals by pid or pidfd, who we run as), and the page cache
//! ([`pagecache`]: what of a file is in memory, dropping it). Every layer above uses these
//! instead of its own copy, so a rule such as "fsync the folder after a rename" is written
//! once and holds everywhere. It depends on no other layer of snarf; system calls go through
//! rustix, so the few `unsafe` blocks left in snarf are where no safe call exists.

pub mod clock;
pub mod durable;
pub mod lock;
pub mod pagecache;
pub mod proc;

use std::path::Path;

/// An operating-system error with what snarf was doing when it happened. Like every layer's
/// error it words only its own level and returns the OS error from `source()` (a reporter
/// walks the chain once, `crate::chain`); layers take it apart ([`Error::into_parts`]).
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct Error {
    /// What snarf was doing, e.g. "syncing folder /srv/store/state".
    pub context: String,
    /// The OS error.
    #[source]
    pub io: std::io::Error,
}

impl Error {
    /// An error while doing `what` to `path`, e.g. `Error::at("syncing folder", dir, e)`.
    pub fn at(what: &str, path: &Path, io: std::io::Error) -> Error {
        Error {
            context: format!("{what} {}", path.display()),
            io,
        }
    }

    /// The context and the OS error, for a layer's own I/O error variant.
    pub fn into_parts(self) -> (String, std::io::Error) {
        (self.context, self.io)
    }

    /// The OS error alone, for callers whose own message already names the file.
    pub fn into_io(self) -> std::io::Error {
        self.io
    }
}

/// An `io::Error` of the same kind whose message carries the context, then the OS error
/// (for callers that speak `std::io::Result`, whose one message is all a reader sees).
impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(e.io.kind(), format!("{}: {}", e.context, e.io))
    }
}

/// Result of the sys layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an `io::Result` into [`Result`] with a context built only on error.
pub(crate) trait Context<T> {
    /// Adds `what path` as the context of an error.
    fn at(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn at(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::at(what, path, e))
    }
}
