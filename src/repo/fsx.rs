//! Durable file operations. Every file of a repository is written under a temporary name,
//! fsynced, renamed into place and its directory fsynced, with mode 0600 (folders 0700), so a
//! crash leaves either the old file or the new one, never a torn one. Fault points sit between
//! each write and its fsync and between each rename and its directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{IoContext, Result};
use super::fault::FilePoints;

/// Marker in temporary file names, so recovery can recognise and remove leftovers.
pub const TMP_MARK: &str = ".tmp.";

/// Fsyncs a directory so creates, renames and unlinks inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("syncing folder {}", dir.display()))
}

/// Creates a folder with mode 0700 if it is missing, and makes its entry durable.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .ctx(|| format!("creating folder {}", dir.display()))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// A temporary name beside `path`, unique within this process.
fn tmp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{TMP_MARK}{}.{n}", std::process::id()))
}

/// Creates a new file for writing with mode 0600.
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))
}

/// A file being written under a temporary name; [`AtomicFile::commit`] makes it durable at
/// its final path, dropping it without commit removes it.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing the replacement of `path`.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let tmp = tmp_path(path);
        let file = create_new(&tmp)?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let tmp = &self.tmp;
        match self.out.as_mut() {
            Some(out) => out
                .write_all(data)
                .ctx(|| format!("writing {}", tmp.display())),
            None => Ok(()),
        }
    }

    /// The underlying file, flushed, for positioned writes (e.g. a header written last).
    pub fn file(&mut self) -> Result<&File> {
        let tmp = &self.tmp;
        match self.out.as_mut() {
            Some(out) => {
                out.flush().ctx(|| format!("writing {}", tmp.display()))?;
                Ok(out.get_ref())
            }
            None => Err(super::Error::BadArgument(format!(
                "{} was already committed",
                tmp.display()
            ))),
        }
    }

    /// Fsyncs, renames into place and fsyncs the folder.
    pub fn commit(mut self, points: FilePoints) -> Result<()> {
        let tmp = self.tmp.clone();
        let path = self.path.clone();
        let out = self.out.take();
        let Some(out) = out else { return Ok(()) };
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("writing {}", tmp.display()))?;
        points.written();
        file.sync_all()
            .ctx(|| format!("syncing {}", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, &path)
            .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        points.renamed();
        let dir = path.parent().unwrap_or(Path::new("."));
        super::fault::injected(points.renamed)
            .ctx(|| format!("syncing folder {}", dir.display()))?;
        sync_dir(dir)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
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
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(super::Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Removes leftover temporary files of crashed writers in `dir` (not recursive).
pub fn remove_tmp_leftovers(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut removed = false;
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TMP_MARK) {
            removed |= remove_if_exists(&entry.path())?;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
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
