//! Durable file operations of a repository, over [`crate::sys::durable`] (which every layer
//! uses). Every file of a repository is written under a temporary name, fsynced, renamed into
//! place and its directory fsynced, with mode 0600 (folders 0700), so a crash leaves either
//! the old file or the new one, never a torn one. Fault points sit between each write and its
//! fsync and between each rename and its directory fsync.

use std::fs::File;
use std::path::Path;

use super::error::{IoContext, Result};
use super::fault::FilePoints;
use crate::sys::durable::{self, Step};

/// Marker in temporary file names, so recovery can recognise and remove leftovers.
pub const TMP_MARK: &str = durable::TMP_MARK;

/// Fsyncs a directory so creates, renames and unlinks inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    Ok(durable::sync_dir(dir)?)
}

/// Creates a folder with mode 0700 if it is missing, and makes its entry durable.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    Ok(durable::ensure_dir(dir, 0o700)?)
}

/// Creates a new file for writing with mode 0600.
pub fn create_new(path: &Path) -> Result<File> {
    Ok(durable::create_new(path, durable::PRIVATE)?)
}

/// A file being written under a temporary name; [`AtomicFile::commit`] makes it durable at
/// its final path, dropping it without commit removes it.
pub struct AtomicFile(durable::AtomicFile);

impl AtomicFile {
    /// Starts writing the replacement of `path`.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        Ok(AtomicFile(durable::AtomicFile::create(
            path,
            durable::PRIVATE,
        )?))
    }

    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.0.write_all(data)?)
    }

    /// The underlying file, flushed, for positioned writes (e.g. a header written last).
    pub fn file(&mut self) -> Result<&File> {
        Ok(self.0.file()?)
    }

    /// Fsyncs, renames into place and fsyncs the folder, stopping at `points` on the way.
    pub fn commit(self, points: FilePoints) -> Result<()> {
        Ok(self.0.commit_with(|step| match step {
            Step::Written => {
                points.written();
                Ok(())
            }
            Step::Renamed => {
                points.renamed();
                super::fault::injected(points.renamed)
            }
        })?)
    }
}

/// Replaces `path` with `data` durably.
pub fn write_atomic(path: &Path, data: &[u8], points: FilePoints) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.commit(points)
}

/// Removes a file if it exists; returns whether it existed. The caller syncs the folder.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    Ok(durable::remove_if_exists(path)?)
}

/// Removes leftover temporary files of crashed writers in `dir` (not recursive).
pub fn remove_tmp_leftovers(dir: &Path) -> Result<()> {
    durable::remove_leftovers(dir, |name| durable::is_hidden_with(name, TMP_MARK))?;
    Ok(())
}

/// The repository's I/O error for a failed durable-file step, with what was being done.
impl From<crate::sys::Error> for super::Error {
    fn from(e: crate::sys::Error) -> super::Error {
        let (context, source) = e.into_parts();
        super::Error::io(context, source)
    }
}

/// Reads a whole small file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Reads a small file, `None` if it does not exist; at most `cap + 1` bytes, so a caller
/// sees a file larger than `cap` (a hostile one, or a link to /dev/zero) without reading it.
pub fn read_optional_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(super::Error::io(format!("reading {}", path.display()), e)),
    };
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut data)
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(Some(data))
}

/// Reads exactly `buf.len()` bytes at `offset`, failing on a short file.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_with_mode_0600_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", FilePoints::NONE).unwrap();
        write_atomic(&p, b"two", FilePoints::NONE).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(&dir.path().join("g")).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
