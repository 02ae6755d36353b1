//! Links fuser's callbacks to [`SnarfFs`]: converts arguments, calls the core, converts the
//! answer or the errno back. Nothing is decided here.
//!
//! Every callback runs under [`Adapter::guarded`]: a panic in the layers below answers that
//! one request with EIO (fuser does so for a reply that was never sent) and is reported to
//! the session's [`Fault`], which unmounts cleanly; the worker thread lives on, so the
//! mount never turns into a dead one (ENOTCONN) with requests left unanswered.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use super::errno::FsError;
use super::fs::{Attr, Caller, Entry, Kind, Opened, Seek, SetAttr, SnarfFs};
use super::Fault;

/// The fuser filesystem: a thin shell around the shared core.
#[derive(Debug)]
pub struct Adapter {
    fs: Arc<SnarfFs>,
    max_io: u32,
    fault: Arc<Fault>,
    /// Test hook ([`super::PANIC_ON_LOOKUP_ENV`]): a lookup of this name panics.
    #[cfg(feature = "fault-injection")]
    panic_on_lookup: Option<std::ffi::OsString>,
}

impl Adapter {
    /// An adapter over `fs`, asking the kernel for requests of up to `max_io` bytes and
    /// reporting panics to `fault`.
    pub fn new(fs: Arc<SnarfFs>, max_io: u32, fault: Arc<Fault>) -> Adapter {
        Adapter {
            fs,
            max_io,
            fault,
            #[cfg(feature = "fault-injection")]
            panic_on_lookup: std::env::var_os(super::PANIC_ON_LOOKUP_ENV),
        }
    }

    /// Runs one callback; a panic in it is caught here and reported to the session's fault.
    fn guarded(&self, op: &'static str, f: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
            self.fault
                .record(op, crate::chain::panic_message(payload.as_ref()));
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno)
}

fn log_err(op: &str, e: &FsError) {
    // Refusals users cause (ENOENT, EROFS...) are routine; real failures are warnings.
    match e.errno {
        libc::EIO | libc::ENOSPC | libc::ESTALE => log::warn!("{op}: {e}"),
        _ => log::debug!("{op}: {e}"),
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn reply_entry(reply: ReplyEntry, r: Result<Entry, FsError>, op: &str) {
    match r {
        Ok(e) => reply.entry(&e.ttl, &attr(&e.attr), Generation(0)),
        Err(e) => {
            log_err(op, &e);
            reply.error(errno(&e));
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), FsError>, op: &str) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_err(op, &e);
            reply.error(errno(&e));
        }
    }
}

thread_local! {
    /// One read buffer per FUSE worker thread, so reads do not allocate.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(self.max_io) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(self.max_io) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Live volumes may be opened with direct I/O; shared mmap of them (SQLite's -shm
        // file, programs that map a disk image) must still work. Kernels before 6.6 lack
        // the flag and refuse shared maps of direct-I/O files.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            log::info!("this kernel cannot mmap direct-I/O files; shared maps of live/ files fail with ENODEV (mount with --live-io buffered if a program needs them)");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.guarded("lookup", move || {
            #[cfg(feature = "fault-injection")]
            if self.panic_on_lookup.as_deref() == Some(name) {
                panic!("test hook: lookup of {name:?}");
            }
            reply_entry(reply, self.fs.lookup(parent.0, name), "lookup");
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.guarded("forget", move || {
            self.fs.forget(ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.guarded("getattr", move || match self.fs.getattr(ino.0) {
            Ok(e) => reply.attr(&e.ttl, &attr(&e.attr)),
            Err(e) => {
                log_err("getattr", &e);
                reply.error(errno(&e));
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
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
        self.guarded("setattr", move || {
            let set = SetAttr {
                size,
                mtime: mtime.map(|t| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                }),
                mode,
                uid,
                gid,
            };
            match self.fs.setattr(caller(req), ino.0, set) {
                Ok(e) => reply.attr(&e.ttl, &attr(&e.attr)),
                Err(e) => {
                    log_err("setattr", &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.guarded("mknod", move || {
            if mode & libc::S_IFMT != libc::S_IFREG {
                reply.error(Errno::EPERM);
                return;
            }
            let r = self
                .fs
                .create(caller(req), parent.0, name, libc::O_RDONLY)
                .map(|(e, o)| {
                    self.fs.release(o.fh);
                    e
                });
            reply_entry(reply, r, "mknod");
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.guarded("symlink", move || {
            let e = self.fs.refuse_link(parent.0);
            log_err("symlink", &e);
            reply.error(errno(&e));
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.guarded("link", move || {
            let e = self.fs.refuse_link(newparent.0);
            log_err("link", &e);
            reply.error(errno(&e));
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.guarded("mkdir", move || {
            reply_entry(reply, self.fs.mkdir(parent.0, name), "mkdir");
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded("unlink", move || {
            reply_empty(reply, self.fs.unlink(parent.0, name), "unlink");
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded("rmdir", move || {
            reply_empty(reply, self.fs.rmdir(parent.0, name), "rmdir");
        });
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
        self.guarded("rename", move || {
            let r = self.fs.rename(
                parent.0,
                name,
                newparent.0,
                newname,
                flags.contains(RenameFlags::RENAME_NOREPLACE),
                flags.contains(RenameFlags::RENAME_EXCHANGE),
            );
            reply_empty(reply, r, "rename");
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.guarded("open", move || {
            match self.fs.open(caller(req), ino.0, flags.0) {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
                Err(e) => {
                    log_err("open", &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.guarded("create", move || {
            match self.fs.create(caller(req), parent.0, name, flags) {
                Ok((e, o)) => reply.created(
                    &e.ttl,
                    &attr(&e.attr),
                    Generation(0),
                    FileHandle(o.fh),
                    fopen_flags(&o),
                ),
                Err(e) => {
                    log_err("create", &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.guarded("read", move || {
            READ_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                if buf.len() < size as usize {
                    buf.resize(size as usize, 0);
                }
                match self.fs.read(fh.0, offset, &mut buf[..size as usize]) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => {
                        log_err("read", &e);
                        reply.error(errno(&e));
                    }
                }
            });
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.guarded("write", move || {
            match self.fs.write(caller(req), fh.0, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => {
                    log_err("write", &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.guarded("flush", move || {
            // Writes reach the store before write(2) returns; flush only reports a
            // write-back error this file has not been told of.
            reply_empty(reply, self.fs.flush(fh.0), "flush");
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded("release", move || {
            self.fs.release(fh.0);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded("fsync", move || {
            reply_empty(reply, self.fs.fsync(fh.0), "fsync");
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.guarded("readdir", move || match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.into_iter().enumerate() {
                    let kind = match e.kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(e.ino), offset + i as u64 + 1, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => {
                log_err("readdir", &e);
                reply.error(errno(&e));
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.guarded("statfs", move || match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => {
                log_err("statfs", &e);
                reply.error(errno(&e));
            }
        });
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.guarded("getxattr", move || {
            // No extended attributes here; ENODATA is "this one is not set", which ls and cp
            // take quietly.
            reply.error(Errno::from_i32(libc::ENODATA));
        });
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.guarded("listxattr", move || {
            if size == 0 {
                reply.size(0);
            } else {
                reply.data(&[]);
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.guarded("setxattr", move || {
            reply.error(Errno::from_i32(libc::ENOTSUP));
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.guarded("lseek", move || {
            let whence = match whence {
                libc::SEEK_DATA => Seek::Data,
                libc::SEEK_HOLE => Seek::Hole,
                // The kernel handles SEEK_SET/CUR/END itself and only asks for these two.
                _ => {
                    reply.error(Errno::EINVAL);
                    return;
                }
            };
            if offset < 0 {
                reply.error(Errno::ENXIO);
                return;
            }
            match self.fs.lseek(fh.0, offset as u64, whence) {
                Ok(at) => reply.offset(at as i64),
                Err(e) => {
                    log_err("lseek", &e);
                    reply.error(errno(&e));
                }
            }
        });
    }
}
