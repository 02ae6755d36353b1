//! `snarf mount` and `snarf umount`.
//!
//! `snarf mount` checks everything it can, then starts the daemon — itself, run again with
//! `--foreground` in a new session — and waits on a pipe until the daemon says the mount is
//! ready or why it is not. So the command returns only once the mount works, and a failure
//! is printed where the administrator typed the command, not only in the log.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::{logging, mount_options, numbers, CliError, CliResult};
use crate::chain::ErrorChain;
use crate::daemon::jobs::JobLauncher;
use crate::daemon::record::{self, Phase, RecordFile};
use crate::daemon::{Daemon, FileIo};
use crate::fuse::{self, MountOptions};
use crate::mounts;
use crate::repo::Location;
use crate::snapshot::{Engine, EngineOptions};
use crate::store::{Durability, Settings, Store};
use crate::sys::lock;

/// The descriptor the background daemon reports readiness on.
const READY_FD: i32 = 3;

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() * 2).clamp(2, 16))
        .unwrap_or(4)
}

/// Arguments of `snarf mount`.
#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// The store directory (made with `snarf init`).
    pub store: PathBuf,
    /// An existing, empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Stay in the foreground and log to stderr as well as STORE/snarf.log (for systemd
    /// and debugging). Without it the daemon goes to the background once the mount is ready.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// FUSE worker threads (1 to 256).
    #[arg(long, default_value_t = default_threads(),
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=numbers::MAX_THREADS))]
    pub threads: usize,
    /// Let other users in (permission bits still apply: volumes stay owner-only and only
    /// the owner may write control files). Needs user_allow_other in /etc/fuse.conf for
    /// non-root owners.
    #[arg(long)]
    pub allow_other: bool,
    /// Memory for pre-images: a cache for persistent snapshots, the first home of volatile
    /// ones' (overrides the store's setting).
    #[arg(long, value_parser = numbers::budget)]
    pub preimage_mem: Option<u64>,
    /// Disk for pre-images (durable and spilled) before writers are slowed (overrides the
    /// store's setting).
    #[arg(long, value_parser = numbers::budget)]
    pub preimage_disk: Option<u64>,
    /// Seconds a writer may wait for pre-image room before a snapshot is broken (0 to 86400).
    #[arg(long, value_parser = numbers::break_after)]
    pub break_after: Option<f64>,
    /// How live/ files go through the kernel: `direct` (each write(2) of up to 1 MiB is
    /// entirely in or entirely out of a snapshot taken while it runs) or `buffered` (the
    /// kernel's page cache; a write may be split across a snapshot instant).
    #[arg(long, value_enum, default_value_t = FileIo::Direct)]
    pub live_io: FileIo,
    /// How snapshots/ files go through the kernel: `direct` (every read goes to
    /// the daemon, which serves it from the store's own cached pages: steady speed whatever
    /// the page cache holds, nothing cached twice) or `buffered` (the kernel's page cache).
    #[arg(long, value_enum, default_value_t = FileIo::Direct)]
    pub snapshot_io: FileIo,
    /// What `mkdir snapshots/NAME` takes: persistent (outlives the mount, crash-safe) or
    /// volatile (memory first, gone at unmount); overrides the store's setting.
    #[arg(long, value_parser = numbers::durability)]
    pub snapshots: Option<Durability>,
    /// Repository shown under backups/ and used by jobs started from control/jobs: a
    /// folder, ssh://[user@]host[:port]/path or s3://bucket/prefix (overrides the store's
    /// `repository` setting).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// mount(8)-style options, comma-separated (threads=N, preimage_mem=SIZE, ...; see
    /// snarf(8)); applied after the flags above. mount.snarf passes fstab's options here.
    #[arg(short = 'o', long = "options", value_name = "OPTION[,OPTION...]")]
    pub options: Vec<String>,
    /// Internal: descriptor on which the background daemon reports readiness.
    #[arg(long, hide = true, value_parser = clap::value_parser!(i32).range(3..=65535))]
    pub ready_fd: Option<i32>,
}

/// Arguments of `snarf umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the store is mounted.
    pub mountpoint: PathBuf,
    /// If files are still open, detach the mount now and let it go when they are closed.
    #[arg(long, short = 'l')]
    pub lazy: bool,
    /// Seconds to wait for the daemon to flush and exit (1 to 604800).
    #[arg(long, default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=numbers::MAX_WAIT_SECS))]
    pub timeout: u64,
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf, CliError> {
    path.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError::new(format!("{what} {} does not exist", path.display()))
        } else {
            CliError::new(format!("{what} {}: {e}", path.display()))
        }
    })
}

/// Checks the mount point: an existing directory, not a mount already, not a dead mount.
fn check_mountpoint(path: &Path) -> Result<PathBuf, CliError> {
    if mounts::is_stale(path) {
        return Err(CliError::new(format!(
            "{} is a stale mount whose daemon is gone; clear it with `snarf umount {0}` (or `umount -l {0}`), then mount again",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CliError::new(format!(
            "mount point {} does not exist; create it with `mkdir -p {0}`",
            path.display()
        )),
        _ => CliError::new(format!("mount point {}: {e}", path.display())),
    })?;
    if !meta.is_dir() {
        return Err(CliError::new(format!(
            "mount point {} is not a directory",
            path.display()
        )));
    }
    let path = canonical(path, "mount point")?;
    if let Some(m) = mounts::mount_at(&path)? {
        return Err(CliError::new(format!(
            "{} is already a mount point ({} of {}); unmount it first (`snarf umount {0}`) or choose another directory",
            path.display(),
            m.fstype,
            m.source
        )));
    }
    Ok(path)
}

/// `snarf mount`.
pub fn mount(mut args: MountArgs) -> CliResult {
    let options = std::mem::take(&mut args.options);
    mount_options::apply(&mut args, &options).map_err(CliError::new)?;
    let in_daemon = args.foreground || args.ready_fd.is_some();
    let checked = (|| {
        let store = canonical(&args.store, "store")?;
        Settings::load(&store)?;
        let mountpoint = check_mountpoint(&args.mountpoint)?;
        Ok::<_, CliError>((store, mountpoint))
    })();
    if !in_daemon {
        logging::to_stderr();
        let (store, mountpoint) = checked?;
        return launch(&args, &store, &mountpoint);
    }
    let ready = args.ready_fd.map(|fd| {
        // SAFETY: the launcher hands us this descriptor open and ours alone.
        unsafe { File::from_raw_fd(fd) }
    });
    let (store, mountpoint) = match checked {
        Ok(paths) => paths,
        Err(e) => {
            report(ready, Err(&e.message));
            return Err(e);
        }
    };
    if let Err(e) = logging::to_file(&store.join("snarf.log"), args.foreground) {
        let e = CliError::new(format!(
            "cannot open the log {}: {e}",
            store.join("snarf.log").display()
        ));
        report(ready, Err(&e.message));
        return Err(e);
    }
    serve(&args, &store, &mountpoint, ready)
}

/// Tells the launcher (if any) how start-up went, then lets go of the pipe.
fn report(ready: Option<File>, outcome: Result<(), &str>) {
    if let Some(mut f) = ready {
        let line = match outcome {
            Ok(()) => "ok\n".to_string(),
            Err(msg) => format!("error: {msg}\n"),
        };
        let _ = f.write_all(line.as_bytes());
    }
}

/// The daemon's arguments: `mount`, every option as `--key=value`, then `--` and the two
/// paths, so a store or mount point whose name starts with `-` is never read as an option.
fn daemon_argv(args: &MountArgs, store: &Path, mountpoint: &Path) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = vec![
        "mount".into(),
        format!("--ready-fd={READY_FD}").into(),
        format!("--threads={}", args.threads).into(),
    ];
    if args.allow_other {
        argv.push("--allow-other".into());
    }
    if let Some(v) = args.preimage_mem {
        argv.push(format!("--preimage-mem={v}").into());
    }
    if let Some(v) = args.preimage_disk {
        argv.push(format!("--preimage-disk={v}").into());
    }
    if let Some(v) = args.break_after {
        argv.push(format!("--break-after={v}").into());
    }
    argv.push(format!("--live-io={}", args.live_io.name()).into());
    argv.push(format!("--snapshot-io={}", args.snapshot_io.name()).into());
    if let Some(d) = args.snapshots {
        argv.push(format!("--snapshots={}", d.as_str()).into());
    }
    if let Some(repo) = &args.repo {
        let mut a = std::ffi::OsString::from("--repo=");
        a.push(repo);
        argv.push(a);
    }
    argv.push("--".into());
    argv.push(store.as_os_str().to_owned());
    argv.push(mountpoint.as_os_str().to_owned());
    argv
}

/// Starts the daemon in the background and waits for its word.
fn launch(args: &MountArgs, store: &Path, mountpoint: &Path) -> CliResult {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("cannot find the snarf executable: {e}")))?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| CliError::new(format!("cannot make a pipe: {}", std::io::Error::from(e))))?;
    let (mut rd, wr) = (File::from(rd), File::from(wr));
    let wr_fd = std::os::fd::AsRawFd::as_raw_fd(&wr);
    let mut cmd = Command::new(exe);
    cmd.args(daemon_argv(args, store, mountpoint));
    // The daemon and its jobs reach an ssh:// repository through the same far snarf.
    if let Some(p) = crate::repo::backend::ssh::remote_path() {
        cmd.env("SNARF_REMOTE_PATH", p);
    }
    // So do they an encrypted repository's passphrase file (SNARF_PASSWORD is inherited).
    if let Some(p) = crate::repo::passphrase::password_file() {
        cmd.env(crate::repo::passphrase::ENV_FILE, p);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec: a new session (so the
    // daemon outlives the terminal) and the pipe moved to descriptor 3 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if wr_fd == READY_FD {
                if libc::fcntl(READY_FD, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wr_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new(format!("cannot start the mount daemon: {e}")))?;
    drop(wr);
    let mut answer = String::new();
    let _ = rd.read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ok" {
        println!(
            "mounted {} at {} (daemon pid {}, log {})",
            store.display(),
            mountpoint.display(),
            child.id(),
            store.join("snarf.log").display()
        );
        return Ok(());
    }
    let _ = child.wait();
    match answer.strip_prefix("error: ") {
        Some(msg) => Err(CliError::new(msg)),
        None => Err(CliError::new(format!(
            "the mount daemon exited during start-up; see {}",
            store.join("snarf.log").display()
        ))),
    }
}

/// Runs the daemon until the mount goes: open the store, mount, serve, close cleanly.
fn serve(args: &MountArgs, store: &Path, mountpoint: &Path, ready: Option<File>) -> CliResult {
    let holder = format!(
        "snarf mount at {} (pid {})",
        mountpoint.display(),
        std::process::id()
    );
    let started = (|| {
        let st = Store::open(store, &holder)?;
        let mut opts = EngineOptions::from_store(&st);
        if let Some(v) = args.preimage_mem {
            opts.budgets.memory = v;
        }
        if let Some(v) = args.preimage_disk {
            opts.budgets.disk = v;
        }
        if let Some(v) = args.break_after {
            opts.budgets.break_after_secs = v;
        }
        if let Some(d) = args.snapshots {
            opts.durability = d;
        }
        let engine = Arc::new(Engine::new(st, opts)?);
        // A local folder made absolute (jobs run elsewhere); an ssh:// URL as it is.
        let repo = match &args.repo {
            Some(r) => Some(match Location::of_arg(r)? {
                Location::Local(p) => p.canonicalize().unwrap_or(p),
                Location::Ssh(_) | Location::S3(_) => r.clone(),
            }),
            None => None,
        };
        let mut daemon = Daemon::new(engine.clone())
            .with_repository(repo)
            .with_live_io(args.live_io)
            .with_snapshot_io(args.snapshot_io);
        // Test builds only: the schedule's clock set through a file (SNARF_FAKE_CLOCK).
        #[cfg(feature = "fault-injection")]
        if let Some(clock) = crate::sys::clock::FileClock::from_env() {
            log::warn!("the schedule runs by the test clock {clock:?}");
            daemon = daemon.with_clock(std::sync::Arc::new(clock));
        }
        daemon.note_interrupted_jobs();
        let daemon = Arc::new(daemon);
        // Backup jobs (separate `snarf backup` processes) talk to the daemon on run/daemon.sock.
        if let Err(e) = daemon.start_job_server() {
            let _ = engine.close();
            return Err(CliError::new(format!(
                "cannot serve backup jobs: {}",
                e.chain()
            )));
        }
        let mount_opts = MountOptions {
            threads: args.threads,
            allow_other: args.allow_other,
            source: store.display().to_string(),
        };
        if let Ok(exe) = std::env::current_exe() {
            daemon.jobs().set_launcher(JobLauncher {
                exe,
                mountpoint: mountpoint.to_path_buf(),
                run_dir: store.join("run"),
            });
        }
        match fuse::mount(daemon.clone(), mountpoint, &mount_opts) {
            Ok(m) => Ok((engine, daemon, m)),
            Err(e) => {
                daemon.stop_job_server();
                let _ = engine.close();
                Err(CliError::new(format!(
                    "cannot mount {}: {e}",
                    mountpoint.display()
                )))
            }
        }
    })();
    let (engine, daemon, mounted) = match started {
        Ok(x) => x,
        Err(e) => {
            log::error!("{}", e.message);
            report(ready, Err(&e.message));
            return Err(e);
        }
    };
    log::info!(
        "mounted {} at {} ({} threads, pre-images: {})",
        store.display(),
        mountpoint.display(),
        args.threads,
        engine.options().budgets
    );
    // How the close goes is recorded for `snarf umount`; without the record it reports the
    // close as unconfirmed rather than guess.
    let mut record = match RecordFile::start(&store.join("run"), mountpoint) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!(
                "cannot write {}: {e}; `snarf umount` will not be able to confirm the store was closed",
                store.join("run").join(record::FILE).display()
            );
            None
        }
    };
    log_panics();
    watch_signals(mountpoint.to_path_buf())?;
    report(ready, Ok(()));
    notify_systemd();
    daemon.start_scheduler();
    daemon.resume_restores();
    let served = mounted.serve();
    if let Err(e) = &served {
        log::error!("the FUSE session ended with an error: {e}");
    }
    // No scheduled job starts once the mount is gone.
    daemon.stop_scheduler();
    // Jobs back up from the mount that just went; ask them to stop (nothing of theirs is
    // committed unless it had entered finishing, which completes at the next open).
    daemon.jobs().stop_all(Duration::from_secs(10));
    daemon.stop_restores();
    // Then the socket goes: any job still connected fails; pins kept for snapshot reads go.
    daemon.stop_job_server();
    let closed = engine.close();
    match &closed {
        Ok(()) => log::info!("unmounted {}; store closed cleanly", mountpoint.display()),
        Err(e) => log::error!("closing the store after unmount: {}", e.chain()),
    }
    if let Some(r) = record.as_mut() {
        let how = match &closed {
            Ok(()) => Ok(()),
            Err(e) => Err(e as &(dyn std::error::Error + 'static)),
        };
        if let Err(e) = r.finish(how) {
            log::error!(
                "cannot record how the store was closed in {}: {e}",
                r.path().display()
            );
        }
    }
    if let Err(e) = closed {
        return Err(CliError::new(format!("closing the store: {}", e.chain())));
    }
    served.map_err(|e| CliError::new(format!("the FUSE session failed: {e}")))
}

/// Sends panic messages (with where they happened) to the log as well as stderr: the
/// daemon's stderr is usually /dev/null.
fn log_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        log::error!(
            "panic on thread {}: {info}",
            thread.name().unwrap_or("unnamed")
        );
        previous(info);
    }));
}

/// On SIGTERM, SIGINT or SIGHUP: unmount, which ends the session and closes the store.
fn watch_signals(mountpoint: PathBuf) -> CliResult {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| CliError::new(format!("cannot watch signals: {e}")))?;
    std::thread::Builder::new()
        .name("snarf-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                log::info!("signal {sig}: unmounting {}", mountpoint.display());
                match mounts::unmount(&mountpoint, false) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        log::warn!(
                            "{} is busy (files open); detaching it now, it goes when they close",
                            mountpoint.display()
                        );
                        if let Err(e) = mounts::unmount(&mountpoint, true) {
                            log::error!("cannot unmount {}: {e}", mountpoint.display());
                        }
                    }
                    Err(e) => log::error!("cannot unmount {}: {e}", mountpoint.display()),
                }
            }
        })
        .map_err(|e| CliError::new(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Tells systemd (Type=notify units) the mount is ready.
fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    // Abstract-namespace sockets ('@...') are not reachable by path from std; systemd uses
    // a path socket by default.
    if let Err(e) = sock.send_to(b"READY=1", &path) {
        log::warn!("could not notify systemd: {e}");
    }
}

/// `snarf umount`: unmounts, then waits until the daemon has flushed and closed the store.
pub fn umount(args: UmountArgs) -> CliResult {
    logging::to_stderr();
    let stale = mounts::is_stale(&args.mountpoint);
    let path = if stale {
        args.mountpoint.clone()
    } else {
        canonical(&args.mountpoint, "mount point")?
    };
    let entry = mounts::mount_at(&path)?
        .ok_or_else(|| CliError::new(format!("{} is not mounted", path.display())))?;
    let is_snarf = entry.fstype == mounts::FSTYPE
        || (entry.fstype.starts_with("fuse") && Settings::load(Path::new(&entry.source)).is_ok());
    if !is_snarf {
        return Err(CliError::new(format!(
            "{} is a {} mount, not a snarf mount; use umount(8) for it",
            path.display(),
            entry.fstype
        )));
    }
    let store = PathBuf::from(&entry.source);
    let run_dir = store.join("run");
    // The daemon serving the mount now, to tell its record from a later daemon's.
    let before = record::read(&run_dir).filter(|r| r.phase == Phase::Serving);
    match mounts::unmount(&path, args.lazy) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(CliError::new(format!(
                "{} is busy: a process has files open there (see `fuser -vm {0}`); close them, or detach it now with `snarf umount --lazy {0}`",
                path.display()
            )))
        }
        Err(e) => return Err(CliError::new(format!("cannot unmount {}: {e}", path.display()))),
    }
    let limit = Duration::from_secs(args.timeout);
    let start = Instant::now();
    wait_for_store_release(&store, limit)?;
    // The daemon records the close just after it lets go of the store: wait for that too
    // (or for it to be gone), within the same time limit.
    let after = loop {
        let r = record::read(&run_dir);
        match &r {
            Some(r)
                if r.phase == Phase::Serving
                    && record::is_running(r)
                    && start.elapsed() < limit =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break r,
        }
    };
    let done = if stale {
        format!("cleared the stale mount at {}", path.display())
    } else {
        format!("unmounted {}", path.display())
    };
    match closing_outcome(before.as_ref(), after.as_ref(), stale) {
        Ok(()) => {
            println!("{done} (store {} flushed and closed)", store.display());
            Ok(())
        }
        Err(why) => Err(CliError::new(format!(
            "{done}, but {why}; see {}",
            store.join("snarf.log").display()
        ))),
    }
}

/// What the daemon's record says about the close, as `snarf umount` reports it: `Ok` only
/// when the daemon that served the mount recorded a clean close.
fn closing_outcome(
    before: Option<&record::DaemonRecord>,
    after: Option<&record::DaemonRecord>,
    stale: bool,
) -> Result<(), String> {
    const UNCLEAN: &str = "the store was not closed cleanly: changed-snarf tracking is lost and the next backup of each volume reads it in full";
    let Some(after) = after else {
        return Err(format!(
            "the daemon left no record of closing the store ({} is missing), so the close cannot be confirmed",
            record::FILE
        ));
    };
    if let Some(before) = before {
        if (before.pid, before.start_time) != (after.pid, after.start_time) {
            return Err(format!(
                "another daemon (pid {}) has started on the store since, so how daemon {} closed it cannot be told",
                after.pid, before.pid
            ));
        }
    }
    match after.phase {
        Phase::Closed => Ok(()),
        Phase::CloseFailed => Err(format!(
            "the daemon (pid {}) could not close the store: {}; {UNCLEAN}",
            after.pid,
            after.error.as_deref().unwrap_or("no reason recorded")
        )),
        Phase::Serving if record::is_running(after) => Err(format!(
            "the daemon (pid {}) is still running{}",
            after.pid,
            if stale {
                " although its mount was dead"
            } else {
                ""
            }
        )),
        Phase::Serving => Err(format!(
            "the daemon (pid {}) ended without closing the store (it was killed or crashed); {UNCLEAN}",
            after.pid
        )),
    }
}

/// Waits until nobody holds the store's lock (the daemon has exited).
fn wait_for_store_release(store: &Path, timeout: Duration) -> CliResult {
    let lock = store.join("run/store.lock");
    let start = Instant::now();
    let mut said = false;
    loop {
        let Ok(f) = File::open(&lock) else {
            return Ok(());
        };
        // Free only once the lock is taken; any failure to take it is waited out.
        if matches!(lock::try_lock(&f, lock::Kind::Shared), Ok(true)) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(CliError::new(format!(
                "unmounted, but the daemon of {} has not exited after {} s; see {}",
                store.display(),
                timeout.as_secs(),
                store.join("snarf.log").display()
            )));
        }
        if !said && start.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "waiting for the daemon to flush and close {} ...",
                store.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
