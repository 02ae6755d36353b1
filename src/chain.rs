//! An error's chain of causes, walked by type rather than read as text: whether a disk was
//! full somewhere below is the errno of an `io::Error` in the chain, not words in a message
//! (which a repository or snapshot name could contain, and which a message need not repeat).

use std::error::Error;

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
}
