//! Mount tests of the store's own disk and sizes at their limits, on a store on a tmpfs:
//! `truncate -s 1E` is refused with EFBIG and the daemon goes on (tmpfs would take an 8 EiB
//! file); a store that already holds such a volume still mounts and says what is wrong; a
//! full disk under the spill file breaks the snapshot, never a live write.

mod disks;
mod mounted;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use mounted::{read, snarf_ok, Mounted};

const EIB: u64 = 1 << 60;

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// A store on `fs`, mounted with `args`.
fn mount_on(fs: &disks::Tmpfs, args: &[&str]) -> Mounted {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fs.path.join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    snarf_ok(&["init", store.to_str().unwrap()]);
    let mut m = Mounted {
        dir,
        store,
        mnt,
        daemon_pid: None,
    };
    m.mount(args);
    m
}

#[test]
fn truncate_to_1e_is_efbig_and_a_store_holding_such_a_volume_still_mounts() {
    if !mounted::fuse_available() {
        return;
    }
    let fs = disks::Tmpfs::new("64M");
    let mut m = mount_on(&fs, &[]);
    let data = vec![0x42u8; 1 << 20];
    fs::write(m.path("live/v.img"), &data).unwrap();

    let f = OpenOptions::new()
        .write(true)
        .open(m.path("live/v.img"))
        .unwrap();
    assert_eq!(errno_of(f.set_len(EIB)), libc::EFBIG);
    assert_eq!(errno_of(f.write_all_at(b"x", EIB)), libc::EFBIG);
    drop(f);
    assert!(m.daemon_alive(), "the daemon died");
    assert_eq!(fs::metadata(m.path("live/v.img")).unwrap().len(), 1 << 20);
    assert_eq!(read(&m.path("live/v.img")), data);
    fs::create_dir(m.path("snapshots/s")).unwrap();
    fs::remove_dir(m.path("snapshots/s")).unwrap();
    m.unmount();

    // A volume file made 1 EiB behind snarf's back: the store mounts all the same.
    let big = m.store.join("volumes/big.img");
    fs::write(&big, b"rescue me").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(EIB)
        .unwrap();
    m.mount(&[]);
    assert_eq!(fs::metadata(m.path("live/big.img")).unwrap().len(), EIB);
    assert_eq!(read(&m.path("live/v.img")), data);
    // Its data can be read back, writes and snapshots are refused with EFBIG, and the log
    // says what is wrong and what to do.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("live/big.img"))
        .unwrap();
    let mut buf = [0u8; 9];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"rescue me");
    assert_eq!(errno_of(f.write_all_at(b"x", 0)), libc::EFBIG);
    assert_eq!(errno_of(fs::create_dir(m.path("snapshots/s"))), libc::EFBIG);
    let log = fs::read_to_string(m.store.join("snarf.log")).unwrap_or_default();
    assert!(
        log.contains("volume \"big.img\" is not served") && log.contains("truncate -s"),
        "{log}"
    );
    // truncate -s 1M serves it again.
    f.set_len(1 << 20).unwrap();
    f.write_all_at(b"R", 0).unwrap();
    drop(f);
    assert_eq!(&read(&m.path("live/big.img"))[..9], b"Rescue me");
    fs::create_dir(m.path("snapshots/s")).unwrap();
    assert_eq!(&read(&m.path("snapshots/s/big.img"))[..9], b"Rescue me");
    assert!(m.daemon_alive());
    m.unmount();
    assert!(m.wait_daemon_gone(Duration::from_secs(5)));
}

#[test]
fn writes_after_a_snapshot_on_a_full_store_disk_go_on_and_the_snapshot_is_broken() {
    if !mounted::fuse_available() {
        return;
    }
    let fs = disks::Tmpfs::new("16M");
    let mut m = mount_on(&fs, &["--preimage-mem", "64K", "--break-after", "1"]);
    let old = vec![0x11u8; 4 << 20];
    fs::write(m.path("live/v.img"), &old).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    fs.fill("filler");

    let f = OpenOptions::new()
        .write(true)
        .open(m.path("live/v.img"))
        .unwrap();
    let new = vec![0x22u8; 64 << 10];
    for i in 0..64u64 {
        f.write_all_at(&new, i * (64 << 10))
            .unwrap_or_else(|e| panic!("live write {i} failed: {e}"));
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(read(&m.path("live/v.img")), vec![0x22u8; 4 << 20]);
    // The snapshot is broken, with the reason where a person looks.
    assert_eq!(errno_of(fs::read(m.path("snapshots/s/v.img"))), libc::EIO);
    let listing = fs::read_to_string(m.path("control/snapshot")).unwrap();
    assert!(
        listing.contains("broken")
            && listing.contains("could not be written to")
            && listing.contains("No space left"),
        "{listing}"
    );
    assert!(m.daemon_alive());
    fs::remove_file(fs.path.join("filler")).unwrap();
    m.unmount();
}
