//! The FUSE adapter: inode table, attributes and errno mapping over the layers below. It
//! translates kernel requests into engine and daemon calls and holds no policy of its own.
//!
//! * [`fs`] is the filesystem as plain Rust (tests drive it without a kernel);
//! * [`adapter`] links fuser's callbacks to it;
//! * [`errno`] maps every error of the layers below to an errno;
//! * [`inode`] numbers the objects the mount shows.

pub mod adapter;
pub mod errno;
pub mod fs;
pub mod inode;

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};

use crate::daemon::{Changed, Daemon};
pub use errno::FsError;
pub use fs::SnarfFs;

/// Largest read and write request asked of the kernel.
pub const MAX_IO: u32 = 1 << 20;

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
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
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
    let adapter = adapter::Adapter::new(fs.clone(), MAX_IO);
    // SAFETY: geteuid cannot fail.
    let session = if unsafe { libc::geteuid() } == 0 {
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
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    // SAFETY: all pointers are valid C strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("mount(2) of {}: {e}", mountpoint.display()),
        ));
    }
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
        let mountpoint = self.mountpoint.clone();
        let result = self.session.run();
        // If the session ended on its own (an error, not an unmount), do not leave a dead
        // mount behind.
        if let Ok(Some(m)) = crate::mounts::mount_at(&mountpoint) {
            if m.fstype == crate::mounts::FSTYPE && crate::mounts::is_stale(&mountpoint) {
                let _ = crate::mounts::unmount(&mountpoint, true);
            }
        }
        // Dropping the daemon's notifier closes the channel and ends the pusher.
        self.fs.daemon().on_change(Box::new(|_| {}));
        let _ = pusher.join();
        result
    }
}
