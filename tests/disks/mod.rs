//! Small real filesystems for tests that need a disk to fill up or to fail: a tmpfs of a
//! given size, and an ext4 without a journal on a loop device whose backing file sits on
//! such a tmpfs. Each is a guard that unmounts and detaches what it made, on every path,
//! panics included. They need root: callers check [`root_available`] first.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a program with fixed arguments (never a shell); panics with its output on failure.
fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Whether tests that mount filesystems can run here (root); prints why not, or panics
/// under `SNARF_REQUIRE_FUSE=1` (CI), where they must run.
pub fn root_available() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SNARF_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("SNARF_REQUIRE_FUSE=1 but these tests need root to mount a tmpfs");
    }
    eprintln!("skipping: mounting a tmpfs needs root");
    false
}

/// A tmpfs mounted on a fresh directory; unmounted (lazily if busy) on drop.
pub struct Tmpfs {
    /// Holds the mount point.
    _dir: tempfile::TempDir,
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// A tmpfs of `size` (as mount(8) takes it, e.g. "8M").
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mkdir");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "--",
                "snarf-test",
                s(&path),
            ],
        );
        Tmpfs { _dir: dir, path }
    }

    /// Fills the filesystem to the last byte with a file called `name`.
    pub fn fill(&self, name: &str) {
        fill(&self.path.join(name));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg("--")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg("--")
                .arg(&self.path)
                .status();
        }
    }
}

/// Writes zeros to `path` until the filesystem says it is full.
pub fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let block = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever is left below a block (and the page cache's slack) goes too.
    let small = [0x5au8; 512];
    while f.write(&small).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
}

/// An ext4 without a journal on a loop device over a sparse file on a small tmpfs: writes
/// to the ext4 are accepted into the page cache, and writeback fails once the tmpfs under
/// it is full, as a thin-provisioned or failing disk does.
pub struct LoopExt4 {
    /// The mount point of the ext4.
    pub path: PathBuf,
    /// The loop device.
    pub device: String,
    mounted: bool,
    /// The tmpfs holding the loop device's backing file (dropped last).
    pub under: Tmpfs,
}

impl LoopExt4 {
    /// An ext4 of `fs_size` over a tmpfs of `tmpfs_size`.
    pub fn new(tmpfs_size: &str, fs_size: &str) -> LoopExt4 {
        let under = Tmpfs::new(tmpfs_size);
        let image = under.path.join("disk.img");
        run("truncate", &["-s", fs_size, "--", s(&image)]);
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=0,nodiscard",
                "--",
                s(&image),
            ],
        );
        let device = run("losetup", &["--find", "--show", "--", s(&image)])
            .trim()
            .to_string();
        let mut guard = LoopExt4 {
            path: under.path.join("mnt"),
            device,
            mounted: false,
            under,
        };
        std::fs::create_dir(&guard.path).expect("mkdir mnt");
        run(
            "mount",
            &["-t", "ext4", "--", &guard.device, s(&guard.path)],
        );
        guard.mounted = true;
        guard
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg("--")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg("--")
                    .arg(&self.path)
                    .status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
