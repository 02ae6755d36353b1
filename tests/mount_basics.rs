//! Mount tests of the layout and its rules: snapshots by mkdir/rmdir and by control file,
//! EROFS on every write path under snapshots/, clean errors on bad names, live file
//! operations, holes, unmount on SIGTERM, a second mount refused, a stale mount explained.

mod mounted;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::Duration;

use mounted::{read, snarf, Mounted};

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn layout_and_snapshot_directories() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    assert_eq!(names(&m.mnt), ["backups", "control", "live", "snapshots"]);
    fs::write(m.path("live/a.img"), vec![7u8; 100_000]).unwrap();
    fs::write(m.path("live/b.img"), b"bee").unwrap();
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    assert_eq!(names(&m.path("snapshots")), ["s1"]);
    assert_eq!(names(&m.path("snapshots/s1")), ["a.img", "b.img"]);
    let meta = fs::metadata(m.path("snapshots/s1/a.img")).unwrap();
    assert_eq!(meta.len(), 100_000);
    assert_eq!(meta.mode() & 0o777, 0o400);
    assert!(
        meta.blksize() >= 1 << 20,
        "a large block size makes cp and cat use big reads"
    );
    // Later changes do not show in the snapshot: size, content, rename, delete.
    fs::write(m.path("live/a.img"), b"short").unwrap();
    fs::rename(m.path("live/b.img"), m.path("live/c.img")).unwrap();
    fs::remove_file(m.path("live/c.img")).unwrap();
    assert_eq!(read(&m.path("snapshots/s1/a.img")), vec![7u8; 100_000]);
    assert_eq!(read(&m.path("snapshots/s1/b.img")), b"bee");
    assert_eq!(names(&m.path("live")), ["a.img"]);
    assert_eq!(
        errno_of(fs::create_dir(m.path("snapshots/s1"))),
        libc::EEXIST
    );
    fs::remove_dir(m.path("snapshots/s1")).unwrap();
    assert!(names(&m.path("snapshots")).is_empty());
    assert_eq!(
        errno_of(fs::remove_dir(m.path("snapshots/s1"))),
        libc::ENOENT
    );
}

#[test]
fn every_write_path_under_snapshots_is_erofs() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    fs::write(m.path("live/v.img"), b"data").unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let f = m.path("snapshots/s/v.img");
    let rofs = libc::EROFS;
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(&f)),
        rofs,
        "open for writing"
    );
    assert_eq!(
        errno_of(OpenOptions::new().read(true).write(true).open(&f)),
        rofs,
        "open read-write"
    );
    assert_eq!(
        errno_of(OpenOptions::new().write(true).truncate(true).open(&f)),
        rofs,
        "open with O_TRUNC"
    );
    assert_eq!(
        errno_of(fs::write(m.path("snapshots/s/new.img"), b"x")),
        rofs,
        "create"
    );
    let truncate = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::truncate(truncate.as_ptr(), 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(rofs),
        "truncate(2)"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        errno_of(fs::set_permissions(&f, fs::Permissions::from_mode(0o644))),
        rofs,
        "chmod"
    );
    assert_eq!(
        errno_of(std::os::unix::fs::chown(&f, Some(1), None)),
        rofs,
        "chown"
    );
    assert_eq!(
        errno_of(fs::rename(&f, m.path("snapshots/s/w.img"))),
        rofs,
        "rename inside"
    );
    assert_eq!(
        errno_of(fs::rename(&f, m.path("live/w.img"))),
        rofs,
        "rename out"
    );
    assert_eq!(
        errno_of(fs::rename(m.path("snapshots/s"), m.path("snapshots/t"))),
        rofs,
        "rename snapshot"
    );
    assert_eq!(errno_of(fs::remove_file(&f)), rofs, "unlink");
    assert_eq!(
        errno_of(fs::create_dir(m.path("snapshots/s/d"))),
        rofs,
        "mkdir inside"
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("x", m.path("snapshots/s/l"))),
        rofs,
        "symlink"
    );
    assert_eq!(
        errno_of(fs::hard_link(&f, m.path("snapshots/s/h"))),
        rofs,
        "link"
    );
    let t = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    let times = [libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    }; 2];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, t.as_ptr(), times.as_ptr(), 0) },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(rofs),
        "utimensat"
    );
    // Still intact and readable.
    assert_eq!(read(&f), b"data");
}

#[test]
fn bad_names_get_clear_errors() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    assert_eq!(
        errno_of(fs::create_dir(m.path("snapshots/a\nb"))),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(fs::create_dir(m.path("snapshots/.snarf-x"))),
        libc::EINVAL
    );
    let long = "n".repeat(256);
    assert_eq!(
        errno_of(fs::create_dir(m.path(&format!("snapshots/{long}")))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(fs::write(m.path("live/bad\u{1}name"), b"x")),
        libc::EINVAL
    );
    assert_eq!(errno_of(fs::create_dir(m.path("live/dir"))), libc::EPERM);
    assert_eq!(
        errno_of(fs::write(m.path("snapshots/file"), b"x")),
        libc::EPERM
    );
    assert_eq!(errno_of(fs::create_dir(m.path("extra"))), libc::EPERM);
    // The reason for a refused control command is read back on the same descriptor.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("control/snapshot"))
        .unwrap();
    assert_eq!(errno_of(f.write_all(b"create a/b\n")), libc::EINVAL);
    let mut reason = String::new();
    f.read_to_string(&mut reason).unwrap();
    assert!(
        reason.contains("'/'") && reason.contains("create NAME"),
        "{reason}"
    );
    let log = fs::read_to_string(m.store.join("snarf.log")).unwrap();
    assert!(log.contains("mounted"), "{log}");
}

#[test]
fn control_snapshot_file_creates_and_releases() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    fs::write(m.path("live/v.img"), b"one").unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("control/snapshot"))
        .unwrap();
    f.write_all(b"create nightly\n").unwrap();
    let mut answer = String::new();
    f.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "created snapshot nightly\n");
    drop(f);
    fs::write(m.path("live/v.img"), b"two").unwrap();
    assert_eq!(read(&m.path("snapshots/nightly/v.img")), b"one");
    let table = fs::read_to_string(m.path("control/snapshot")).unwrap();
    let row = table.lines().nth(1).unwrap_or("");
    assert!(
        row.starts_with("nightly ") && row.contains(" ok "),
        "{table}"
    );
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    assert!(
        status.contains("nightly") && status.contains("preimage-memory"),
        "{status}"
    );
    fs::write(m.path("control/snapshot"), b"release nightly\n").unwrap();
    assert!(!m.path("snapshots/nightly").exists());
    assert_eq!(
        errno_of(fs::write(m.path("control/snapshot"), b"release nightly\n")),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(fs::write(m.path("control/status"), b"x")),
        libc::EACCES
    );
}

#[test]
fn live_files_behave_like_files() {
    let Some(m) = Mounted::new(&["--snarf-size", "4K"], &[]) else {
        return;
    };
    let p = m.path("live/db.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)
        .unwrap();
    f.write_all_at(b"hello", 10_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10_005);
    f.sync_all().unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 5);
    f.set_len(20_000).unwrap();
    let mut buf = vec![1u8; 20_000];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "grown region must read as zeros"
    );
    let before = fs::metadata(&p).unwrap().mtime();
    std::thread::sleep(Duration::from_millis(1100));
    f.write_all_at(b"x", 0).unwrap();
    assert!(
        fs::metadata(&p).unwrap().mtime() > before,
        "mtime follows writes"
    );
    fs::rename(&p, m.path("live/db2.img")).unwrap();
    assert_eq!(fs::metadata(m.path("live/db2.img")).unwrap().len(), 20_000);
    // The open descriptor follows the volume across the rename and the delete.
    fs::remove_file(m.path("live/db2.img")).unwrap();
    f.write_all_at(b"still", 0).unwrap();
    let st = nix_statvfs(&m.mnt);
    assert!(
        st.0 > 0 && st.1 <= st.0,
        "statfs shows the store's filesystem: {st:?}"
    );
    assert_eq!(
        errno_of(fs::rename(m.path("live/none"), m.path("live/x"))),
        libc::ENOENT
    );
}

fn nix_statvfs(path: &std::path::Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks, st.f_bfree)
}

#[test]
fn holes_show_to_seek_cp_and_tar() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let p = m.path("live/sparse.img");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(b"needle", 500 << 20).unwrap();
    drop(f);
    fs::create_dir(m.path("snapshots/s")).unwrap();
    for path in [p.clone(), m.path("snapshots/s/sparse.img")] {
        let mut h = fs::File::open(&path).unwrap();
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&h);
        let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
        assert!(
            (data as u64) <= 500 << 20 && data as u64 > 400 << 20,
            "{}: data at {data}",
            path.display()
        );
        let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
        assert_eq!(hole, 0, "{}", path.display());
        h.seek(SeekFrom::Start(500 << 20)).unwrap();
        let mut six = [0u8; 6];
        h.read_exact(&mut six).unwrap();
        assert_eq!(&six, b"needle");
    }
    let out = m.dir.path().join("copy.img");
    mounted::sh(&format!(
        "cp --sparse=always {} {}",
        m.path("snapshots/s/sparse.img").display(),
        out.display()
    ));
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 8 << 20,
        "the copy is sparse ({} bytes allocated)",
        meta.blocks() * 512
    );
    let tar = m.dir.path().join("s.tar");
    mounted::sh(&format!(
        "tar -C {} -cSf {} sparse.img",
        m.path("snapshots/s").display(),
        tar.display()
    ));
    assert!(
        fs::metadata(&tar).unwrap().len() < 8 << 20,
        "tar -S stores the holes as holes"
    );
}

#[test]
fn seek_data_on_a_terabyte_snapshot_skips_its_holes_at_once() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let tib = 1u64 << 40;
    let p = m.path("live/big.img");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap();
    f.set_len(tib).unwrap();
    f.write_all_at(b"needle", tib - 4096).unwrap();
    drop(f);
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let h = fs::File::open(m.path("snapshots/s/big.img")).unwrap();
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&h);
    let start = std::time::Instant::now();
    // SAFETY: lseek on a descriptor this test owns.
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    let hole = unsafe { libc::lseek(fd, (tib - 4096) as i64, libc::SEEK_HOLE) };
    let took = start.elapsed();
    assert_eq!(
        data as u64,
        tib - (64 << 10),
        "data starts in the last snarf"
    );
    assert_eq!(hole as u64, tib, "no hole after the data");
    // Snarf by snarf, 16 million of them took about half a minute.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}

#[test]
fn sigterm_unmounts_cleanly_and_a_second_mount_is_refused() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    fs::write(m.path("live/v.img"), b"kept").unwrap();
    let other = m.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = snarf(&["mount", m.store.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains(m.mnt.to_str().unwrap()),
        "{err}"
    );
    let out = snarf(&["mount", m.store.to_str().unwrap(), m.mnt.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a mount point"));

    let pid = m.daemon_pid.unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        m.wait_daemon_gone(Duration::from_secs(30)),
        "daemon did not exit on SIGTERM"
    );
    assert!(!m.is_mounted(), "SIGTERM left the mount behind");
    assert!(
        !m.store.join("run/open").exists(),
        "the store was not closed cleanly"
    );
    m.daemon_pid = None;
    m.mount(&[]);
    assert_eq!(read(&m.path("live/v.img")), b"kept");
    m.unmount();
    assert!(!m.is_mounted());
}

#[test]
fn a_stale_mount_is_explained_and_cleared() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let pid = m.daemon_pid.unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(m.wait_daemon_gone(Duration::from_secs(10)));
    m.daemon_pid = None;
    let out = snarf(&["mount", m.store.to_str().unwrap(), m.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stale mount") && err.contains("snarf umount"),
        "{err}"
    );
    // The stale mount is cleared, and umount says the store was not closed (the daemon was
    // killed), with a non-zero status.
    let out = snarf(&["umount", m.mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("cleared the stale mount") && err.contains("ended without closing"),
        "{err}"
    );
    assert!(!m.is_mounted());
    m.mount(&[]);
    assert!(m.path("live").exists());
    let out = snarf(&[
        "mount",
        m.store.to_str().unwrap(),
        m.dir.path().join("missing").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn a_broken_snapshot_reads_as_eio_with_its_reason_in_status_and_log() {
    // Room for two pre-images in all, and writers give up waiting after 0.2 s.
    let Some(m) = Mounted::new(
        &["--snarf-size", "64K"],
        &[
            "--preimage-mem",
            "64K",
            "--preimage-disk",
            "64K",
            "--break-after",
            "0.2",
        ],
    ) else {
        return;
    };
    fs::write(m.path("live/v.img"), vec![1u8; 1 << 20]).unwrap();
    fs::create_dir(m.path("snapshots/doomed")).unwrap();
    let start = std::time::Instant::now();
    fs::write(m.path("live/v.img"), vec![2u8; 1 << 20]).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "the writer was not held up"
    );
    assert_eq!(
        read(&m.path("live/v.img")),
        vec![2u8; 1 << 20],
        "the live write went through"
    );
    let e = fs::read(m.path("snapshots/doomed/v.img")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    let row = status
        .lines()
        .find(|l| l.starts_with("doomed "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains(" broken ") && row.contains("pre-image room"),
        "{status}"
    );
    let log = fs::read_to_string(m.store.join("snarf.log")).unwrap();
    assert!(log.contains("breaking snapshot \"doomed\""), "{log}");
    fs::remove_dir(m.path("snapshots/doomed")).unwrap();
}
