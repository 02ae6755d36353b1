//! The FUSE adapter: inode table, attributes and errno mapping over the layers below. It
//! translates kernel requests into engine and daemon calls and holds no policy of its own.
//!
//! * [`fs`] is the filesystem as plain Rust (`tests/fs.rs` drives it without a kernel, and
//!   `reftests.rs` checks it against the snapshot oracle);
//! * [`adapter`] links fuser's callbacks to it;
//! * [`errno`] maps every error of the layers below to an errno;
//! * [`inode`] numbers the objects the mount shows.
//!
//! A session never leaves a dead mount behind: a panic in a request is caught by the
//! adapter and recorded in the session's [`Fault`], which unmounts (lazily if files are
//! open) so the session ends and the daemon closes the store; and a session that ends with
//! an error has its mount removed before the daemon exits.

pub mod adapter;
pub mod errno;
pub mod fs;
pub mod inode;

#[cfg(test)]
mod reftests;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};
use rustix::mount::MountFlags;

use crate::daemon::{Changed, Daemon};
use crate::sys::proc;
pub use errno::FsError;
pub use fs::SnarfFs;

/// Largest read and write request asked of the kernel.
pub const MAX_IO: u32 = 1 << 20;

/// Test hook: when set, a lookup of a name equal to its value panics inside the adapter, so
/// tests can prove that a panic on a FUSE thread unmounts cleanly. Like `SNARF_FAULT_POINT`
/// for the repository, it is read once when the mount starts, and only by builds with the
/// cargo feature `fault-injection`: release builds hold no such hook.
#[cfg(feature = "fault-injection")]
pub const PANIC_ON_LOOKUP_ENV: &str = "SNARF_TEST_PANIC_ON_LOOKUP";

/// Panics caught on the FUSE threads of one session. The first one starts an unmount; the
/// session then ends and the daemon closes the store and says why it ended.
#[derive(Debug, Default)]
pub struct Fault {
    state: Mutex<FaultState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct FaultState {
    first: Option<String>,
    count: u64,
    closed: bool,
}

impl Fault {
    /// Records a panic of request `op`; the first one wakes the session's watcher.
    pub fn record(&self, op: &str, message: String) {
        let mut st = self.state.lock();
        st.count += 1;
        log::error!(
            "a FUSE request ({op}) panicked: {message}; it was answered with EIO and the mount is being unmounted"
        );
        if st.first.is_none() {
            st.first = Some(format!("a FUSE request ({op}) panicked: {message}"));
            self.wake.notify_all();
        }
    }

    /// The first panic recorded, if any, and how many there were.
    pub fn first(&self) -> Option<(String, u64)> {
        let st = self.state.lock();
        st.first.clone().map(|f| (f, st.count))
    }

    /// Waits for the first panic; `None` once the session is over without one.
    fn wait(&self) -> Option<String> {
        let mut st = self.state.lock();
        while st.first.is_none() && !st.closed {
            self.wake.wait(&mut st);
        }
        st.first.clone()
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_all();
    }
}

/// Unmounts `mountpoint` if it is still this store's mount: normally, or detached lazily
/// when files are open there (they keep being served until closed).
fn unmount_ours(mountpoint: &Path, source: &str) {
    let ours = matches!(
        crate::mounts::mount_at(mountpoint),
        Ok(Some(m)) if m.fstype == crate::mounts::FSTYPE && m.source == source
    );
    if !ours {
        return;
    }
    match crate::mounts::unmount(mountpoint, false) {
        Ok(()) => log::info!("unmounted {}", mountpoint.display()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            log::warn!(
                "{} is busy (files open); detaching it now, it goes when they close",
                mountpoint.display()
            );
            if let Err(e) = crate::mounts::unmount(mountpoint, true) {
                log::error!("cannot unmount {}: {e}", mountpoint.display());
            }
        }
        Err(e) => log::error!("cannot unmount {}: {e}", mountpoint.display()),
    }
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// FUSE worker threads, each with its own cloned /dev/fuse descriptor.
    pub threads: usize,
    /// Let users other than the mount's owner in (permission bits still apply).
    pub allow_other: bool,
    /// Shown as the mount's source in /proc/mounts: the store's path.
    pub source: String,
}

/// A mounted filesystem, not yet serving requests.
pub struct Mounted {
    session: Session<adapter::Adapter>,
    fs: Arc<SnarfFs>,
    mountpoint: PathBuf,
    source: String,
    fault: Arc<Fault>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").finish_non_exhaustive()
    }
}

/// Mounts `daemon` at `mountpoint`. Returns once the kernel has the mount (INIT done).
pub fn mount(
    daemon: Arc<Daemon>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<Mounted> {
    let (uid, gid) = (proc::uid(), proc::gid());
    let fs = Arc::new(SnarfFs::new(daemon, uid, gid));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.source.clone()),
        MountOption::Subtype("snarf".into()),
        // The kernel checks permission bits, so control files (0644) refuse other users
        // with EACCES even under allow_other; the core checks again.
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::RW,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let fault = Arc::new(Fault::default());
    let adapter = adapter::Adapter::new(fs.clone(), MAX_IO, fault.clone());
    let session = if proc::euid() == 0 {
        // fuser's own mount(2) always says type "fuse"; mounting ourselves gives the
        // "fuse.snarf" type that mount(8), fstab and `snarf umount` recognise.
        let dev = mount_as_root(mountpoint, opts, uid, gid)?;
        match Session::from_fd(adapter, dev, config.acl, config.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = crate::mounts::unmount(mountpoint, true);
                return Err(e);
            }
        }
    } else {
        Session::new(adapter, mountpoint, &config)?
    };
    Ok(Mounted {
        session,
        fs,
        mountpoint: mountpoint.to_path_buf(),
        source: opts.source.clone(),
        fault,
    })
}

/// Opens /dev/fuse and mounts it at `mountpoint` with type `fuse.snarf`.
fn mount_as_root(
    mountpoint: &Path,
    opts: &MountOptions,
    uid: u32,
    gid: u32,
) -> std::io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse ({e}); is the fuse module loaded (modprobe fuse)?"),
            )
        })?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let c = |s: &[u8]| {
        std::ffi::CString::new(s).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path holds a NUL byte")
        })
    };
    let source = c(opts.source.as_bytes())?;
    let target = c(mountpoint.as_os_str().as_bytes())?;
    let fstype = c(crate::mounts::FSTYPE.as_bytes())?;
    let data = c(data.as_bytes())?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME;
    rustix::mount::mount(&*source, &*target, &*fstype, flags, &*data).map_err(|e| {
        let e = std::io::Error::from(e);
        std::io::Error::new(
            e.kind(),
            format!("mount(2) of {}: {e}", mountpoint.display()),
        )
    })?;
    Ok(OwnedFd::from(dev))
}

impl Mounted {
    /// Serves requests until the filesystem is unmounted. Snapshots created or released
    /// through control files are pushed to the kernel's caches by a helper thread; the
    /// control write waits (briefly) for that, so `ls snapshots/` right after
    /// `echo release NAME > control/snapshot` no longer shows NAME. The wait is bounded
    /// because the kernel may need another worker thread to finish a lookup first.
    pub fn serve(self) -> std::io::Result<()> {
        let notifier = self.session.notifier();
        let (tx, rx) = mpsc::channel::<(Changed, mpsc::Sender<()>)>();
        let tx = parking_lot::Mutex::new(tx);
        self.fs.daemon().on_change(Box::new(move |c| {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.lock().send((c, done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(std::time::Duration::from_secs(2));
            }
        }));
        let pusher = std::thread::Builder::new()
            .name("snarf-inval".into())
            .spawn(move || {
                for (change, done) in rx {
                    match change {
                        Changed::Snapshot(name) => {
                            let _ =
                                notifier.inval_entry(INodeNo(inode::SNAPSHOTS), OsStr::new(&name));
                        }
                    }
                    let _ = done.send(());
                }
            })?;
        // A panic on a FUSE thread unmounts, which ends the session like an unmount does.
        let watcher = {
            let fault = self.fault.clone();
            let mountpoint = self.mountpoint.clone();
            let source = self.source.clone();
            std::thread::Builder::new()
                .name("snarf-fault".into())
                .spawn(move || {
                    if fault.wait().is_some() {
                        unmount_ours(&mountpoint, &source);
                    }
                })?
        };
        let result = self.session.run();
        self.fault.close();
        let _ = watcher.join();
        // A session that ended by itself (an error, not an unmount) must not leave a dead
        // mount behind: the kernel would answer ENOTCONN there until someone unmounts it.
        if result.is_err() || self.fault.first().is_some() {
            unmount_ours(&self.mountpoint, &self.source);
        }
        let result = match (result, self.fault.first()) {
            (Ok(()), Some((first, n))) => Err(std::io::Error::other(format!(
                "{first} ({n} request(s) panicked in all); the mount was unmounted"
            ))),
            (other, _) => other,
        };
        // Dropping the daemon's notifier closes the channel and ends the pusher.
        self.fs.daemon().on_change(Box::new(|_| {}));
        let _ = pusher.join();
        result
    }
}
