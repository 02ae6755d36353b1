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
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use fuser::{Config, INodeNo, MountOption, Session, SessionACL, SessionUnmounter};

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
    let session = Session::new(
        adapter::Adapter::new(fs.clone(), MAX_IO),
        mountpoint,
        &config,
    )?;
    Ok(Mounted { session, fs })
}

impl Mounted {
    /// Something that unmounts the filesystem from another thread (a signal handler's).
    pub fn unmounter(&mut self) -> SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests until the filesystem is unmounted. Snapshots created or released
    /// through control files are pushed to the kernel's caches from a helper thread, never
    /// from inside a request.
    pub fn serve(self) -> std::io::Result<()> {
        let notifier = self.session.notifier();
        let (tx, rx) = mpsc::channel::<Changed>();
        self.fs.daemon().on_change(Box::new(move |c| {
            let _ = tx.send(c);
        }));
        let pusher = std::thread::Builder::new()
            .name("snarf-inval".into())
            .spawn(move || {
                for change in rx {
                    match change {
                        Changed::Snapshot(name) => {
                            let _ =
                                notifier.inval_entry(INodeNo(inode::SNAPSHOTS), OsStr::new(&name));
                        }
                    }
                }
            })?;
        let result = self.session.run();
        // Dropping the daemon's notifier closes the channel and ends the pusher.
        self.fs.daemon().on_change(Box::new(|_| {}));
        let _ = pusher.join();
        result
    }
}
