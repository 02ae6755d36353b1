//! Durable files, the one implementation every layer uses (after proxmox_sys's
//! `replace_file`). A file is replaced by writing a new one under a hidden temporary name in
//! the same folder (created with O_EXCL, so it is a fresh inode of the mode asked for, never a
//! planted file or link), fsyncing it, renaming it over the target and fsyncing the folder: a
//! crash or power cut leaves the old contents or the new ones, never a torn file or a lost
//! name. A file that must not already exist is made visible with link(2), which fails if the
//! name is taken, so two creators never both win. Folders are created with their entry made
//! durable in the parent; removals are made durable the same way.
//!
//! The strict POSIX reading this follows: a file's data is durable at its fsync, a directory
//! entry (create, rename, unlink, mkdir) at an fsync of that directory.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Context, Error, Result};

/// Marker in temporary file names (`.NAME.tmp.PID.N`), so leftovers of a killed writer can be
/// recognised and removed.
pub const TMP_MARK: &str = ".tmp.";

/// Mode of the files snarf writes for itself (state, registry, repository objects).
pub const PRIVATE: u32 = 0o600;

/// Buffer size of [`AtomicFile`] writers: large files (stamps, index runs) are streamed.
const BUFFER: usize = 1 << 20;

/// Fresh names a writer tries when its temporary name is taken (only a dead process that had
/// the same pid can have left one), before it gives up.
const NAME_TRIES: u32 = 64;

/// A hidden name beside `path` with `mark` in it, unique within this process:
/// `.NAME{mark}PID.N`.
pub fn hidden_beside(path: &Path, mark: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{mark}{}.{n}", std::process::id()))
}

/// Whether `name` is a hidden temporary name that [`hidden_beside`] makes with `mark`.
pub fn is_hidden_with(name: &str, mark: &str) -> bool {
    name.starts_with('.') && name.contains(mark)
}

/// Creates a new file for reading and writing with `mode`; fails if the name exists (also as
/// a symbolic link, which is not followed).
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at("creating", path)
}

/// Creates a new hidden file beside `path` named with `mark` ([`hidden_beside`]), trying fresh
/// names while one is taken; returns its name and the file.
pub fn create_hidden(path: &Path, mark: &str, mode: u32) -> Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let tmp = hidden_beside(path, mark);
        match create_new(&tmp, mode) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.io.kind() == ErrorKind::AlreadyExists && tries < NAME_TRIES => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The folder an entry `path` lives in.
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs a folder so the creates, renames and unlinks inside it are durable. The empty
/// path (the parent of a relative name such as `store`) is the current directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|f| f.sync_all())
        .at("syncing folder", dir)
}

/// Creates folder `dir` with `mode` if it is missing and makes its entry durable in the
/// parent. The parent must exist.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile; its maker syncs the parent, but so do we, so the
        // caller can rely on the entry being durable when this returns.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::at("creating folder", dir, e)),
    }
    sync_dir(parent_of(dir))
}

/// Removes a file if it exists; returns whether it existed. Not yet durable: the caller
/// syncs the folder once for several removals, or uses [`remove`].
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::at("removing", path, e)),
    }
}

/// Removes a file if it exists, durably (its folder is fsynced when it existed); returns
/// whether it existed.
pub fn remove(path: &Path) -> Result<bool> {
    let existed = remove_if_exists(path)?;
    if existed {
        sync_dir(parent_of(path))?;
    }
    Ok(existed)
}

/// Removes the entries of `dir` (not recursive) whose name `leftover` accepts, such as the
/// temporary files of killed writers, and syncs the folder if any went. Returns how many.
/// A missing folder has none.
pub fn remove_leftovers(dir: &Path, leftover: impl Fn(&str) -> bool) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::at("listing", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.at("listing", dir)?;
        if leftover(&entry.file_name().to_string_lossy()) && remove_if_exists(&entry.path())? {
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// A step of [`AtomicFile::commit_with`], where a caller may stop (crash tests) or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Everything is written, nothing is fsynced yet.
    Written,
    /// The file is fsynced and renamed into place; the folder is not fsynced yet. An error
    /// returned here is reported as that folder fsync failing.
    Renamed,
}

/// A file being written under a hidden temporary name beside its final path;
/// [`AtomicFile::commit`] makes it durable there, dropping it without commit removes it.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicFile({})", self.tmp.display())
    }
}

impl AtomicFile {
    /// Starts writing the replacement of `path`, with `mode`.
    pub fn create(path: &Path, mode: u32) -> Result<AtomicFile> {
        AtomicFile::create_marked(path, TMP_MARK, mode)
    }

    /// Like [`AtomicFile::create`], with `mark` in the temporary name instead of
    /// [`TMP_MARK`] (a repository's unfinished uploads have their own).
    pub fn create_marked(path: &Path, mark: &str, mode: u32) -> Result<AtomicFile> {
        let (tmp, file) = create_hidden(path, mark, mode)?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(BUFFER, file)),
        })
    }

    /// The temporary file's path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The writer, or an error once committed.
    fn out(&mut self) -> Result<&mut BufWriter<File>> {
        let tmp = &self.tmp;
        self.out.as_mut().ok_or_else(|| {
            Error::at(
                "writing",
                tmp,
                std::io::Error::other("the file was already committed"),
            )
        })
    }

    /// Appends bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let tmp = self.tmp.clone();
        self.out()?.write_all(data).at("writing", &tmp)
    }

    /// The buffered writer, for streaming contents (e.g. `serde_json::to_writer`).
    pub fn writer(&mut self) -> Result<&mut BufWriter<File>> {
        self.out()
    }

    /// The underlying file, flushed, for positioned writes (e.g. a header written last).
    pub fn file(&mut self) -> Result<&File> {
        let tmp = self.tmp.clone();
        let out = self.out()?;
        out.flush().at("writing", &tmp)?;
        Ok(out.get_ref())
    }

    /// Fsyncs the file, renames it into place and fsyncs the folder.
    pub fn commit(self) -> Result<()> {
        self.commit_with(|_| Ok(()))
    }

    /// [`AtomicFile::commit`], calling `step` at each [`Step`].
    pub fn commit_with(mut self, step: impl FnMut(Step) -> std::io::Result<()>) -> Result<()> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = match out.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(Error::at("writing", &self.tmp, e.into_error()));
            }
        };
        install_with(file, &self.tmp, &self.path, step)
    }
}

/// Makes `file`, written in full under the temporary name `tmp` beside `path`, durable at
/// `path`: fsyncs it, renames it over `path` and fsyncs the folder. On failure before the
/// rename the temporary file is removed and `path` keeps what it held.
pub fn install(file: File, tmp: &Path, path: &Path) -> Result<()> {
    install_with(file, tmp, path, |_| Ok(()))
}

/// [`install`], calling `step` at each [`Step`].
pub fn install_with(
    file: File,
    tmp: &Path,
    path: &Path,
    mut step: impl FnMut(Step) -> std::io::Result<()>,
) -> Result<()> {
    let result = (|| {
        step(Step::Written).at("writing", tmp)?;
        file.sync_all().at("syncing", tmp)?;
        drop(file);
        std::fs::rename(tmp, path).map_err(|e| Error {
            context: format!("renaming {} to {}", tmp.display(), path.display()),
            io: e,
        })
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    let dir = parent_of(path);
    step(Step::Renamed).at("syncing folder", dir)?;
    sync_dir(dir)
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `path` with `data` durably; a new file gets `mode`.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create(path, mode)?;
    f.write_all(data)?;
    f.commit()
}

/// Like [`replace`], with the contents streamed by `fill` (large files are never built in
/// memory first).
pub fn replace_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut f = AtomicFile::create(path, mode)?;
    let tmp = f.tmp.clone();
    fill(f.writer()?).at("writing", &tmp)?;
    f.commit()
}

/// Whether [`create_exclusive`] made the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It did: the file holds `data`.
    Created,
    /// The name was taken; the file there is unchanged.
    AlreadyExists,
}

/// Creates `path` holding `data`, durably, only if the name is free: the data is written and
/// fsynced under a temporary name, then linked to `path` (link(2) fails if the name exists,
/// even between two creators at once), and the folder is fsynced.
pub fn create_exclusive(path: &Path, data: &[u8], mode: u32) -> Result<Created> {
    let (tmp, mut file) = create_hidden(path, TMP_MARK, mode)?;
    let result = (|| {
        file.write_all(data)
            .and_then(|_| file.sync_all())
            .at("writing", &tmp)?;
        drop(file);
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Created::Created),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
            Err(e) => Err(Error {
                context: format!("creating {} from {}", path.display(), tmp.display()),
                io: e,
            }),
        }
    })();
    // The temporary name goes whatever happened; the folder sync below makes that durable
    // too when the file was created.
    let _ = std::fs::remove_file(&tmp);
    let created = result?;
    sync_dir(parent_of(path))?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ErrorChain;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replace_writes_the_mode_asked_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        replace(&p, b"one", PRIVATE).unwrap();
        replace(&p, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o640);
        replace_with(&p, PRIVATE, |w| w.write_all(b"three")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        assert_eq!(mode(&p), PRIVATE);
        assert_eq!(names(dir.path()), ["f"]);
    }

    #[test]
    fn a_failing_fill_or_step_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        replace(&p, b"old", PRIVATE).unwrap();
        let e = replace_with(&p, PRIVATE, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("no more"))
        })
        .unwrap_err();
        assert!(e.context.starts_with("writing "), "{e}");
        let mut f = AtomicFile::create(&p, PRIVATE).unwrap();
        f.write_all(b"new").unwrap();
        let e = f
            .commit_with(|s| match s {
                Step::Written => Err(std::io::Error::other("stop")),
                Step::Renamed => Ok(()),
            })
            .unwrap_err();
        assert!(e.chain().to_string().contains("stop"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["f"]);
        // A failure after the rename is the folder fsync's: the new file is in place.
        let mut f = AtomicFile::create(&p, PRIVATE).unwrap();
        f.write_all(b"new").unwrap();
        let e = f
            .commit_with(|s| match s {
                Step::Written => Ok(()),
                Step::Renamed => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            })
            .unwrap_err();
        assert!(e.context.starts_with("syncing folder "), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn a_dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(&dir.path().join("g"), PRIVATE).unwrap();
        f.write_all(b"partial").unwrap();
        assert!(f.tmp_path().exists());
        drop(f);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_planted_link_or_file_at_a_temporary_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("f");
        // Plant a link at the next few temporary names this process would use.
        let next = hidden_beside(&p, TMP_MARK);
        let (prefix, n) = next.to_str().unwrap().rsplit_once('.').unwrap();
        let n: u64 = n.parse().unwrap();
        for k in 1..=8 {
            std::os::unix::fs::symlink(&victim, format!("{prefix}.{}", n + k)).unwrap();
        }
        replace(&p, b"mine", PRIVATE).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"mine");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
    }

    #[test]
    fn concurrent_replacements_never_tear_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        replace(p, &[t; 4096], PRIVATE).unwrap();
                    }
                });
            }
        });
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|b| *b == data[0]));
        assert_eq!(names(dir.path()), ["shared"]);
    }

    #[test]
    fn create_exclusive_makes_one_winner_and_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        assert_eq!(
            create_exclusive(&p, b"one", PRIVATE).unwrap(),
            Created::Created
        );
        assert_eq!(
            create_exclusive(&p, b"two", PRIVATE).unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(mode(&p), PRIVATE);
        assert_eq!(names(dir.path()), ["c"]);
        let wins = std::sync::atomic::AtomicU32::new(0);
        let q = dir.path().join("raced");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (q, wins) = (&q, &wins);
                s.spawn(move || {
                    if create_exclusive(q, &[t], PRIVATE).unwrap() == Created::Created {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.into_inner(), 1);
    }

    #[test]
    fn folders_removals_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        ensure_dir(&d, 0o700).unwrap();
        ensure_dir(&d, 0o700).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert!(ensure_dir(&dir.path().join("no/such"), 0o700).is_err());
        let f = d.join("f");
        replace(&f, b"x", PRIVATE).unwrap();
        assert!(remove(&f).unwrap());
        assert!(!remove(&f).unwrap());
        std::fs::write(d.join(".f.tmp.1.0"), b"torn").unwrap();
        std::fs::write(d.join("keep"), b"k").unwrap();
        assert_eq!(
            remove_leftovers(&d, |n| is_hidden_with(n, TMP_MARK)).unwrap(),
            1
        );
        assert_eq!(names(&d), ["keep"]);
        assert_eq!(remove_leftovers(&d.join("gone"), |_| true).unwrap(), 0);
        let e = create_new(&d.join("keep"), PRIVATE).unwrap_err();
        assert_eq!(e.io.kind(), ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("keep"), "{e}");
    }
}
