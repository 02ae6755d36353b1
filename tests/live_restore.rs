//! Live restore through a real mount (`snarf restore … --live`): a 1 GiB backup becomes a
//! volume whose first byte reads within a second, that `cmp`s equal to the backup while
//! the background copy runs, keeps random writes made meanwhile across kill -9 of the
//! daemon without fetching again what was synced, fails reads of missing snarfs with EIO
//! while the repository is away (writes go on) and recovers when it is back. A real
//! client: ext4 in a live-restored volume, loop-mounted, `e2fsck -fn` clean and its files
//! read back before the copy ends. A damaged bitmap page blocks only its volume.
//!
//! The copy is slowed with `SNARF_TEST_RESTORE_PAUSE_MS` (a `fault-injection` build's
//! pause after each batch of 256 snarfs), so each step happens while it runs.

mod mounted;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mounted::{have_tool, read, snarf, snarf_bin, snarf_ok, Mounted};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SNARF: usize = 64 << 10;
const PAUSE_ENV: &str = "SNARF_TEST_RESTORE_PAUSE_MS";
const DOWN_ENV: &str = "SNARF_TEST_REPO_DOWN_FILE";

/// A volume image of `len` bytes: mostly compressible, distinct in every snarf, a zero
/// snarf in every 16 and a random one in every 32.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (k, s) in v.chunks_mut(SNARF).enumerate() {
        match k % 32 {
            5 | 21 => {}
            7 => rng.fill(s),
            _ => {
                let tag = (k as u64 ^ seed).to_le_bytes();
                for (i, b) in s.iter_mut().enumerate() {
                    *b = tag[i % 8] ^ (i / 512) as u8;
                }
            }
        }
    }
    v
}

/// (Re)mounts `m` with the copy paused `pause_ms` after each batch.
fn mount_paused(m: &mut Mounted, pause_ms: u64) {
    let out = Command::new(snarf_bin())
        .args(["mount", m.store.to_str().unwrap(), m.mnt.to_str().unwrap()])
        .env(PAUSE_ENV, pause_ms.to_string())
        .env(DOWN_ENV, m.dir.path().join("repo-down"))
        .output()
        .expect("running snarf mount");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mount failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.daemon_pid = text
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok());
    assert!(m.daemon_pid.is_some(), "no daemon pid in {text:?}");
}

/// Kills the daemon this test started with SIGKILL and clears the stale mount.
fn kill_9(m: &mut Mounted) {
    let pid = m.daemon_pid.expect("a daemon");
    // SAFETY: the pid of the daemon this test started, still running.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(m.wait_daemon_gone(Duration::from_secs(10)));
    m.daemon_pid = None;
    let out = snarf(&["umount", m.mnt.to_str().unwrap()]);
    assert!(!out.status.success(), "the close was not clean: {out:?}");
}

/// Backs up `volume` of the mount into `repo` through a snapshot; returns the backup id.
fn backup(m: &Mounted, repo: &Path) -> String {
    fs::create_dir(m.path("snapshots/b")).unwrap();
    let out = snarf_ok(&[
        "backup",
        m.mnt.to_str().unwrap(),
        "b",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    fs::remove_dir(m.path("snapshots/b")).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out}"))
        .to_string()
}

/// Starts the live restore of `volume` of backup `id` as `as_name`; returns how long the
/// command took.
fn restore_live(m: &Mounted, repo: &Path, id: &str, volume: &str, as_name: &str) -> Duration {
    let t = Instant::now();
    let out = snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        id,
        "--volume",
        volume,
        "--live",
        m.mnt.to_str().unwrap(),
        "--as",
        as_name,
    ]);
    let took = t.elapsed();
    assert!(
        out.contains(&format!("live/{as_name} is served now")),
        "{out}"
    );
    took
}

/// The LIVE-RESTORE row of `control/status` for `volume`: its columns after the name
/// (backup, local, total, fetched, state, reason…), or `None`.
fn live_row(m: &Mounted, volume: &str) -> Option<Vec<String>> {
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    let section = status
        .split("\n\n")
        .find(|s| s.trim_start().starts_with("LIVE-RESTORE"))?;
    section.lines().skip(1).find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(volume)).then(|| w.map(str::to_string).collect())
    })
}

/// The state column of the LIVE-RESTORE row, wherever the backup column is empty.
fn live_state(row: &[String]) -> &str {
    row.iter()
        .map(String::as_str)
        .find(|w| ["ok", "unreachable", "done", "damaged"].contains(w))
        .unwrap_or("")
}

/// The `control/jobs` line of the live restore.
fn job_line(m: &Mounted) -> Option<String> {
    fs::read_to_string(m.path("control/jobs"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("restore-"))
        .map(str::to_string)
}

/// Bits set in the bitmap file of the one live restore of the store (what is durable).
fn bits_in_bitmap(store: &Path) -> (PathBuf, u64) {
    let dir = store.join("state/restore");
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let data = fs::read(&files[0]).unwrap();
    let bits = data[4096..]
        .chunks(4096)
        .flat_map(|p| p[64..].iter())
        .map(|b| b.count_ones() as u64)
        .sum();
    (files[0].clone(), bits)
}

fn bitmaps_left(store: &Path) -> usize {
    fs::read_dir(store.join("state/restore")).unwrap().count()
}

/// `cmp` of two files (the real tool); panics with its output unless they are equal.
fn cmp(a: &Path, b: &Path) {
    let out = Command::new("cmp")
        .arg("--")
        .arg(a)
        .arg(b)
        .output()
        .expect("running cmp");
    assert!(
        out.status.success(),
        "cmp {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_1_gib_live_restore_reads_at_once_keeps_writes_across_kill_9_and_rides_out_a_lost_repository() {
    if !have_tool("cmp") {
        return;
    }
    let Some(mut m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let started = Instant::now();
    const LEN: usize = 1 << 30;
    let count = (LEN / SNARF) as u64;
    let repo = m.dir.path().join("repo");
    // Small packs: more of them than the repository keeps open, so moving it away is felt.
    snarf_ok(&["repo", "init", repo.to_str().unwrap(), "--pack-size", "1M"]);
    let mut oracle = image(LEN, 17);
    fs::write(m.path("live/vm.img"), &oracle).unwrap();
    let id = backup(&m, &repo);
    fs::remove_file(m.path("live/vm.img")).unwrap();
    let t = Instant::now();
    let plain = m.dir.path().join("plain");
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        &id,
        plain.to_str().unwrap(),
        "--volume",
        "vm.img",
    ]);
    eprintln!(
        "setup {:?}; plain restore of 1 GiB {:?}",
        started.elapsed(),
        t.elapsed()
    );
    assert!(
        read(&plain.join("vm.img")) == oracle,
        "the plain restore differs"
    );
    m.unmount();
    // 64 batches at 400 ms: the copy alone would take 25 s or more.
    mount_paused(&mut m, 400);

    // At once: the command returns and the first byte reads within a second.
    let took = restore_live(&m, &repo, &id, "vm.img", "vm2.img");
    let vol = m.path("live/vm2.img");
    let t = Instant::now();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol)
        .unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact_at(&mut first, 0).unwrap();
    let first_byte = t.elapsed();
    eprintln!("restore --live returned in {took:?}; first 4 KiB read {first_byte:?} later");
    assert!(first_byte < Duration::from_secs(1), "{first_byte:?}");
    assert!(first[..] == oracle[..4096]);
    assert_eq!(f.metadata().unwrap().len(), LEN as u64);

    // The copy is a job with its progress.
    let line = job_line(&m).expect("a restore job in control/jobs");
    assert!(line.contains("running") && line.contains(&id), "{line}");
    assert!(line.contains('%'), "no progress: {line}");

    // Random writes while it runs, partial and whole-snarf, then synced.
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut touched = std::collections::BTreeSet::new();
    for i in 0..300 {
        let (at, len) = if i % 10 == 0 {
            (
                rng.random_range(0..count) as usize * SNARF,
                SNARF * rng.random_range(1..3),
            )
        } else {
            (rng.random_range(0..LEN), rng.random_range(1..200_000))
        };
        let len = len.min(LEN - at);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        f.write_all_at(&data, at as u64).unwrap();
        oracle[at..at + len].copy_from_slice(&data);
        touched.extend((at / SNARF) as u64..=((at + len - 1) / SNARF) as u64);
    }
    f.sync_all().unwrap();
    drop(f);
    let row = live_row(&m, "vm2.img").expect("a LIVE-RESTORE row");
    assert_eq!(live_state(&row), "ok", "{row:?}");
    assert!(
        row[1].parse::<u64>().unwrap() < LEN as u64,
        "already done: {row:?}"
    );

    // kill -9 mid-restore: what the bitmap holds is what was synced.
    kill_9(&mut m);
    let (bitmap, synced) = bits_in_bitmap(&m.store);
    assert!(synced < count, "the copy finished before the kill");
    mount_paused(&mut m, 400);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for _ in 0..50 {
        let at = rng.random_range(0..LEN - 4096);
        let mut got = vec![0u8; 4096];
        f.read_exact_at(&mut got, at as u64).unwrap();
        assert!(
            got[..] == oracle[at..at + 4096],
            "after kill -9, bytes at {at} differ"
        );
    }

    // The repository away: reads of missing snarfs fail with EIO and status says why;
    // writes still work.
    // Near the end (the copy goes up from 0), never written, and of random bytes: a pack
    // must be read for it (no cached leaf or frame answers it).
    let missing: Vec<u64> = (count - 256..count)
        .filter(|k| !touched.contains(k) && k % 32 == 7)
        .collect();
    let (gone, written) = (missing[0], missing[1]);
    // Moved away, and every fetch failing (a local repository keeps answering through the
    // pack files it holds open, so the daemon's test switch takes it away for sure).
    let away = m.dir.path().join("repo.away");
    fs::rename(&repo, &away).unwrap();
    let down = m.dir.path().join("repo-down");
    fs::write(&down, b"").unwrap();
    let mut one = [0u8; 1];
    let err = f.read_exact_at(&mut one, gone * SNARF as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let row = live_row(&m, "vm2.img").unwrap();
    assert_eq!(live_state(&row), "unreachable", "{row:?}");
    assert!(
        row.join(" ").contains(repo.to_str().unwrap()),
        "no reason: {row:?}"
    );
    let whole = vec![0x77u8; SNARF];
    f.write_all_at(&whole, written * SNARF as u64).unwrap();
    oracle[written as usize * SNARF..(written as usize + 1) * SNARF].copy_from_slice(&whole);
    f.write_all_at(b"while away", 100).unwrap();
    oracle[100..110].copy_from_slice(b"while away");
    f.sync_all().unwrap();
    // Back: the next read fetches again, the copy resumes by itself.
    fs::rename(&away, &repo).unwrap();
    fs::remove_file(&down).unwrap();
    f.read_exact_at(&mut one, gone * SNARF as u64).unwrap();
    assert_eq!(one[0], oracle[gone as usize * SNARF]);
    wait_for(
        "the LIVE-RESTORE row to say ok",
        Duration::from_secs(10),
        || live_row(&m, "vm2.img").is_some_and(|r| live_state(&r) == "ok"),
    );
    drop(f);

    // cmp while the copy runs: the backup plus every write.
    let expected = m.dir.path().join("expected");
    fs::write(&expected, &oracle).unwrap();
    assert_eq!(
        bitmaps_left(&m.store),
        1,
        "the copy ended too soon to overlap"
    );
    let t = Instant::now();
    cmp(&expected, &vol);
    eprintln!("cmp of 1 GiB during the live restore: {:?}", t.elapsed());

    // The end: the bitmap goes, nothing synced was fetched again.
    wait_for("the copy to end", Duration::from_secs(60), || {
        bitmaps_left(&m.store) == 0
    });
    assert!(!bitmap.exists());
    let row = live_row(&m, "vm2.img").unwrap();
    assert_eq!(live_state(&row), "done", "{row:?}");
    let fetched: u64 = row[3].parse().unwrap();
    assert_eq!(
        fetched,
        count - synced - 1,
        "snarfs fetched after the kill: all but the {synced} synced and the one written whole"
    );
    let line = job_line(&m).unwrap();
    assert!(line.contains("done") && line.contains("100%"), "{line}");
    cmp(&expected, &vol);

    // An ordinary volume from now on, across a clean remount.
    m.unmount();
    m.mount(&[]);
    assert!(live_row(&m, "vm2.img").is_none());
    cmp(&expected, &vol);
    eprintln!("total {:?}", started.elapsed());
}

/// Loop devices and mounts this test made, undone on every path.
#[derive(Default)]
struct Guard {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Guard {
    fn losetup(&mut self, file: &Path, read_only: bool) -> String {
        let mut c = Command::new("losetup");
        if read_only {
            c.arg("-r");
        }
        let out = c
            .args(["--find", "--show", "--"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.loops.push(dev.clone());
        dev
    }

    fn mount(&mut self, dev: &str, at: &Path, opts: &str) {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-o", opts, "--", dev])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount {dev}: {out:?}");
        self.mounts.push(at.to_path_buf());
    }

    fn undo(&mut self) {
        for at in self.mounts.drain(..).rev() {
            let ok = Command::new("umount").arg("--").arg(&at).status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg("--").arg(&at).status();
            }
        }
        for dev in self.loops.drain(..).rev() {
            // `-d` takes the device as its argument (no `--`): a /dev/loopN losetup named.
            let ok = Command::new("losetup").args(["-d", &dev]).status();
            if !ok.is_ok_and(|s| s.success()) {
                eprintln!("could not detach {dev}");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.undo();
    }
}

#[test]
fn ext4_in_a_live_restored_volume_checks_clean_and_reads_back_before_the_copy_ends() {
    if !["mkfs.ext4", "e2fsck", "losetup"]
        .iter()
        .all(|t| have_tool(t))
    {
        return;
    }
    let Some(mut m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let img = m.path("live/fs.img");
    fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "--"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            let len = rng.random_range(1..3 << 20);
            let data = if i % 2 == 0 {
                (0..len).map(|_| rng.random()).collect()
            } else {
                image(len, i)
            };
            (format!("dir{}/file {i}", i % 3), data)
        })
        .collect();
    let mut g = Guard::default();
    let started = Instant::now();
    {
        let dev = g.losetup(&img, false);
        let at = m.dir.path().join("ext4-rw");
        g.mount(&dev, &at, "rw");
        for (name, data) in &files {
            let p = at.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
        }
        g.undo();
    }
    let id = backup(&m, &repo);
    eprintln!("ext4 made, filled and backed up in {:?}", started.elapsed());
    m.unmount();
    // 16 batches at 4 s: the copy runs for about a minute, far past the checks.
    mount_paused(&mut m, 4000);
    restore_live(&m, &repo, &id, "fs.img", "fs2.img");
    let copy = m.path("live/fs2.img");
    let dev = g.losetup(&copy, true);
    let out = Command::new("e2fsck")
        .args(["-fn", "--", &dev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn of the live-restored volume: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let at = m.dir.path().join("ext4-ro");
    g.mount(&dev, &at, "ro,noload");
    for (name, data) in &files {
        assert!(read(&at.join(name)) == *data, "{name} differs");
    }
    let row = live_row(&m, "fs2.img").unwrap();
    assert_eq!(
        live_state(&row),
        "ok",
        "the copy ended before the checks: {row:?}"
    );
    assert!(
        row[1].parse::<u64>().unwrap() < 256 << 20,
        "the copy ended before the checks: {row:?}"
    );
    g.undo();
    eprintln!("ext4 test body took {:?}", started.elapsed());
    // The clean unmount stops the copy; it resumes at the next mount.
    m.unmount();
    assert_eq!(bitmaps_left(&m.store), 1);
}

#[test]
fn a_damaged_bitmap_page_blocks_only_its_volume_on_the_mount() {
    let Some(mut m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let data = image(8 << 20, 3);
    fs::write(m.path("live/vm.img"), &data).unwrap();
    let id = backup(&m, &repo);
    m.unmount();
    mount_paused(&mut m, 10_000);
    restore_live(&m, &repo, &id, "vm.img", "vm2.img");
    m.unmount();
    let (bitmap, _) = bits_in_bitmap(&m.store);
    let mut bytes = fs::read(&bitmap).unwrap();
    bytes[4096 + 100] ^= 1;
    fs::write(&bitmap, &bytes).unwrap();

    m.mount(&[]);
    assert!(
        read(&m.path("live/vm.img")) == data,
        "the other volume is served"
    );
    fs::write(m.path("live/new.img"), b"writable").unwrap();
    let err = fs::read(m.path("live/vm2.img")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = OpenOptions::new()
        .write(true)
        .open(m.path("live/vm2.img"))
        .and_then(|f| f.write_all_at(&[0u8; SNARF], 0).and_then(|()| f.sync_all()))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let row = live_row(&m, "vm2.img").expect("a LIVE-RESTORE row for the damaged volume");
    assert_eq!(live_state(&row), "damaged", "{row:?}");
    assert!(
        row.join(" ").contains(bitmap.to_str().unwrap()),
        "the row does not name the file: {row:?}"
    );
    // Snapshots leave it out; the others back up.
    fs::create_dir(m.path("snapshots/s")).unwrap();
    assert!(!m.path("snapshots/s/vm2.img").exists());
    assert!(read(&m.path("snapshots/s/vm.img")) == data);
    fs::remove_dir(m.path("snapshots/s")).unwrap();
    // Deleting it is the way out; its bitmap goes with it.
    fs::remove_file(m.path("live/vm2.img")).unwrap();
    m.unmount();
    assert_eq!(bitmaps_left(&m.store), 0);
}
