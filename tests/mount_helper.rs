//! mount(8) integration: `mount -t fuse.snarf STORE MOUNTPOINT -o ...` and an fstab line
//! (through `mount -T FSTAB`) go through `mount-helpers/mount.snarf`, and `umount` ends the
//! daemon cleanly. The helper is linked as /sbin/mount.fuse.snarf for the test if it is not
//! installed, and the link removed afterwards.

mod mounted;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mounted::{fuse_available, snarf_bin, snarf_ok};

const HELPER_LINK: &str = "/sbin/mount.fuse.snarf";

/// Links the helper into /sbin for the test's duration, unless one is installed already.
struct HelperLink {
    created: bool,
}

impl HelperLink {
    fn install() -> HelperLink {
        let link = Path::new(HELPER_LINK);
        if link.exists() || link.symlink_metadata().is_ok() {
            return HelperLink { created: false };
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mount-helpers/mount.snarf");
        std::os::unix::fs::symlink(&script, link).expect("linking the mount helper into /sbin");
        HelperLink { created: true }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(HELPER_LINK);
        }
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .env("SNARF_BIN", snarf_bin())
        .output()
        .expect("running a command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mountinfo_line(mnt: &Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == mnt.to_str())
        .map(str::to_string)
}

/// Waits until nobody holds the store's lock: the daemon has flushed and exited.
fn wait_store_free(store: &Path) {
    let start = Instant::now();
    loop {
        let f = fs::File::open(store.join("run/store.lock")).unwrap();
        let free = unsafe {
            libc::flock(
                std::os::unix::io::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        if free {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not exit after umount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts on drop if a test left the mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mountinfo_line(&self.0).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn mount_t_fuse_snarf_and_fstab_go_through_the_helper() {
    if !fuse_available() || !mounted::have_tool("mount") {
        return;
    }
    let _link = HelperLink::install();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    snarf_ok(&["init", store.to_str().unwrap()]);
    let _guard = Unmount(mnt.clone());

    let (ok, text) = run(Command::new("mount")
        .args(["-t", "fuse.snarf"])
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "threads=3,preimage_mem=64M,noatime"]));
    assert!(ok, "mount -t fuse.snarf failed: {text}");
    let line = mountinfo_line(&mnt).expect("not mounted");
    assert!(
        line.contains(" - fuse.snarf ") && line.contains(store.to_str().unwrap()),
        "{line}"
    );
    fs::write(mnt.join("live/v.img"), b"through mount(8)").unwrap();
    fs::create_dir(mnt.join("snapshots/s")).unwrap();
    assert_eq!(
        fs::read(mnt.join("snapshots/s/v.img")).unwrap(),
        b"through mount(8)"
    );
    let (ok, text) = run(Command::new("umount").arg(&mnt));
    assert!(ok, "umount failed: {text}");
    assert!(mountinfo_line(&mnt).is_none());
    wait_store_free(&store);

    // A bad option is refused by the helper with the accepted ones named.
    let (ok, text) = run(Command::new("mount")
        .args(["-t", "fuse.snarf"])
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "bogus=1"]));
    assert!(
        !ok && text.contains("unknown option 'bogus=1'") && text.contains("preimage_mem"),
        "{text}"
    );
    assert!(mountinfo_line(&mnt).is_none());

    // An fstab line, through an alternative fstab file.
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} fuse.snarf defaults,threads=2,preimage_disk=1G,_netdev 0 0\n",
            store.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let (ok, text) = run(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt));
    assert!(ok, "mount from fstab failed: {text}");
    assert_eq!(
        fs::read(mnt.join("live/v.img")).unwrap(),
        b"through mount(8)"
    );
    let (ok, text) = run(Command::new("umount").arg(&mnt));
    assert!(ok, "umount failed: {text}");
    wait_store_free(&store);
    assert!(
        !store.join("run/open").exists(),
        "the store was not closed cleanly"
    );
}
