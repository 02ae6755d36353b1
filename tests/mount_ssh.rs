//! The mount's repository over ssh, against a real OpenSSH server on loopback
//! (tests/common/sshd.rs): `snarf mount --repo ssh://…`, a backup started through
//! `control/jobs` into it, `backups/` read back byte-exact (holes included, SEEK_DATA and
//! SEEK_HOLE), then the server taken down: reads through `backups/` fail with EIO at once
//! and `control/status` says why; the server back: the same reads work again, and the
//! daemon keeps no dead ssh child.

mod mounted;
#[path = "common/sshd.rs"]
mod sshd;

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mounted::{read, snarf_bin, Mounted};
use sshd::Sshd;

const MIB: u64 = 1 << 20;

/// Runs snarf with the ssh settings of `sshd`; panics unless it succeeds.
fn snarf_ssh(sshd: &Sshd, args: &[&str]) -> String {
    let out = Command::new(snarf_bin())
        .args(args)
        .env("SNARF_RSH", sshd.rsh_string(&sshd.user_key))
        .env("SNARF_REMOTE_PATH", snarf_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snarf {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon's children that are zombies (exited, never reaped).
fn zombie_children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[1] == pid.to_string() && f[0] == "Z" {
            out.push(head.to_string());
        }
    }
    out
}

/// Waits until `cond` holds, up to `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Reads `len` bytes at `at` of a fresh open of `path` with O_DIRECT, past the kernel's
/// page cache, so the daemon (and so the repository) is asked.
fn read_fresh(path: &Path, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, at)?;
    Ok(buf)
}

#[test]
fn a_mount_backs_up_into_and_reads_back_from_an_ssh_repository_and_survives_its_host_going_away() {
    if !sshd::available() || !mounted::fuse_available() {
        return;
    }
    let far = tempfile::tempdir().unwrap();
    let mut sshd = Sshd::start(&snarf_bin(), far.path());
    let url = sshd.url(&format!("{}/repo", far.path().display()));
    snarf_ssh(&sshd, &["repo", "init", "--format", "2", &url]);

    // The mount, with the repository over ssh (the daemon reads SNARF_RSH like any snarf).
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    snarf_ssh(&sshd, &["init", store.to_str().unwrap()]);
    let out = snarf_ssh(
        &sshd,
        &[
            "mount",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--repo",
            &url,
        ],
    );
    let daemon_pid = out
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok());
    let m = Mounted {
        dir,
        store,
        mnt,
        daemon_pid,
    };
    let daemon = daemon_pid.expect("the daemon's pid");

    // A sparse volume: data, a hole, data at the end; more data than the daemon keeps
    // decoded frames of (8 MiB), so the reads after the host went away need it.
    let vol = m.path("live/vm.img");
    let size = 40 * MIB;
    // Noise: no snarf repeats another (so none is read through another's cached frame)
    // and none is zero (so the only holes are the ones placed).
    let nonzero = |seed: u64, len: u64| -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect()
    };
    let a = nonzero(11, 12 * MIB);
    let b = nonzero(12, MIB);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&vol)
            .unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&a, 0).unwrap();
        f.write_all_at(&b, size - MIB).unwrap();
    }
    let mut want = vec![0u8; size as usize];
    want[..a.len()].copy_from_slice(&a);
    want[(size - MIB) as usize..].copy_from_slice(&b);
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    assert!(read(&m.path("snapshots/s1/vm.img")) == want);

    // A backup through control/jobs goes to the mount's ssh repository.
    fs::write(m.path("control/jobs"), "backup s1 mode=full\n").unwrap();
    let jobs = m.path("control/jobs");
    assert!(
        wait_for(Duration::from_secs(120), || {
            let t = fs::read_to_string(&jobs).unwrap();
            t.lines().skip(1).any(|l| {
                [" done ", " failed ", " cancelled "]
                    .iter()
                    .any(|w| l.contains(w))
            })
        }),
        "the job did not end: {}",
        fs::read_to_string(&jobs).unwrap()
    );
    let table = fs::read_to_string(&jobs).unwrap();
    assert!(table.contains(" done "), "{table}");
    assert!(
        table.contains(&url),
        "the job names its repository: {table}"
    );
    let listed = snarf_ssh(&sshd, &["backups", &url]);
    let ids: Vec<String> = fs::read_dir(m.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    assert!(listed.contains(id.as_str()), "{listed}");

    // backups/ reads it back byte-exact, holes where the volume has them.
    let file = m.path(&format!("backups/{id}/vm.img"));
    assert!(read(&file) == want, "backups/{id}/vm.img differs");
    {
        let f = fs::File::open(&file).unwrap();
        let fd = f.as_raw_fd();
        let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) } as u64;
        assert!((12 * MIB..13 * MIB).contains(&hole), "hole at {hole}");
        let data = unsafe { libc::lseek(fd, 13 * MIB as i64, libc::SEEK_DATA) } as u64;
        assert!(
            data > 30 * MIB && data <= size - MIB,
            "data again at {data}"
        );
    }
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&url) && l.contains(" ok")),
        "{status}"
    );

    // The live volume is overwritten; the snapshot keeps its bytes (a backup into an ssh
    // repository frees no pre-image, so its reads never need the far host).
    {
        let f = fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(&vec![0xee; 2 * MIB as usize], MIB).unwrap();
    }

    // The host goes away (its sessions with it): reads fail with EIO at once, the file
    // already open too, and control/status says why.
    let open = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .unwrap();
    sshd.stop();
    let started = Instant::now();
    let err = read_fresh(&file, 0, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let mut buf = vec![0u8; 4096];
    let err = open.read_exact_at(&mut buf, 2 * MIB).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failing reads took {:?}",
        started.elapsed()
    );
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    let row = status
        .lines()
        .find(|l| l.starts_with(&url))
        .unwrap_or_else(|| panic!("no repository row: {status}"));
    assert!(row.contains("unreachable"), "{row}");
    assert!(
        row.contains("ssh") || row.contains("connect") || row.contains("connection"),
        "the reason names the connection: {row}"
    );
    assert!(
        read(&m.path("snapshots/s1/vm.img")) == want,
        "the snapshot reads other bytes while the repository's host is down"
    );
    assert!(
        wait_for(Duration::from_secs(15), || zombie_children(daemon)
            .is_empty()),
        "the daemon keeps dead children: {:?}",
        zombie_children(daemon)
    );

    // The host is back: a new open reads again, byte-exact, and the status says ok.
    sshd.restart();
    assert!(
        wait_for(Duration::from_secs(30), || read_fresh(&file, 0, 4096)
            .is_ok()),
        "backups/ does not recover after sshd is back"
    );
    assert!(
        read(&file) == want,
        "backups/{id}/vm.img differs after recovery"
    );
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&url) && l.contains(" ok")),
        "{status}"
    );
    assert!(
        zombie_children(daemon).is_empty(),
        "{:?}",
        zombie_children(daemon)
    );
    drop(open);
    drop(m);
}
