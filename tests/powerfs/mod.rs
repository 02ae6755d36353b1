//! A filesystem that loses what was not made durable, the way a power cut does (LazyFS is
//! the model): served by the test process itself over FUSE, so every program under test —
//! the snarf binary, its mount daemon, backup jobs — makes its real syscalls against it.
//! [`model`] holds the state and the durability rules; this module only links fuser's
//! callbacks to it and mounts it.
//!
//! Why a filesystem rather than an I/O layer swapped into `src/repo`: it sees every syscall
//! every process makes — the store, the process registry, the daemon's pins, `std::fs` calls
//! that bypass any helper — with no test-only code in the product, and the kernel itself
//! decides what reaches it (close and flush make nothing durable; only fsync does).
//!
//! A test mounts a [`PowerMount`], runs programs on it, then takes [`PowerMount::cut`]: the
//! image a power cut at that instant leaves. Mounting that image again (a new session, so
//! the kernel has nothing cached) is the reboot. A hook can take images at chosen
//! operations while the programs keep running, so one run yields a cut before every fsync.

#![allow(dead_code)]

pub mod model;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

pub use model::{Image, Kind, Model};

/// How long the kernel may cache names and attributes: every change goes through this one
/// mount, so the kernel's caches stay right; a cut is always served by a new session.
const TTL: Duration = Duration::from_secs(1);

/// An operation about to be served, as a hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// fsync or fdatasync of a file.
    FileSync,
    /// fsync of a folder.
    DirSync,
    /// A rename.
    Rename,
    /// An unlink or rmdir.
    Remove,
    /// A create, mknod or mkdir.
    Create,
    /// A write, truncation or fallocate.
    Data,
}

/// Called before each operation with the inode it is about (the file synced or written, the
/// folder whose entries change; the source folder of a rename) and the model as it is just
/// before it. It runs inside the filesystem: it must not touch the mount.
pub type Hook = Box<dyn FnMut(Op, u64, &Model) + Send>;

/// A folder's entries as opendir saw them.
type Listing = Vec<(std::ffi::OsString, u64, Kind)>;

struct Shared {
    model: Mutex<Model>,
    hook: Mutex<Option<Hook>>,
    /// Open folder listings, taken at opendir so a listing survives removals under it.
    listings: Mutex<HashMap<u64, Listing>>,
    next_fh: Mutex<u64>,
}

impl Shared {
    /// Runs the hook (under the model's lock), then `f` on the model.
    fn change<T>(
        &self,
        op: Op,
        ino: u64,
        f: impl FnOnce(&mut Model) -> model::Res<T>,
    ) -> model::Res<T> {
        let mut m = self.model.lock();
        if let Some(h) = self.hook.lock().as_mut() {
            h(op, ino, &m);
        }
        f(&mut m)
    }
}

/// The fuser filesystem over a shared [`Model`].
struct PowerFs {
    shared: Arc<Shared>,
}

fn errno(e: model::Errno) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(ino: u64, kind: Kind, a: &model::Attr, size: u64, nlink: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(kind),
        perm: a.perm,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Socket => FileType::Socket,
    }
}

fn stat(m: &Model, ino: u64) -> model::Res<FileAttr> {
    let (kind, a, size, nlink) = m.stat(ino)?;
    Ok(file_attr(ino, kind, &a, size, nlink))
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl PowerFs {
    fn new_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        perm: u16,
    ) -> model::Res<FileAttr> {
        self.shared.change(Op::Create, parent.0, |m| {
            let ino = m.create(parent.0, name, kind, perm, req.uid(), req.gid())?;
            stat(m, ino)
        })
    }

    fn fh(&self) -> u64 {
        let mut n = self.shared.next_fh.lock();
        *n += 1;
        *n
    }
}

impl Filesystem for PowerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let m = self.shared.model.lock();
        match m.lookup(parent.0, name).and_then(|i| stat(&m, i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match stat(&self.shared.model.lock(), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = if size.is_some() { Op::Data } else { Op::Create };
        let r = self.shared.change(op, ino.0, |m| {
            if let Some(len) = size {
                m.set_len(ino.0, len)?;
            }
            m.set_attr(
                ino.0,
                mode.map(|p| (p & 0o7777) as u16),
                uid,
                gid,
                mtime.map(time),
            )?;
            stat(m, ino.0)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFSOCK => Kind::Socket,
            _ => return reply.error(Errno::EPERM),
        };
        match self.new_entry(req, parent, name, kind, (mode & !umask & 0o7777) as u16) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.new_entry(
            req,
            parent,
            name,
            Kind::Dir,
            (mode & !umask & 0o7777) as u16,
        ) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .shared
            .change(Op::Remove, parent.0, |m| m.remove(parent.0, name, false))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.shared.change(Op::Create, newparent.0, |m| {
            m.link(ino.0, newparent.0, newname)?;
            stat(m, ino.0)
        }) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .shared
            .change(Op::Remove, parent.0, |m| m.remove(parent.0, name, true))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.shared.change(Op::Rename, parent.0, |m| {
            m.rename(parent.0, name, newparent.0, newname, noreplace)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.model.lock().stat(ino.0) {
            Ok((Kind::File, ..)) => reply.opened(FileHandle(self.fh()), FopenFlags::empty()),
            Ok((Kind::Dir, ..)) => reply.error(Errno::EISDIR),
            Ok(_) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.shared.model.lock().read(ino.0, offset, size) {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .shared
            .change(Op::Data, ino.0, |m| m.write(ino.0, offset, data))
        {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.change(Op::FileSync, ino.0, |m| m.fsync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.shared.model.lock().entries(ino.0) {
            Ok(list) => {
                let fh = self.fh();
                self.shared.listings.lock().insert(fh, list);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset == 0 {
            // A rewind lists the folder as it is now.
            match self.shared.model.lock().entries(ino.0) {
                Ok(list) => {
                    self.shared.listings.lock().insert(fh.0, list);
                }
                Err(e) => return reply.error(errno(e)),
            }
        }
        let listings = self.shared.listings.lock();
        let Some(list) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [(OsStr::new("."), ino.0), (OsStr::new(".."), ino.0)];
        let all = dots
            .iter()
            .map(|(n, i)| (*n, *i, Kind::Dir))
            .chain(list.iter().map(|(n, i, k)| (n.as_os_str(), *i, *k)));
        for (i, (name, child, kind)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, file_type(kind), name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.listings.lock().remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.change(Op::DirSync, ino.0, |m| m.fsync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self.shared.change(Op::Create, parent.0, |m| {
            let ino = match m.lookup(parent.0, name) {
                Ok(_) if flags & libc::O_EXCL != 0 => return Err(libc::EEXIST),
                Ok(ino) => {
                    if flags & libc::O_TRUNC != 0 {
                        m.set_len(ino, 0)?;
                    }
                    ino
                }
                Err(_) => m.create(parent.0, name, Kind::File, perm, req.uid(), req.gid())?,
            };
            stat(m, ino)
        });
        match r {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(self.fh()),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.shared.change(Op::Data, ino.0, |m| {
            let (_, _, size, _) = m.stat(ino.0)?;
            let end = offset.checked_add(length).ok_or(libc::EFBIG)?;
            if mode == 0 {
                if end > size {
                    m.set_len(ino.0, end)?;
                }
                Ok(())
            } else if mode == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE {
                // Holes are not modelled: punched bytes become written zeros.
                let end = end.min(size);
                if end > offset {
                    m.write(ino.0, offset, &vec![0; (end - offset) as usize])?;
                }
                Ok(())
            } else {
                Err(libc::EOPNOTSUPP)
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A mounted power-cut filesystem; dropping it unmounts (lazily, so it never hangs and never
/// stays behind).
pub struct PowerMount {
    /// Where it is mounted.
    pub path: PathBuf,
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerMount {
    /// Mounts `model` at the empty folder `path`, served by threads of this process.
    pub fn mount(model: Model, path: &Path) -> std::io::Result<PowerMount> {
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            hook: Mutex::new(None),
            listings: Mutex::new(HashMap::new()),
            next_fh: Mutex::new(0),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerfs".into()),
            MountOption::DefaultPermissions,
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(2);
        let fs = PowerFs {
            shared: shared.clone(),
        };
        let session = fuser::Session::new(fs, path, &config)?.spawn()?;
        Ok(PowerMount {
            path: path.to_path_buf(),
            shared,
            session: Some(session),
        })
    }

    /// Mounts an empty filesystem.
    pub fn empty(path: &Path) -> std::io::Result<PowerMount> {
        PowerMount::mount(Model::new(), path)
    }

    /// The image a power cut now leaves (see [`Model::cut`]); `torn` seeds the harsher mode.
    pub fn cut(&self, torn: Option<u64>) -> Image {
        use rand::SeedableRng;
        let m = self.shared.model.lock();
        match torn {
            None => m.cut(None),
            Some(seed) => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                m.cut(Some(&mut rng))
            }
        }
    }

    /// Calls `hook` before every operation from now on.
    pub fn set_hook(&self, hook: Hook) {
        *self.shared.hook.lock() = Some(hook);
    }

    /// Stops calling the hook.
    pub fn clear_hook(&self) {
        *self.shared.hook.lock() = None;
    }

    /// What was served so far.
    pub fn counters(&self) -> model::Counters {
        self.shared.model.lock().counters
    }

    /// Unmounts now.
    pub fn unmount(self) {
        drop(self);
    }
}

impl Drop for PowerMount {
    fn drop(&mut self) {
        // Detached first (MNT_DETACH), so a file still open under it never leaves the mount
        // behind; the serving threads end when the last user lets go. fuser's own unmount
        // after that finds nothing mounted there and only logs it.
        if self.session.is_some() {
            if let Ok(c) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
                // SAFETY: umount2 with a valid C string and a flag.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        self.session.take();
    }
}
