//! A write-back error reaches every open file of a volume, as the kernel promises for
//! native files ("fsyncgate"): the store sits on an ext4 without a journal on a loop device
//! whose backing file is on a tmpfs that fills up, so data the ext4 accepted cannot be
//! written back. Each program that had the volume open is told at its next fsync (or at
//! close), once.

mod disks;
mod mounted;

use std::fs::{self, File, OpenOptions};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;

use mounted::{snarf_ok, Mounted};

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn open_rw(m: &Mounted) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("live/v.img"))
        .expect("open live/v.img")
}

/// close(2) of `f`, with its result (File's drop throws it away).
fn close(f: File) -> i32 {
    let fd = f.into_raw_fd();
    // SAFETY: fd was just taken out of a File, so it is open and owned here.
    if unsafe { libc::close(fd) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn an_fsync_error_reaches_every_program_that_had_the_volume_open() {
    if !mounted::fuse_available() || !mounted::have_tool("mkfs.ext4") {
        return;
    }
    let disk = disks::LoopExt4::new("24M", "64M");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = disk.path.join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    snarf_ok(&["init", store.to_str().unwrap()]);
    let mut m = Mounted {
        dir,
        store,
        mnt,
        daemon_pid: None,
    };
    m.mount(&[]);
    fs::write(m.path("live/v.img"), b"").expect("create volume");

    let app1 = open_rw(&m);
    let app2 = open_rw(&m);
    let app3 = open_rw(&m);
    // The ext4 still thinks it has room; the disk under it has none.
    disk.under.fill("filler");
    app1.write_all_at(&vec![0xabu8; 8 << 20], 0)
        .expect("the ext4 takes the data into its page cache");

    let first = errno_of(app1.sync_all());
    assert!(
        first == libc::ENOSPC || first == libc::EIO,
        "app1's fsync: errno {first}"
    );
    assert_eq!(
        errno_of(app2.sync_all()),
        first,
        "app2 was told its data is safe"
    );
    assert_eq!(close(app3), first, "close of app3 did not report the error");
    // Each is told once, as by the kernel; a file opened after it was reported is not.
    assert_eq!(errno_of(app1.sync_all()), 0);
    assert_eq!(errno_of(app2.sync_all()), 0);
    let app4 = open_rw(&m);
    assert_eq!(errno_of(app4.sync_all()), 0);
    assert_eq!(close(app4), 0);
    assert!(m.daemon_alive());
    drop(app1);
    drop(app2);

    // With room again the store closes cleanly.
    fs::remove_file(disk.under.path.join("filler")).expect("rm filler");
    m.unmount();
}
