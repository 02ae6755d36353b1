//! Persistent snapshots through a real mount: a snapshot taken with `mkdir` reads exactly
//! what it froze after kill -9 of the daemon and after a clean unmount, byte for byte,
//! while a volatile one ends with its mount; `control/status` says what the mount
//! recovered; a released snapshot gives its pre-images back for good; the snarfs a backup
//! took off a persistent snapshot's hands are read back from the repository after kill -9.

mod mounted;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use mounted::{read, snarf, snarf_ok, Mounted};

const SNARF: usize = 64 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Overwrites every other snarf of `path` from the second on with `seed`, and syncs.
fn overwrite_odd_snarfs(path: &std::path::Path, snarfs: usize, seed: u8) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    for i in (1..snarfs).step_by(2) {
        f.write_all_at(&pattern(seed, SNARF), (i * SNARF) as u64)
            .unwrap();
    }
    f.sync_data().unwrap();
}

/// What `control/status`'s RECOVERY section says for `what`, as (count, detail).
fn recovery(m: &Mounted, what: &str) -> Option<String> {
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    let section = status.split("\n\n").find(|s| s.starts_with("RECOVERY"))?;
    section
        .lines()
        .find(|l| l.split_whitespace().next() == Some(what))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
}

/// Kills the daemon with SIGKILL (only the one this test started), clears the stale mount
/// and mounts again.
fn kill_and_remount(m: &mut Mounted) {
    let pid = m.daemon_pid.take().expect("a daemon");
    // SAFETY: the pid of the daemon this test started, still running.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    m.daemon_pid = Some(pid);
    assert!(m.wait_daemon_gone(Duration::from_secs(10)));
    m.daemon_pid = None;
    let out = snarf(&["umount", m.mnt.to_str().unwrap()]);
    assert!(!out.status.success(), "the close was not clean: {out:?}");
    m.mount(&[]);
}

#[test]
fn a_persistent_snapshot_reads_what_it_froze_after_kill_9_and_after_umount() {
    let Some(mut m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let a = pattern(1, 64 * SNARF);
    let b = pattern(2, 8 * SNARF + 1000);
    fs::write(m.path("live/a.img"), &a).unwrap();
    fs::write(m.path("live/b.img"), &b).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    fs::write(m.path("control/snapshot"), b"create tmp volatile\n").unwrap();
    let table = fs::read_to_string(m.path("control/snapshot")).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("s ") && l.contains("persistent")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tmp ") && l.contains("volatile")),
        "{table}"
    );

    // Writes after the snapshot, synced: half of a rewritten, b shrunk.
    overwrite_odd_snarfs(&m.path("live/a.img"), 64, 3);
    OpenOptions::new()
        .write(true)
        .open(m.path("live/b.img"))
        .unwrap()
        .set_len(3 * SNARF as u64)
        .unwrap();
    let mut a_now = a.clone();
    for i in (1..64).step_by(2) {
        a_now[i * SNARF..(i + 1) * SNARF].copy_from_slice(&pattern(3, SNARF));
    }
    assert!(read(&m.path("snapshots/s/a.img")) == a);
    assert!(read(&m.path("snapshots/s/b.img")) == b);

    kill_and_remount(&mut m);
    assert!(
        read(&m.path("snapshots/s/a.img")) == a,
        "the snapshot changed across kill -9"
    );
    assert!(read(&m.path("snapshots/s/b.img")) == b);
    assert!(
        !m.path("snapshots/tmp").exists(),
        "a volatile snapshot outlived its mount"
    );
    assert!(read(&m.path("live/a.img")) == a_now, "synced writes kept");
    assert_eq!(recovery(&m, "unclean-stop").as_deref(), Some("yes"));
    assert_eq!(recovery(&m, "snapshots").as_deref(), Some("1"));
    assert_eq!(recovery(&m, "preimages").as_deref(), Some("32"));

    // Written again after the crash (its stamps were lost): the snapshot still reads what
    // it froze, the snarfs captured before are not captured again.
    overwrite_odd_snarfs(&m.path("live/a.img"), 64, 4);
    fs::write(m.path("live/a.img"), pattern(5, 64 * SNARF)).unwrap();
    assert!(read(&m.path("snapshots/s/a.img")) == a);

    // A clean unmount and mount: still there, and the close was clean.
    m.unmount();
    m.mount(&[]);
    assert!(
        read(&m.path("snapshots/s/a.img")) == a,
        "the snapshot changed across umount"
    );
    assert!(read(&m.path("snapshots/s/b.img")) == b);
    assert_eq!(recovery(&m, "unclean-stop").as_deref(), Some("no"));
    assert_eq!(recovery(&m, "preimages").as_deref(), Some("64"));

    // Released: gone for good, with its pre-images.
    fs::remove_dir(m.path("snapshots/s")).unwrap();
    m.unmount();
    let cow = m.store.join("cow/preimages");
    assert_eq!(
        fs::metadata(&cow).unwrap().len(),
        8192,
        "the pre-image store holds nothing but its headers"
    );
    m.mount(&[]);
    assert_eq!(fs::read_dir(m.path("snapshots")).unwrap().count(), 0);
    assert_eq!(recovery(&m, "snapshots"), None, "nothing to recover");
    assert!(read(&m.path("live/b.img")) == b[..3 * SNARF]);
}

#[test]
fn snarfs_a_backup_freed_are_read_from_the_repository_after_kill_9() {
    let Some(mut m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap(), "--pack-size", "1M"]);
    let a = pattern(6, 32 * SNARF);
    fs::write(m.path("live/a.img"), &a).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    overwrite_odd_snarfs(&m.path("live/a.img"), 32, 7);
    snarf_ok(&[
        "backup",
        m.mnt.to_str().unwrap(),
        "s",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    // The backup took every pre-image off the mount's hands.
    let table = fs::read_to_string(m.path("control/snapshot")).unwrap();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("s "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "0", "pre-images held after the backup: {table}");

    kill_and_remount(&mut m);
    assert!(
        read(&m.path("snapshots/s/a.img")) == a,
        "the snarfs the backup stored are not read back from the repository after kill -9"
    );
    assert_eq!(recovery(&m, "snapshots").as_deref(), Some("1"));
    // Released: its pins in the repository go with it.
    fs::remove_dir(m.path("snapshots/s")).unwrap();
    m.unmount();
    let pins = fs::read_dir(repo.join("pins"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(pins, 0, "a released snapshot's pins are held");
}

/// The id and the one volume line of `snarf backup`'s output.
fn backed_up(out: &str) -> (String, String) {
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out}"))
        .to_string();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("volume "))
        .unwrap_or_else(|| panic!("no volume line in {out}"))
        .to_string();
    (id, line)
}

#[test]
fn change_tracking_survives_kill_9_through_the_write_intent_bitmap() {
    // 4 KiB snarfs: regions of 1024 snarfs are 4 MiB; the volume has four.
    let Some(mut m) = Mounted::new(&["--snarf-size", "4K"], &[]) else {
        return;
    };
    const REGION: usize = 4 << 20;
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap(), "--pack-size", "1M"]);
    let vol = m.path("live/v.img");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&vol)
        .unwrap();
    f.set_len(4 * REGION as u64).unwrap();
    for r in 0..4 {
        f.write_all_at(&pattern(r as u8, 8192), (r * REGION + 4096) as u64)
            .unwrap();
    }
    f.sync_data().unwrap();
    drop(f);
    let backup = |m: &Mounted, snap: &str| -> (String, String) {
        fs::create_dir(m.path(&format!("snapshots/{snap}"))).unwrap();
        let out = snarf_ok(&[
            "backup",
            m.mnt.to_str().unwrap(),
            snap,
            "--repo",
            repo.to_str().unwrap(),
        ]);
        fs::remove_dir(m.path(&format!("snapshots/{snap}"))).unwrap();
        backed_up(&out)
    };
    backup(&m, "base");
    for round in 0..3usize {
        // Writes into one region (synced, and one left to the page cache), then kill -9.
        let hot = (round * 3 + 1) % 4;
        let f = OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(
            &pattern(10 + round as u8, 3 * 4096),
            (hot * REGION + 777 * 4096) as u64,
        )
        .unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"not synced", (hot * REGION + 10) as u64)
            .unwrap();
        drop(f);
        kill_and_remount(&mut m);
        assert_eq!(
            recovery(&m, "dirty-regions").as_deref(),
            Some("1"),
            "round {round}: {}",
            fs::read_to_string(m.path("control/status")).unwrap()
        );
        let (id, line) = backup(&m, &format!("after-{round}"));
        // "incremental from ID: read N of M snarfs, ...": one region's snarfs at most.
        let n_read: u64 = line
            .split("read ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: {line}"));
        assert!(
            line.contains("incremental from") && n_read <= 1024,
            "round {round}: the incremental after kill -9 read more than the one region marked: {line}"
        );
        let dest = m.dir.path().join(format!("restored-{round}"));
        snarf_ok(&[
            "restore",
            repo.to_str().unwrap(),
            &id,
            dest.to_str().unwrap(),
        ]);
        assert!(
            read(&dest.join("v.img")) == read(&vol),
            "round {round}: the incremental after kill -9 does not restore what the volume holds"
        );
    }
}
