//! Small durable-file helpers shared by the store's metadata writers, over
//! [`crate::sys::durable`] (which every layer uses).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{Error, Result};
use crate::sys::durable;

/// Writes `data` to `path` so that after a crash the file holds either the old or the new
/// contents: temporary file, fsync, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(data))
}

/// Like [`write_atomic`], with the contents streamed by `fill` (large files, such as stamps,
/// are never built in memory first).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    Ok(durable::replace_with(path, durable::PRIVATE, fill)?)
}

/// Fsyncs a directory so a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    durable::sync_dir(dir).map_err(crate::sys::Error::into_io)
}

/// The store's I/O error for a failed durable-file step, with what was being done.
impl From<crate::sys::Error> for Error {
    fn from(e: crate::sys::Error) -> Error {
        let (context, source) = e.into_parts();
        Error::io(context, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writes_of_one_file_never_tear_or_fail() {
        // Each writer has a temporary file of its own, so two threads replacing the same
        // file never write into one temporary or rename one away from under the other.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..40 {
                        write_atomic(path, &[b'a' + t; 8192]).unwrap();
                    }
                });
            }
        });
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 8192);
        assert!(data.iter().all(|b| *b == data[0]), "a torn file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("store.json");
        // The name the store's writers used before: `.NAME.tmp.PID`.
        let old_tmp = dir
            .path()
            .join(format!(".store.json.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }
}
