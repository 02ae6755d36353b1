//! Mount tests of sizes the engine cannot serve, on a store whose filesystem would take
//! them (tmpfs allows 8 EiB files): `truncate -s 1E` is refused with EFBIG and the daemon
//! goes on; a store that already holds such a volume still mounts and says what is wrong.

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

/// A store on `fs`, mounted.
fn mount_on(fs: &disks::Tmpfs) -> Mounted {
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
    m.mount(&[]);
    m
}

#[test]
fn truncate_to_1e_is_efbig_and_a_store_holding_such_a_volume_still_mounts() {
    if !mounted::fuse_available() {
        return;
    }
    let fs = disks::Tmpfs::new("64M");
    let mut m = mount_on(&fs);
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
