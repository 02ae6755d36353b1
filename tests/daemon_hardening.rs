//! The mount daemon against hostile names, absurd numbers and unlucky shutdowns: a snapshot
//! called `--help` is backed up like any other; numbers out of range are refused by name
//! before anything starts; and `snarf umount` reports whether the daemon really closed the
//! store. (A panic on a FUSE thread is `mount_panic.rs`, built with `fault-injection`.)

mod mounted;

use std::fs;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use mounted::{read, snarf, snarf_ok, Mounted};

/// Writes one command to a control file and reads the answer on the same descriptor.
fn control(m: &Mounted, file: &str, command: &str) -> std::io::Result<String> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path(file))?;
    f.write_all(command.as_bytes())?;
    f.rewind()?;
    let mut answer = String::new();
    f.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Waits until job `job` has ended in control/jobs; returns its row.
fn wait_job(m: &Mounted, job: &str) -> String {
    let start = Instant::now();
    loop {
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(job))
            .unwrap_or_else(|| panic!("job {job} not listed: {table}"))
            .to_string();
        if [" done ", " failed ", " cancelled "]
            .iter()
            .any(|s| row.contains(s))
        {
            return row;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job never ended: {table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_snapshot_and_volume_named_like_options_are_backed_up() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("live/-v.img"), &data).unwrap();
    fs::create_dir(m.path("snapshots/--help")).unwrap();
    let answer = control(
        &m,
        "control/jobs",
        &format!("backup --help volumes=-v.img repo={}\n", repo.display()),
    )
    .unwrap();
    let job = answer.trim().to_string();
    let row = wait_job(&m, &job);
    assert!(row.contains(" done "), "{row}");
    // A backup exists, of that snapshot, and restores the volume byte for byte.
    let listed = snarf_ok(&["backups", "--json", repo.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let backups = list.as_array().expect("a JSON array");
    assert_eq!(backups.len(), 1, "{listed}");
    let id = backups[0]["id"].as_str().unwrap().to_string();
    assert!(listed.contains("--help"), "{listed}");
    let out = m.dir.path().join("out");
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        &id,
        out.to_str().unwrap(),
    ]);
    assert!(read(&out.join("-v.img")) == data, "the restore differs");
}

#[test]
fn out_of_range_numbers_are_refused_by_name_before_anything_mounts() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    m.unmount();
    let (store, mnt) = (m.store.to_str().unwrap(), m.mnt.to_str().unwrap());
    for (args, named) in [
        (vec!["--break-after", "inf"], "--break-after"),
        (vec!["--break-after=1e300"], "--break-after"),
        (vec!["--break-after=-3"], "--break-after"),
        (vec!["--threads", "0"], "--threads"),
        (vec!["--preimage-mem", "2P"], "--preimage-mem"),
    ] {
        let mut argv = vec!["mount"];
        argv.extend(args.iter().copied());
        argv.extend(["--", store, mnt]);
        let out = snarf(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{argv:?} was accepted");
        assert!(
            err.contains(named) && (err.contains("range") || err.contains("not in")),
            "{argv:?}: {err}"
        );
        assert!(!m.is_mounted(), "{argv:?} mounted");
    }
    // The same number in snarf.toml (TOML has an inf literal) is refused by its name there.
    let settings = m.store.join("snarf.toml");
    let text = fs::read_to_string(&settings).unwrap();
    fs::write(
        &settings,
        text.replace("break_after_secs = 30.0", "break_after_secs = inf"),
    )
    .unwrap();
    let out = snarf(&["mount", store, mnt]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a store with break_after_secs = inf mounted"
    );
    assert!(
        err.contains("break_after_secs") && err.contains("snarf.toml"),
        "{err}"
    );
    assert!(!m.is_mounted());
}

#[test]
fn umount_after_the_daemon_was_killed_says_the_store_was_not_closed() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    fs::write(m.path("live/v.img"), vec![1u8; 100_000]).unwrap();
    let pid = m.daemon_pid.unwrap();
    // SAFETY: kill with the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert!(m.wait_daemon_gone(Duration::from_secs(10)));
    m.daemon_pid = None;
    let out = snarf(&["umount", m.mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "umount said: {out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("flushed and closed"),
        "{out:?}"
    );
    assert!(
        err.contains(&format!(
            "daemon (pid {pid}) ended without closing the store"
        )) && err.contains("next backup"),
        "{err}"
    );
    assert!(!m.is_mounted());
}

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: std::path::PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &std::path::Path) {
    let mut f = fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 16];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial pages too.
    while let Ok(n) = f.write(&block[..512]) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn umount_reports_a_close_that_failed_on_a_full_disk() {
    if !mounted::fuse_available() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let tfs = Tmpfs::mount(base.path().join("t"), "32m");
    let dir = tempfile::tempdir().unwrap();
    let store = tfs.0.join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    snarf_ok(&["init", store.to_str().unwrap()]);
    let mut m = Mounted {
        dir,
        store,
        mnt,
        daemon_pid: None,
    };
    m.mount(&[]);
    fs::write(m.path("live/v.img"), vec![7u8; 1 << 20]).unwrap();
    let filler = tfs.0.join("filler");
    fill(&filler);
    let out = snarf(&["umount", m.mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "umount said: {out:?}");
    assert!(
        err.contains("could not close the store") && err.contains("No space left"),
        "{err}"
    );
    assert!(!m.is_mounted());
    assert!(m.wait_daemon_gone(Duration::from_secs(20)));
    m.daemon_pid = None;
    // With room again the store mounts, and the volume is intact.
    fs::remove_file(&filler).unwrap();
    m.mount(&[]);
    assert!(read(&m.path("live/v.img")) == vec![7u8; 1 << 20]);
    m.unmount();
}
