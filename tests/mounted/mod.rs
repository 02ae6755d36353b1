//! Harness for tests that need a real mount: a throwaway store, `snarf mount` in the
//! background, and a guard that unmounts and stops the daemon it started on every path,
//! panics included.
//!
//! Without a usable /dev/fuse (or not as root) the tests print why and skip — unless
//! `SNARF_REQUIRE_FUSE=1` is set (CI sets it), when that is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Path of the snarf binary under test.
pub fn snarf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snarf"))
}

/// Runs snarf with arguments; returns the output whatever the exit code.
pub fn snarf(args: &[&str]) -> Output {
    Command::new(snarf_bin())
        .args(args)
        .output()
        .expect("running the snarf binary")
}

/// Runs snarf and panics with its stderr unless it succeeds; returns stdout.
pub fn snarf_ok(args: &[&str]) -> String {
    let out = snarf(args);
    assert!(
        out.status.success(),
        "snarf {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether mount tests can run here; prints why not, or panics if they must.
pub fn fuse_available() -> bool {
    let why = if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse does not exist")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("mount tests need root")
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        Some("/dev/fuse cannot be opened")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("SNARF_REQUIRE_FUSE").as_deref() == Ok("1") => {
            panic!("SNARF_REQUIRE_FUSE=1 but FUSE is unusable: {why}")
        }
        Some(why) => {
            eprintln!("skipping mount test: {why}");
            false
        }
    }
}

/// Whether a program is on PATH; prints a notice (or panics under SNARF_REQUIRE_FUSE=1,
/// since CI installs every tool) when it is not.
pub fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("SNARF_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("{name} is not installed; scripts/test.sh installs it");
        }
        eprintln!("skipping: {name} is not installed");
    }
    found
}

/// A mounted throwaway store. Dropping it unmounts and waits for the daemon to exit.
pub struct Mounted {
    /// Holds the store and the mount point.
    pub dir: tempfile::TempDir,
    /// The store directory.
    pub store: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    /// The daemon this guard started.
    pub daemon_pid: Option<u32>,
}

impl Mounted {
    /// Inits a store with `init_args` and mounts it with `mount_args`; `None` when mount
    /// tests cannot run here.
    pub fn new(init_args: &[&str], mount_args: &[&str]) -> Option<Mounted> {
        if !fuse_available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let mut init = vec!["init", store.to_str().unwrap()];
        init.extend_from_slice(init_args);
        snarf_ok(&init);
        let mut m = Mounted {
            dir,
            store,
            mnt,
            daemon_pid: None,
        };
        m.mount(mount_args);
        Some(m)
    }

    /// Mounts (again) with extra arguments.
    pub fn mount(&mut self, mount_args: &[&str]) {
        let mut args = vec![
            "mount",
            self.store.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ];
        args.extend_from_slice(mount_args);
        let out = snarf_ok(&args);
        self.daemon_pid = out
            .split("daemon pid ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok());
        assert!(self.daemon_pid.is_some(), "no daemon pid in {out:?}");
    }

    /// A path under the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Whether the mount point is still mounted.
    /// Writes `text` to `control/NAME` in one write on a fresh descriptor and reads the
    /// answer back on it: (errno of the write or 0, what was read back).
    pub fn write_control(&self, name: &str, text: &str) -> (i32, String) {
        use std::io::{Read, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .truncate(true)
            .open(self.path(&format!("control/{name}")))
            .expect("opening a control file");
        let errno = match f.write(text.as_bytes()) {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        let mut back = String::new();
        f.read_to_string(&mut back)
            .expect("reading a control file back");
        (errno, back)
    }

    /// Waits (up to `limit`) for job `job`'s row in control/jobs to say done or failed;
    /// returns the row.
    pub fn wait_job(&self, job: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let table = std::fs::read_to_string(self.path("control/jobs")).expect("control/jobs");
            if let Some(row) = table.lines().find(|l| l.starts_with(job)) {
                if row.contains(" done ") || row.contains(" failed ") {
                    return row.to_string();
                }
            }
            assert!(start.elapsed() < limit, "job {job} never ended: {table}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The report file job `job` keeps in STORE/run/jobs.
    pub fn job_report(&self, job: &str) -> snarf::jobs::report::JobReport {
        snarf::jobs::report::JobReport::read(&snarf::jobs::report::report_path(
            &self.store.join("run"),
            job,
        ))
        .expect("the job's report file")
    }

    pub fn is_mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| t.lines().any(|l| l.split(' ').nth(4) == self.mnt.to_str()))
            .unwrap_or(false)
    }

    /// Whether the daemon we started is still running.
    pub fn daemon_alive(&self) -> bool {
        self.daemon_pid.is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
    }

    /// Waits until the daemon has exited, up to `limit`.
    pub fn wait_daemon_gone(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.daemon_alive() {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Unmounts with `snarf umount` and waits for the daemon.
    pub fn unmount(&mut self) {
        if self.is_mounted() {
            snarf_ok(&["umount", self.mnt.to_str().unwrap()]);
        }
        assert!(
            self.wait_daemon_gone(Duration::from_secs(30)),
            "the daemon did not exit after unmount"
        );
        self.daemon_pid = None;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.is_mounted() {
            let out = snarf(&["umount", "--lazy", self.mnt.to_str().unwrap()]);
            if !out.status.success() {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if !self.wait_daemon_gone(Duration::from_secs(20)) {
            if let Some(pid) = self.daemon_pid {
                // Only the daemon this guard started, by its pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                self.wait_daemon_gone(Duration::from_secs(5));
            }
        }
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs a shell command line made only of fixed test strings; panics unless it succeeds.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
