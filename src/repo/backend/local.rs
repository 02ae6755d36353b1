//! [`LocalDir`]: a repository in a local folder. Each key is a file at its name under the
//! folder (`packs/ab/ab01…`), mode 0600 in folders of mode 0700. Writes go to a hidden
//! temporary file beside the target, are fsynced, then renamed (replace) or hard-linked
//! (create-only: link(2) fails if the name exists, so two creators never both win) into
//! place, and the folder is fsynced; so a crash leaves the old object or the new one, never
//! a torn one. The lock is a flock on `lock` (see `repo::lock`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::super::error::{Error, Fix, IoContext, Result};
use super::super::fault::FilePoints;
use super::super::fsx;
use super::super::lock::RepoLock;
use super::{Backend, Created, Finishing, Key, Kind, LockGuard, Upload};
use crate::sys::durable;

/// Open files of immutable objects (packs, index runs) kept for range reads.
const OPEN_FILES: usize = 32;
/// Marker in the names of unfinished uploads.
const PART_MARK: &str = ".part.";

/// A repository in a local folder (see the module documentation).
pub struct LocalDir {
    root: PathBuf,
    files: Mutex<VecDeque<(Key, Arc<File>)>>,
}

impl std::fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalDir({})", self.root.display())
    }
}

impl LockGuard for RepoLock {}

impl LocalDir {
    /// The repository in folder `root` (which is not checked or created here).
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_path_buf(),
            files: Mutex::new(VecDeque::new()),
        }
    }

    /// Creates the folder (empty or missing) and its object folders.
    pub fn create_layout(&self) -> Result<()> {
        fsx::ensure_dir(&self.root)?;
        for kind in Kind::FOLDERS {
            fsx::ensure_dir(&self.root.join(kind.folder()))?;
        }
        Ok(())
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`.
    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.root.join(key.name())
    }

    /// The file's folder, created if missing (packs are fanned out over 256 folders).
    fn folder_for(&self, key: &Key) -> Result<PathBuf> {
        let path = self.path_of(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if key.kind() == Kind::Pack {
            fsx::ensure_dir(&dir)?;
        }
        Ok(dir)
    }

    /// An open file of an immutable object, from the cache or opened now.
    fn open(&self, key: &Key) -> Result<Arc<File>> {
        let cacheable = matches!(key.kind(), Kind::Pack | Kind::Index);
        if cacheable {
            if let Some((_, f)) = self.files.lock().iter().find(|(k, _)| k == key) {
                return Ok(f.clone());
            }
        }
        let path = self.path_of(key);
        let file = Arc::new(File::open(&path).ctx(|| format!("opening {}", path.display()))?);
        if cacheable {
            let mut files = self.files.lock();
            if files.len() >= OPEN_FILES {
                files.pop_front();
            }
            files.push_back((key.clone(), file.clone()));
        }
        Ok(file)
    }

    /// Forgets a cached open file (the object is being deleted).
    fn forget(&self, key: &Key) {
        self.files.lock().retain(|(k, _)| k != key);
    }

    /// The entries of `dir` that are regular files, as (name, size); hidden names (our own
    /// temporary files) are left out, anything else that is not a regular file is logged.
    fn files_in(&self, dir: &Path) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Only regular files: a link, FIFO or device must not lead reads elsewhere or
            // hang them.
            match entry.metadata() {
                Ok(m) if entry.file_type().is_ok_and(|t| t.is_file()) => out.push((name, m.len())),
                _ => log::warn!(
                    "{}: ignoring {}, which is not a file snarf wrote",
                    self.root.display(),
                    entry.path().display()
                ),
            }
        }
        Ok(out)
    }
}

impl Backend for LocalDir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(key);
        let data = fsx::read_optional_capped(&path, cap)?;
        if data.as_ref().is_some_and(|d| d.len() as u64 > cap) {
            return Err(Error::Damaged {
                repo: self.root.clone(),
                path,
                why: format!("it is larger than {cap} bytes, which no such object is"),
                fix: Fix::Check,
            });
        }
        Ok(data)
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        let file = self.open(key)?;
        let len = usize::try_from(len)
            .map_err(|_| Error::BadArgument(format!("a read of {len} bytes of {key}")))?;
        let mut buf = vec![0u8; len];
        fsx::read_exact_at(&file, &mut buf, offset).ctx(|| {
            format!(
                "reading {len} bytes at offset {offset} of {}",
                self.path_of(key).display()
            )
        })?;
        Ok(buf)
    }

    fn size(&self, key: &Key) -> Result<Option<u64>> {
        let path = self.path_of(key);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(Error::Damaged {
                repo: self.root.clone(),
                path,
                why: "it is not a regular file".into(),
                fix: Fix::Check,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
        self.folder_for(key)?;
        fsx::write_atomic(&self.path_of(key), data, FilePoints::NONE)
    }

    fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
        self.folder_for(key)?;
        let made = durable::create_exclusive(&self.path_of(key), data, durable::PRIVATE)?;
        Ok(match made {
            durable::Created::Created => Created::Created,
            durable::Created::AlreadyExists => Created::AlreadyExists,
        })
    }

    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
        self.folder_for(key)?;
        let path = self.path_of(key);
        let (part, file) = durable::create_hidden(&path, PART_MARK, durable::PRIVATE)?;
        Ok(Box::new(LocalUpload {
            path,
            part,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            len: 0,
        }))
    }

    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
        let folder = self.root.join(kind.folder());
        if kind == Kind::Config {
            return Ok(self
                .size(&Key::Config)?
                .map(|n| (Key::Config, n))
                .into_iter()
                .collect());
        }
        if !folder.is_dir() {
            return Err(Error::Damaged {
                repo: self.root.clone(),
                path: folder,
                why: format!("the {} folder is missing", kind.folder()),
                fix: Fix::RepairIndex,
            });
        }
        let mut names = Vec::new();
        if kind == Kind::Pack {
            for entry in
                std::fs::read_dir(&folder).ctx(|| format!("listing {}", folder.display()))?
            {
                let entry = entry.ctx(|| format!("listing {}", folder.display()))?;
                let fan = entry.file_name().to_string_lossy().into_owned();
                if fan.starts_with('.') {
                    continue;
                }
                let ty = entry.file_type();
                if fan.ends_with(".pack") && ty.as_ref().is_ok_and(|t| t.is_file()) {
                    // A format 1 pack an upgrade kept; its name is checked by Key::parse.
                    let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    names.push((fan, len));
                    continue;
                }
                if !ty.is_ok_and(|t| t.is_dir()) {
                    log::warn!(
                        "{}: ignoring {}, which is not a pack folder",
                        self.root.display(),
                        entry.path().display()
                    );
                    continue;
                }
                for (name, len) in self.files_in(&entry.path())? {
                    names.push((format!("{fan}/{name}"), len));
                }
            }
        } else {
            names = self.files_in(&folder)?;
        }
        let mut out = Vec::with_capacity(names.len());
        for (name, len) in names {
            match Key::parse(kind, &name) {
                Some(k) => out.push((k, len)),
                None => log::warn!(
                    "{}: ignoring {}/{name}, which is not a name snarf gives objects",
                    self.root.display(),
                    kind.folder()
                ),
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<bool> {
        self.forget(key);
        let path = self.path_of(key);
        let existed = fsx::remove_if_exists(&path)?;
        if existed {
            fsx::sync_dir(path.parent().unwrap_or(&self.root))?;
        }
        Ok(existed)
    }

    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
        let lock = match wait {
            Some(t) => RepoLock::acquire_wait(&self.root, holder, t)?,
            None => RepoLock::try_acquire(&self.root, holder)?,
        };
        Ok(Box::new(lock))
    }

    fn sweep_leftovers(&self) -> Result<u64> {
        let mut dirs = vec![self.root.clone()];
        for kind in Kind::FOLDERS {
            dirs.push(self.root.join(kind.folder()));
        }
        if let Ok(fans) = std::fs::read_dir(self.root.join(Kind::Pack.folder())) {
            for f in fans.flatten() {
                if f.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(f.path());
                }
            }
        }
        let mut removed = 0;
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut here = 0;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with('.')
                    && (name.contains(fsx::TMP_MARK) || name.contains(PART_MARK));
                if ours && fsx::remove_if_exists(&e.path())? {
                    here += 1;
                }
            }
            if here > 0 {
                fsx::sync_dir(&dir)?;
                removed += here;
            }
        }
        Ok(removed)
    }
}

/// An upload to a hidden part file, renamed into place when finished.
struct LocalUpload {
    path: PathBuf,
    part: PathBuf,
    out: Option<BufWriter<File>>,
    len: u64,
}

impl Upload for LocalUpload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let part = &self.part;
        match self.out.as_mut() {
            Some(out) => out
                .write_all(data)
                .ctx(|| format!("writing {}", part.display()))?,
            None => {
                return Err(Error::BadArgument(format!(
                    "{} is finished",
                    part.display()
                )))
            }
        }
        self.len += data.len() as u64;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let part = self.part.clone();
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("writing {}", part.display()))?;
        Ok(durable::install(file, &part, &self.path)?)
    }

    fn finish_later(self: Box<Self>) -> Result<Box<dyn Finishing>> {
        // The fsync and rename on a thread of their own, so the caller streams the next
        // pack meanwhile (dropped unfinished if the thread cannot start: nothing visible).
        let t = std::thread::Builder::new()
            .name("snarf-fsync".into())
            .spawn(move || self.finish())
            .map_err(|e| Error::io("starting a thread to finish an upload", e))?;
        Ok(Box::new(Installing(Some(t))))
    }
}

/// A [`LocalUpload`] being fsynced and renamed into place by a thread of its own.
struct Installing(Option<std::thread::JoinHandle<Result<()>>>);

impl Finishing for Installing {
    fn ready(&mut self) -> bool {
        self.0.as_ref().is_none_or(|t| t.is_finished())
    }

    fn wait(mut self: Box<Self>) -> Result<()> {
        match self.0.take() {
            Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(()),
        }
    }
}

impl Drop for Installing {
    fn drop(&mut self) {
        // Unwaited, the install still completes (an unreferenced pack is harmless); it is
        // joined so no fsync outlives its owner unseen.
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ObjectId;
    use super::*;
    use crate::repo::ids::{BackupId, PackId};
    use std::os::unix::fs::PermissionsExt;

    fn backend() -> (tempfile::TempDir, LocalDir) {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(&dir.path().join("r"));
        b.create_layout().unwrap();
        (dir, b)
    }

    #[test]
    fn write_replaces_create_refuses_a_taken_key_and_files_are_0600() {
        let (_d, b) = backend();
        let k = Key::Backup(BackupId::generate(1_800_000_000));
        assert_eq!(b.read(&k, 1 << 20).unwrap(), None);
        assert_eq!(b.create(&k, b"one").unwrap(), Created::Created);
        assert_eq!(b.create(&k, b"two").unwrap(), Created::AlreadyExists);
        assert_eq!(b.read(&k, 1 << 20).unwrap().unwrap(), b"one");
        b.write(&k, b"three").unwrap();
        assert_eq!(b.read(&k, 1 << 20).unwrap().unwrap(), b"three");
        assert!(b.read(&k, 2).is_err(), "a cap smaller than the object");
        let mode = std::fs::metadata(b.path_of(&k))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(b.size(&k).unwrap(), Some(5));
        assert_eq!(b.read_range(&k, 1, 3).unwrap(), b"hre");
        assert!(b.read_range(&k, 4, 3).is_err(), "a range past the end");
        assert!(b.delete(&k).unwrap());
        assert!(!b.delete(&k).unwrap());
        assert_eq!(b.size(&k).unwrap(), None);
        // Nothing but the objects is left in the folder.
        assert_eq!(
            std::fs::read_dir(b.root().join("backups")).unwrap().count(),
            0
        );
    }

    #[test]
    fn an_upload_is_visible_only_once_finished_and_nothing_stays_if_dropped() {
        let (_d, b) = backend();
        let k = Key::Pack(PackId::generate());
        let mut u = b.upload(&k).unwrap();
        u.write(b"pack ").unwrap();
        u.write(b"bytes").unwrap();
        assert_eq!(u.len(), 10);
        assert!(b.list(Kind::Pack).unwrap().is_empty());
        u.finish().unwrap();
        assert_eq!(b.list(Kind::Pack).unwrap(), vec![(k.clone(), 10)]);
        let k2 = Key::Pack(PackId::generate());
        let mut u = b.upload(&k2).unwrap();
        u.write(b"torn").unwrap();
        drop(u);
        assert_eq!(b.list(Kind::Pack).unwrap().len(), 1);
        // A part file a killed writer left behind is swept; the sealed pack is not.
        let fan = b.path_of(&k2).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&fan).unwrap();
        std::fs::write(
            fan.join(format!(".{}{PART_MARK}1.0", PackId::generate())),
            b"x",
        )
        .unwrap();
        assert_eq!(b.sweep_leftovers().unwrap(), 1);
        assert_eq!(b.read(&k, 100).unwrap().unwrap(), b"pack bytes");
    }

    #[test]
    fn listings_return_only_names_snarf_makes() {
        let (_d, b) = backend();
        let good = Key::Index(ObjectId::generate());
        b.write(&good, b"run").unwrap();
        let dir = b.root().join("index");
        std::fs::write(dir.join("not-a-run"), b"x").unwrap();
        std::fs::write(
            dir.join(good.name().to_uppercase().replace("INDEX/", "")),
            b"x",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(ObjectId::generate().to_string()))
            .unwrap();
        std::fs::create_dir(dir.join(ObjectId::generate().to_string())).unwrap();
        assert_eq!(b.list(Kind::Index).unwrap(), vec![(good, 3)]);
        let packs = b.root().join("packs");
        let id = PackId::generate().to_string();
        std::fs::create_dir_all(packs.join("zz")).unwrap();
        std::fs::write(packs.join("zz").join(&id), b"misplaced").unwrap();
        std::fs::write(packs.join("stray"), b"x").unwrap();
        assert!(b.list(Kind::Pack).unwrap().is_empty());
        std::fs::remove_dir_all(b.root().join("pins")).unwrap();
        assert!(b.list(Kind::Pin).is_err(), "a missing folder is damage");
    }

    #[test]
    fn the_lock_is_exclusive_and_named() {
        let (_d, b) = backend();
        let held = b.lock("snarf backup x", None).unwrap();
        let msg = b.lock("snarf prune", None).unwrap_err().to_string();
        assert!(msg.contains("snarf backup x"), "{msg}");
        drop(held);
        let _again = b
            .lock("snarf prune", Some(Duration::from_millis(10)))
            .unwrap();
    }
}
