//! The filesystem the mount shows, as plain Rust: inode numbers and names in, attributes,
//! data and errors out. It is not tied to fuser, so tests drive it without a kernel
//! (`tests/fs.rs`, and `reftests.rs` against the snapshot oracle); `adapter.rs` links
//! fuser's callbacks to it. Policy lives in the engine and the daemon (`daemon::policy`
//! says who may command the mount and what volumes keep); this file decides only what each
//! path *is* (the layout of DESIGN.md) and which errno a refusal gets.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::errno::FsError;
use super::inode::{self, Inodes, Node};
use crate::control::ControlFile;
use crate::daemon::policy::{Owner, VOLUME_PERM};
use crate::daemon::Daemon;
use crate::repo::handle::VolumeReader;
use crate::snapshot::{Engine, SnapState, Snapshot};
use crate::store::volume::ErrorCursor;
use crate::store::Volume;

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

/// How long the kernel may cache entries and attributes of live volumes: short, since they
/// change with every write.
pub const LIVE_TTL: Duration = Duration::from_secs(1);
/// How long for snapshots: they never change. Releases through `control/snapshot` are
/// pushed to the kernel explicitly.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);
/// How long for backups: their contents never change, but a prune may remove them.
pub const BACKUP_TTL: Duration = Duration::from_secs(10);
/// Block size reported by stat: large, so cp and cat read and write in 1 MiB requests.
pub const BLKSIZE: u32 = 1 << 20;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// Attributes of an inode, in the terms stat uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// Attributes with how long the kernel may keep them.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The attributes.
    pub attr: Attr,
    /// Cache lifetime for the entry and the attributes.
    pub ttl: Duration,
}

/// An opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Handle for later calls.
    pub fh: u64,
    /// Keep the kernel's page cache across opens (snapshot files never change).
    pub keep_cache: bool,
    /// Bypass the page cache: control files, whose contents are made per read, and live
    /// volumes in the direct I/O mode, so each write(2) reaches the engine whole.
    pub direct_io: bool,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number shown.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Name.
    pub name: String,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// New attribute values a setattr asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New size (truncate).
    pub size: Option<u64>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
}

/// Filesystem figures for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// Where `lseek` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`.
    Data,
    /// `SEEK_HOLE`.
    Hole,
}

enum Handle {
    /// A live volume, with this open file's place in its error sequence, so each open file
    /// is told of a write-back error at its next fsync (or close).
    Volume(Arc<Volume>, ErrorCursor),
    Snap(Arc<Snapshot>, String),
    Control(ControlFile, Mutex<ControlBuf>),
    Backup(Box<VolumeReader>),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handle::Volume(v, _) => write!(f, "Volume({:016x})", v.id()),
            Handle::Snap(s, n) => write!(f, "Snap({}, {n})", s.name()),
            Handle::Control(c, _) => write!(f, "Control({c})"),
            Handle::Backup(r) => write!(f, "Backup({}, {})", r.backup(), r.volume()),
        }
    }
}

/// What a control file descriptor reads back: the table as it was at the first read (so a
/// read in pieces is consistent), or, once a command was written, its answer or refusal.
/// The answer is read from its start whatever the file offset (the write moved it).
#[derive(Debug, Default)]
struct ControlBuf {
    text: Option<Vec<u8>>,
    /// Set after a write: reads come from `answer_pos`, not the file offset.
    answered: bool,
    answer_pos: usize,
    /// What this descriptor wrote so far, for files whose writes build one text.
    draft: crate::daemon::ControlDraft,
}

/// The filesystem.
#[derive(Debug)]
pub struct SnarfFs {
    daemon: Arc<Daemon>,
    inodes: Inodes,
    handles: DashMap<u64, Arc<Handle>>,
    next_fh: AtomicU64,
    /// The mounting user: the owner shown on every inode, and whom the rules favour.
    owner: Owner,
    mounted_at: SystemTime,
}

fn to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

fn utf8(name: &OsStr) -> FsResult<&str> {
    name.to_str()
        .ok_or_else(|| FsError::new(libc::EINVAL, format!("name {name:?} is not valid UTF-8")))
}

impl SnarfFs {
    /// The filesystem over a daemon, owned by `uid`/`gid` (the mounting user).
    pub fn new(daemon: Arc<Daemon>, uid: u32, gid: u32) -> SnarfFs {
        SnarfFs {
            daemon,
            inodes: Inodes::default(),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            owner: Owner { uid, gid },
            mounted_at: SystemTime::now(),
        }
    }

    fn engine(&self) -> &Engine {
        self.daemon.engine()
    }

    /// The daemon behind the mount.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// The inode table (for invalidations pushed to the kernel).
    pub fn inodes(&self) -> &Inodes {
        &self.inodes
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes
            .get(ino)
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino} is no longer known")))
    }

    fn dir_attr(&self, ino: u64, perm: u16, time: SystemTime) -> Attr {
        Attr {
            ino,
            size: 0,
            blocks: 0,
            mtime: time,
            ctime: time,
            kind: Kind::Dir,
            perm,
            nlink: 2,
            uid: self.owner.uid,
            gid: self.owner.gid,
            blksize: BLKSIZE,
        }
    }

    fn file_attr(
        &self,
        ino: u64,
        size: u64,
        allocated: u64,
        mtime: SystemTime,
        ctime: SystemTime,
        perm: u16,
    ) -> Attr {
        Attr {
            ino,
            size,
            blocks: allocated.div_ceil(512),
            mtime,
            ctime,
            kind: Kind::File,
            perm,
            nlink: 1,
            uid: self.owner.uid,
            gid: self.owner.gid,
            blksize: BLKSIZE,
        }
    }

    /// Attributes and cache lifetime of a node.
    fn entry_of(&self, ino: u64, node: &Node) -> FsResult<Entry> {
        let (attr, ttl) = match node {
            Node::Root | Node::LiveDir | Node::BackupsDir | Node::ControlDir => {
                (self.dir_attr(ino, 0o755, self.mounted_at), LIVE_TTL)
            }
            Node::SnapshotsDir => (self.dir_attr(ino, 0o755, self.mounted_at), Duration::ZERO),
            Node::Control(f) => {
                let perm = if f.is_writable() { 0o644 } else { 0o444 };
                (
                    self.file_attr(ino, 0, 0, SystemTime::now(), SystemTime::now(), perm),
                    Duration::ZERO,
                )
            }
            Node::Volume(v) => {
                let a = v.attr();
                let attr = self.file_attr(
                    ino,
                    a.size,
                    a.allocated,
                    to_time(a.mtime_ns),
                    to_time(a.ctime_ns),
                    VOLUME_PERM,
                );
                (attr, LIVE_TTL)
            }
            Node::SnapDir(s) => {
                let t = to_time(s.created_ns());
                let mut attr = self.dir_attr(ino, 0o555, t);
                attr.nlink = 2;
                (attr, SNAPSHOT_TTL)
            }
            Node::BackupDir(m) => {
                let t = UNIX_EPOCH + Duration::from_secs(m.created);
                (self.dir_attr(ino, 0o555, t), BACKUP_TTL)
            }
            Node::BackupFile(m, name) => {
                let v = m
                    .volume(name)
                    .ok_or_else(|| FsError::not_found(format!("{name} in backup {}", m.id)))?;
                let t = UNIX_EPOCH + Duration::from_secs(m.created);
                let stored = v.size.saturating_sub(v.zero_snarfs * v.snarf_size as u64);
                (self.file_attr(ino, v.size, stored, t, t, 0o400), BACKUP_TTL)
            }
            Node::SnapFile(s, name) => {
                let sv = s
                    .volume(name)
                    .ok_or_else(|| FsError::not_found(format!("{name} in snapshot")))?;
                let a = sv.attr;
                let allocated = a.allocated.min(a.size.next_multiple_of(512));
                let attr = self.file_attr(
                    ino,
                    a.size,
                    allocated,
                    to_time(a.mtime_ns),
                    to_time(a.ctime_ns),
                    0o400,
                );
                (attr, SNAPSHOT_TTL)
            }
        };
        Ok(Entry { attr, ttl })
    }

    fn looked_up(&self, node: Node) -> FsResult<Entry> {
        let ino = self.inodes.lookup(&node);
        self.entry_of(ino, &node)
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let missing = || FsError::not_found(format!("{} not found", name.to_string_lossy()));
        let name = name.to_str().ok_or_else(missing)?;
        match self.node(parent)? {
            Node::Root => {
                let node = match name {
                    "live" => Node::LiveDir,
                    "snapshots" => Node::SnapshotsDir,
                    "backups" => Node::BackupsDir,
                    "control" => Node::ControlDir,
                    _ => return Err(missing()),
                };
                self.looked_up(node)
            }
            Node::LiveDir => {
                let vol = self.engine().volume(name).map_err(|_| missing())?;
                self.looked_up(Node::Volume(vol))
            }
            Node::SnapshotsDir => {
                if crate::snapshot::is_reserved(name) {
                    return Err(missing());
                }
                let snap = self.engine().snapshot(name).map_err(|_| missing())?;
                self.looked_up(Node::SnapDir(snap))
            }
            Node::SnapDir(s) => {
                if s.volume(name).is_none() {
                    return Err(missing());
                }
                self.looked_up(Node::SnapFile(s, name.to_string()))
            }
            Node::ControlDir => {
                let f = ControlFile::from_name(name).ok_or_else(missing)?;
                self.looked_up(Node::Control(f))
            }
            Node::BackupsDir => {
                let backups = self.daemon.backups()?;
                let m = backups
                    .into_iter()
                    .find(|m| m.id.as_str() == name)
                    .ok_or_else(missing)?;
                self.looked_up(Node::BackupDir(Arc::new(m)))
            }
            Node::BackupDir(m) => {
                if m.volume(name).is_none() {
                    return Err(missing());
                }
                self.looked_up(Node::BackupFile(m, name.to_string()))
            }
            Node::Control(_) | Node::Volume(_) | Node::SnapFile(..) | Node::BackupFile(..) => {
                Err(FsError::new(libc::ENOTDIR, "not a directory"))
            }
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Entry> {
        let node = self.node(ino)?;
        self.entry_of(ino, &node)
    }

    /// Changes attributes: size and mtime of live volumes; nothing elsewhere.
    pub fn setattr(&self, caller: Caller, ino: u64, set: SetAttr) -> FsResult<Entry> {
        let node = self.node(ino)?;
        match &node {
            Node::Volume(vol) => {
                let a = vol.attr();
                self.owner
                    .may_set_volume_attrs(set.mode, set.uid, set.gid)?;
                if let Some(size) = set.size {
                    if size != a.size {
                        self.engine().resize(vol, size)?;
                    }
                }
                if let Some(mtime) = set.mtime {
                    let ns = mtime
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as i64)
                        .unwrap_or(0);
                    vol.set_mtime(ns);
                }
            }
            // `echo cmd > control/x` truncates first; there is nothing to truncate.
            Node::Control(f) if set.size == Some(0) && set.mode.is_none() && f.is_writable() => {
                self.owner.may_command(caller.uid, *f)?;
            }
            Node::SnapDir(_) | Node::SnapFile(..) => {
                return Err(FsError::read_only("snapshots are read-only"));
            }
            Node::BackupDir(_) | Node::BackupFile(..) => {
                return Err(FsError::read_only("backups are read-only"));
            }
            _ => return Err(FsError::not_permitted("the layout of the mount is fixed")),
        }
        self.entry_of(ino, &node)
    }

    /// Entries of directory `ino`, from position `offset` on.
    pub fn readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let parent_ino = match node {
            Node::Root => inode::ROOT,
            Node::SnapDir(_) => inode::SNAPSHOTS,
            Node::BackupDir(_) => inode::BACKUPS,
            _ => inode::ROOT,
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        let file = |node: Node, name: String| DirEntry {
            ino: self.inodes.peek(&node),
            kind: Kind::File,
            name,
        };
        match node {
            Node::Root => {
                for (i, n) in [
                    (inode::LIVE, "live"),
                    (inode::SNAPSHOTS, "snapshots"),
                    (inode::BACKUPS, "backups"),
                    (inode::CONTROL, "control"),
                ] {
                    out.push(DirEntry {
                        ino: i,
                        kind: Kind::Dir,
                        name: n.into(),
                    });
                }
            }
            Node::LiveDir => {
                for (name, vol) in self.engine().store().volumes() {
                    out.push(file(Node::Volume(vol), name));
                }
            }
            Node::SnapshotsDir => {
                for info in self.engine().list() {
                    if crate::snapshot::is_reserved(&info.name) {
                        continue;
                    }
                    if let Ok(snap) = self.engine().snapshot(&info.name) {
                        out.push(DirEntry {
                            ino: self.inodes.peek(&Node::SnapDir(snap)),
                            kind: Kind::Dir,
                            name: info.name,
                        });
                    }
                }
            }
            Node::SnapDir(s) => {
                for name in s.volumes().keys() {
                    out.push(file(Node::SnapFile(s.clone(), name.clone()), name.clone()));
                }
            }
            Node::ControlDir => {
                for f in ControlFile::ALL {
                    out.push(file(Node::Control(f), f.name().to_string()));
                }
            }
            Node::BackupsDir => {
                for m in self.daemon.backups()? {
                    let name = m.id.to_string();
                    out.push(DirEntry {
                        ino: self.inodes.peek(&Node::BackupDir(Arc::new(m))),
                        kind: Kind::Dir,
                        name,
                    });
                }
            }
            Node::BackupDir(m) => {
                for v in &m.volumes {
                    out.push(file(
                        Node::BackupFile(m.clone(), v.name.clone()),
                        v.name.clone(),
                    ));
                }
            }
            Node::Control(_) | Node::Volume(_) | Node::SnapFile(..) | Node::BackupFile(..) => {
                return Err(FsError::new(libc::ENOTDIR, "not a directory"));
            }
        }
        Ok(out.into_iter().skip(offset as usize).collect())
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| FsError::new(libc::EBADF, format!("no open file with handle {fh}")))
    }

    /// Opens `ino` with open(2) `flags`.
    pub fn open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<Opened> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let node = self.node(ino)?;
        let (handle, keep_cache, direct_io) = match node {
            Node::Volume(v) => {
                if flags & libc::O_TRUNC != 0 && writing {
                    self.engine().resize(&v, 0)?;
                }
                let cursor = v.error_cursor();
                let direct = self.daemon.live_io() == crate::daemon::FileIo::Direct;
                (Handle::Volume(v, cursor), false, direct)
            }
            Node::SnapFile(s, name) => {
                if writing {
                    return Err(FsError::read_only("snapshot files are read-only"));
                }
                if let SnapState::Broken(reason) = s.state() {
                    return Err(FsError::new(
                        libc::EIO,
                        format!("snapshot \"{}\" is broken: {reason}", s.name()),
                    ));
                }
                let direct = self.daemon.snapshot_io() == crate::daemon::FileIo::Direct;
                (Handle::Snap(s, name), !direct, direct)
            }
            Node::BackupFile(m, name) => {
                if writing {
                    return Err(FsError::read_only("backups are read-only"));
                }
                let reader = self
                    .daemon
                    .open_backup_volume(m.id.as_str(), &name)?
                    .ok_or_else(|| FsError::not_found("no repository is configured"))?;
                // Kept in the page cache: a backup's bytes are decompressed, not already
                // cached as a store file's pages.
                (Handle::Backup(Box::new(reader)), true, false)
            }
            Node::Control(f) => {
                if writing {
                    if !f.is_writable() {
                        return Err(FsError::new(libc::EACCES, format!("{f} is read-only")));
                    }
                    self.owner.may_command(caller.uid, f)?;
                }
                (
                    Handle::Control(f, Mutex::new(ControlBuf::default())),
                    false,
                    true,
                )
            }
            _ => return Err(FsError::new(libc::EISDIR, "is a directory")),
        };
        Ok(Opened {
            fh: self.new_handle(handle),
            keep_cache,
            direct_io,
        })
    }

    /// Creates a file `name` in `parent` and opens it: a new, empty live volume.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        flags: i32,
    ) -> FsResult<(Entry, Opened)> {
        match self.node(parent)? {
            Node::LiveDir => {
                let name = utf8(name)?;
                let vol = match self.engine().create_volume(name, 0).map_err(FsError::from) {
                    Ok(v) => v,
                    // open(O_CREAT) without O_EXCL opens the volume if it exists already.
                    Err(e) if e.errno == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                        self.engine().volume(name)?
                    }
                    Err(e) => return Err(e),
                };
                let entry = self.looked_up(Node::Volume(vol.clone()))?;
                let opened = self.open(caller, entry.attr.ino, flags)?;
                Ok((entry, opened))
            }
            node => Err(self.refuse_create(&node)),
        }
    }

    /// The refusal for a link or symlink made in `parent`: volumes are plain files only.
    pub fn refuse_link(&self, parent: u64) -> FsError {
        match self.node(parent) {
            Ok(Node::SnapshotsDir | Node::SnapDir(_)) => {
                FsError::read_only("snapshots are read-only")
            }
            Ok(Node::BackupsDir | Node::BackupDir(_)) => {
                FsError::read_only("backups are read-only")
            }
            Ok(_) => FsError::not_permitted("links are not supported: volumes are plain files"),
            Err(e) => e,
        }
    }

    fn refuse_create(&self, parent: &Node) -> FsError {
        match parent {
            Node::SnapshotsDir => FsError::new(
                libc::EPERM,
                "only directories (snapshots) can be made in snapshots/: use mkdir",
            ),
            Node::SnapDir(_) | Node::SnapFile(..) => FsError::read_only("snapshots are read-only"),
            Node::BackupsDir | Node::BackupDir(_) | Node::BackupFile(..) => {
                FsError::read_only("backups are read-only; they are made with snarf backup")
            }
            Node::LiveDir => {
                FsError::not_permitted("live/ holds only volume files, not directories")
            }
            _ => FsError::not_permitted(
                "the layout of the mount is fixed; volumes go in live/, snapshots in snapshots/",
            ),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        match &*self.handle(fh)? {
            Handle::Volume(v, _) => Ok(self.engine().read(v, offset, buf)?),
            // Snarfs a backup stored (their pre-images freed) come back from the repository.
            Handle::Snap(s, name) => match self.daemon.read_snapshot(s, name, offset, buf) {
                Ok(n) => Ok(n),
                Err(e) => {
                    let e = FsError::from(e);
                    log::warn!(
                        "read of snapshots/{}/{name} at {offset}: {}",
                        s.name(),
                        e.message
                    );
                    Err(e)
                }
            },
            Handle::Backup(r) => match r.read_at(offset, buf) {
                Ok(n) => Ok(n),
                Err(e) => {
                    let e = FsError::from(e);
                    log::warn!(
                        "read of backups/{}/{} at {offset}: {}",
                        r.backup(),
                        r.volume(),
                        e.message
                    );
                    Err(e)
                }
            },
            Handle::Control(f, cbuf) => {
                let mut cbuf = cbuf.lock();
                let cbuf = &mut *cbuf;
                let text = cbuf
                    .text
                    .get_or_insert_with(|| self.daemon.control_read(*f).into_bytes());
                let from = if cbuf.answered {
                    cbuf.answer_pos
                } else {
                    offset as usize
                };
                let start = from.min(text.len());
                let n = (text.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&text[start..start + n]);
                if cbuf.answered {
                    cbuf.answer_pos += n;
                }
                Ok(n)
            }
        }
    }

    /// Writes `data` at `offset`; returns how many bytes were taken.
    pub fn write(&self, caller: Caller, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        match &*self.handle(fh)? {
            Handle::Volume(v, _) => {
                self.engine().write(v, offset, data)?;
                Ok(data.len() as u32)
            }
            Handle::Snap(..) => Err(FsError::read_only("snapshot files are read-only")),
            Handle::Backup(..) => Err(FsError::read_only("backups are read-only")),
            Handle::Control(f, cbuf) => {
                self.owner.may_command(caller.uid, *f)?;
                let mut cbuf = cbuf.lock();
                let result = self
                    .daemon
                    .control_write_at(*f, offset, data, &mut cbuf.draft);
                cbuf.answered = true;
                cbuf.answer_pos = 0;
                match result {
                    Ok(answer) => {
                        cbuf.text = Some(answer.into_bytes());
                        Ok(data.len() as u32)
                    }
                    Err(refused) => {
                        let reason = refused.answer();
                        log::info!(
                            "{f}: refused {:?}: {reason}",
                            String::from_utf8_lossy(&data[..data.len().min(200)])
                        );
                        let mut text = reason.into_bytes();
                        if !text.ends_with(b"\n") {
                            text.push(b'\n');
                        }
                        cbuf.text = Some(text);
                        Err(FsError::new(libc::EINVAL, "control command refused"))
                    }
                }
            }
        }
    }

    /// Flushes a file's data to stable storage; fails if writing the volume back failed
    /// since this file's last fsync, whichever file's sync found out.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::Volume(v, cursor) => Ok(self.engine().fsync_file(v, cursor)?),
            _ => Ok(()),
        }
    }

    /// close(2) of a file: reports a write-back error this file was not told of yet, so a
    /// program that closes without fsync still hears of it. Nothing is synced here.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        match &*self.handle(fh)? {
            Handle::Volume(v, cursor) => Ok(v.check_errors(cursor)?),
            _ => Ok(()),
        }
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        if let Some((_, h)) = self.handles.remove(&fh) {
            if let Handle::Volume(v, cursor) = &*h {
                if v.has_unseen_errors(cursor) {
                    log::warn!(
                        "an open file of volume {:016x} was closed without being told that writing it back to disk failed",
                        v.id()
                    );
                }
            }
        }
    }

    /// Makes directory `name` in `parent`: under `snapshots/` that takes a snapshot.
    pub fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        match self.node(parent)? {
            Node::SnapshotsDir => {
                let name = utf8(name)?;
                let snap = self.engine().take(name)?;
                self.looked_up(Node::SnapDir(snap))
            }
            node => Err(self.refuse_create(&node)),
        }
    }

    /// Removes directory `name` from `parent`: under `snapshots/` that releases it.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        match self.node(parent)? {
            Node::SnapshotsDir => {
                let name = name
                    .to_str()
                    .ok_or_else(|| FsError::not_found("no such snapshot"))?;
                if crate::snapshot::is_reserved(name) {
                    return Err(FsError::not_permitted(
                        "snapshots named .snarf-… are snarf's own (a converge backup's freeze); cancel the job in control/jobs instead",
                    ));
                }
                Ok(self.engine().release(name)?)
            }
            Node::SnapDir(_) => Err(FsError::read_only("snapshots are read-only")),
            Node::BackupsDir | Node::BackupDir(_) => Err(FsError::read_only(
                "backups are read-only; prune them with snarf prune",
            )),
            Node::LiveDir => Err(FsError::new(libc::ENOTDIR, "live/ holds only volume files")),
            _ => Err(FsError::not_permitted("the layout of the mount is fixed")),
        }
    }

    /// Removes file `name` from `parent`: under `live/` that deletes the volume.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        match self.node(parent)? {
            Node::LiveDir => {
                let name = name
                    .to_str()
                    .ok_or_else(|| FsError::not_found("no such volume"))?;
                Ok(self.engine().delete_volume(name)?)
            }
            Node::SnapDir(_) | Node::SnapshotsDir => Err(FsError::read_only(
                "snapshots are read-only; rmdir snapshots/NAME releases one",
            )),
            Node::BackupDir(_) | Node::BackupsDir => Err(FsError::read_only(
                "backups are read-only; prune them with snarf prune",
            )),
            _ => Err(FsError::not_permitted("the layout of the mount is fixed")),
        }
    }

    /// Renames within `live/`; `no_replace` is RENAME_NOREPLACE, `exchange` RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        let from = self.node(parent)?;
        let to = self.node(new_parent)?;
        let snapshotty = |n: &Node| {
            matches!(
                n,
                Node::SnapshotsDir | Node::SnapDir(_) | Node::BackupsDir | Node::BackupDir(_)
            )
        };
        if snapshotty(&from) || snapshotty(&to) {
            return Err(FsError::read_only(
                "snapshots are read-only and cannot be renamed",
            ));
        }
        match (from, to) {
            (Node::LiveDir, Node::LiveDir) => {
                if exchange {
                    return Err(FsError::new(
                        libc::EINVAL,
                        "exchanging volumes is not supported",
                    ));
                }
                let old = name
                    .to_str()
                    .ok_or_else(|| FsError::not_found("no such volume"))?;
                let new = utf8(new_name)?;
                if no_replace {
                    // As rename(2): a missing source is ENOENT before a taken target is
                    // EEXIST.
                    self.engine().volume(old)?;
                    if self.engine().volume(new).is_ok() {
                        return Err(FsError::new(libc::EEXIST, format!("volume {new} exists")));
                    }
                }
                Ok(self.engine().rename_volume(old, new)?)
            }
            _ => Err(FsError::new(
                libc::EXDEV,
                "volumes can only be renamed within live/",
            )),
        }
    }

    /// Figures of the filesystem holding the store.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let root = self.engine().store().root();
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::new(libc::EIO, "store path holds a NUL byte"))?;
        let st = rustix::fs::statvfs(path.as_c_str()).map_err(|e| {
            let e = std::io::Error::from(e);
            FsError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("statfs of the store: {e}"),
            )
        })?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: 255,
            frsize: st.f_frsize as u32,
        })
    }

    /// `SEEK_DATA` / `SEEK_HOLE` from `offset`; `ENXIO` past the end, as lseek(2) says.
    pub fn lseek(&self, fh: u64, offset: u64, whence: Seek) -> FsResult<u64> {
        let enxio = || FsError::new(libc::ENXIO, "offset is past the end of the file");
        match &*self.handle(fh)? {
            Handle::Volume(v, _) => {
                let size = v.size();
                if offset >= size {
                    return Err(enxio());
                }
                let found = v.seek(offset, whence == Seek::Data)?;
                Ok(match (whence, found) {
                    (Seek::Data, Some(at)) if at < size => at,
                    (Seek::Data, _) => return Err(enxio()),
                    (Seek::Hole, Some(at)) => at.min(size),
                    (Seek::Hole, None) => size,
                })
            }
            Handle::Snap(s, name) => {
                let sv = s
                    .volume(name)
                    .ok_or_else(|| FsError::not_found("volume left the snapshot"))?;
                let size = sv.attr.size;
                if offset >= size {
                    return Err(enxio());
                }
                let shift = sv.volume.snarf_shift();
                let index = offset >> shift;
                let at = |snarf: u64| (snarf << shift).max(offset).min(size);
                match whence {
                    Seek::Data => match self.engine().next_data_snarf(s, sv, index) {
                        Some(snarf) => Ok(at(snarf)),
                        None => Err(enxio()),
                    },
                    Seek::Hole => Ok(self.engine().next_hole_snarf(s, sv, index).map_or(size, at)),
                }
            }
            Handle::Backup(r) => {
                if offset >= r.size() {
                    return Err(enxio());
                }
                match whence {
                    Seek::Data => r.seek_data(offset)?.ok_or_else(enxio),
                    Seek::Hole => Ok(r.seek_hole(offset)?),
                }
            }
            Handle::Control(..) => Err(FsError::new(libc::EINVAL, "control files have no holes")),
        }
    }
}
