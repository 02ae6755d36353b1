//! An error with its chain of causes, shown once and walked by type. Every layer's error
//! type words only what went wrong at its level and returns the cause from `source()`
//! without printing it (thiserror `#[source]`, no `{source}` in the message), so whoever
//! shows an error to a person shows [`Chain`]: "what failed: why: why that", each cause once.
//! Causes are found by type, not read as text: whether a disk was full somewhere below is
//! the errno of an `io::Error` in the chain, not words in a message (which a repository or
//! snapshot name could contain, and which a message need not repeat).
//! The text of a panic payload is here too, for the places that catch a panic and report it
//! (the FUSE adapter, the job server), so neither depends on the other for it.

use std::error::Error;
use std::fmt;

/// An error, then each of its causes after ": ".
#[derive(Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl<'a> Chain<'a> {
    /// The chain of `e`.
    pub fn new(e: &'a (dyn Error + 'static)) -> Chain<'a> {
        Chain(e)
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for cause in causes(self.0).skip(1) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Showing any error with its causes: `e.chain()` where a person reads it.
pub trait ErrorChain {
    /// The error and its causes, each once.
    fn chain(&self) -> Chain<'_>;
}

impl<E: Error + 'static> ErrorChain for E {
    fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

/// The error and its causes, outermost first.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}

/// The I/O errors in the chain, outermost first.
pub fn io_errors<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a std::io::Error> {
    causes(e).filter_map(|c| c.downcast_ref::<std::io::Error>())
}

/// Whether a full disk caused the error: an `io::Error` in the chain is ENOSPC, or of kind
/// `StorageFull` without an errno.
pub fn is_disk_full(e: &(dyn Error + 'static)) -> bool {
    io_errors(e).any(|io| {
        io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull
    })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_full_disk_is_found_by_its_errno_or_kind_at_any_depth() {
        let deep = |io| Outer(Middle(io));
        assert!(is_disk_full(&deep(std::io::Error::from_raw_os_error(
            libc::ENOSPC
        ))));
        assert!(is_disk_full(&deep(std::io::ErrorKind::StorageFull.into())));
        assert!(!is_disk_full(&deep(std::io::Error::from_raw_os_error(
            libc::EIO
        ))));
        // Words are not a cause: a message that says so is not a full disk.
        let words = std::io::Error::other("No space left on device (os error 28)");
        assert!(!is_disk_full(&deep(words)));
        assert_eq!(causes(&deep(std::io::Error::other("x"))).count(), 3);
    }

    /// Every layer's error with a cause: the cause's words appear once in the chain, after
    /// what the layer says, and the error's own message does not repeat them.
    #[test]
    fn every_layer_shows_its_cause_once() {
        let os = || std::io::Error::from_raw_os_error(libc::EACCES);
        let words = os().to_string();
        let repo_io = || crate::repo::Error::io("writing pack 1f", os());
        let cases: Vec<(Box<dyn Error + 'static>, &str)> = vec![
            (
                Box::new(crate::store::Error::io("reading volume 7", os())),
                "reading volume 7",
            ),
            (
                Box::new(crate::snapshot::Error::io("spilling", os())),
                "spilling",
            ),
            (Box::new(repo_io()), "writing pack 1f"),
            (
                Box::new(repo_io().at("b1", "v", 4096)),
                "backup b1, volume \"v\", byte offset 4096",
            ),
            (
                Box::new(crate::repo::Error::FinishingStuck {
                    repo: "/r".into(),
                    what: "the finishing of backup b1".into(),
                    source: Box::new(repo_io()),
                }),
                "repository /r: the finishing of backup b1 cannot be completed",
            ),
            (
                Box::new(crate::pids::Error::io("writing run/pids", os())),
                "writing run/pids",
            ),
            (
                Box::new(crate::pids::Error::Proc {
                    context: "reading /proc/self/stat".into(),
                    source: os(),
                }),
                "cannot identify processes",
            ),
            (
                Box::new(crate::pids::Error::Signals { source: os() }),
                "cannot watch for SIGTERM",
            ),
            (
                Box::new(crate::jobs::Error::io("connecting", os())),
                "connecting",
            ),
            (
                Box::new(crate::jobs::Error::from(repo_io())),
                "writing pack 1f",
            ),
            (
                Box::new(crate::jobs::Error::from(crate::snapshot::Error::io(
                    "spilling",
                    os(),
                ))),
                "spilling",
            ),
            (
                Box::new(crate::daemon::Error::io("creating run/jobs", os())),
                "creating run/jobs",
            ),
            (
                Box::new(crate::daemon::Error::refused(
                    crate::control::ControlFile::Jobs,
                    crate::daemon::Error::from(repo_io()),
                )),
                "control/jobs: writing pack 1f",
            ),
        ];
        for (e, starts) in cases {
            let shown = Chain::new(&*e).to_string();
            assert_eq!(shown.matches(&words).count(), 1, "{shown}");
            assert!(shown.starts_with(starts), "{shown}");
            assert!(shown.ends_with(&words), "{shown}");
            assert!(!e.to_string().contains(&words), "{e} repeats its cause");
        }
    }

    #[test]
    fn a_chain_shows_every_cause_once_in_order() {
        let e = Outer(Middle(std::io::Error::from_raw_os_error(libc::ENOENT)));
        assert_eq!(
            e.chain().to_string(),
            "outer: middle: No such file or directory (os error 2)"
        );
        assert_eq!(
            Middle(std::io::Error::other("x")).chain().to_string(),
            "middle: x"
        );
    }
}
