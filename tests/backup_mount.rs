//! `snarf backup MOUNTPOINT SNAPSHOT` against a real mount while a separate writer process
//! rewrites the volume: the restore equals the snapshot; reads of the snapshot after the
//! backup freed its pre-images still give the snapshot (from the repository); a job killed
//! with SIGKILL mid-transfer leaves the mount serving, the snapshot intact and no backup; a
//! repository pulled away mid-job fails the job by name and loses nothing; pre-image memory
//! stays within its budget while a backup runs under write load.

mod mounted;

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mounted::{read, snarf, snarf_ok, Mounted};

const BLOCK: u64 = 40 << 10;

/// The writer process's role: with SNARF_TEST_BACKUP_WRITER set, this "test" rewrites
/// random blocks of that file until killed; otherwise it does nothing.
#[test]
fn writer_process_role() {
    let Ok(path) = std::env::var("SNARF_TEST_BACKUP_WRITER") else {
        return;
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("writer: open");
    let blocks = f.metadata().expect("writer: stat").len() / BLOCK;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; BLOCK as usize];
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.fill(x as u8);
        f.write_all_at(&buf, (x % blocks) * BLOCK)
            .expect("writer: write");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A child process this test started, killed by its pid when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_writer(volume: &Path) -> Started {
    Started(
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "writer_process_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SNARF_TEST_BACKUP_WRITER", volume)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the writer"),
    )
}

/// Random-looking but compressible-in-parts contents.
fn contents(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed | 1;
    for (i, chunk) in v.chunks_mut(4096).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match i % 4 {
            0 => {} // zeros
            1 => chunk.fill(x as u8),
            _ => {
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
        }
    }
    v
}

/// Reads a snapshot file past the kernel's page cache, so the daemon answers every byte.
fn read_uncached(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).expect("open snapshot file");
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    read(path)
}

/// The running-jobs count in control/status.
fn running_jobs(m: &Mounted) -> u64 {
    let status = fs::read_to_string(m.path("control/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("running-jobs"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no running-jobs in {status}"))
}

fn backup_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_string()
}

fn restore(repo: &Path, id: &str, dest: &Path, volume: &str) -> Vec<u8> {
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        id,
        dest.to_str().unwrap(),
    ]);
    read(&dest.join(volume))
}

#[test]
fn backup_of_a_mounted_snapshot_under_a_writer_restores_the_snapshot() {
    backup_under_a_writer("2");
}

#[test]
fn a_format_1_backup_of_a_mounted_snapshot_under_a_writer_restores_the_snapshot() {
    backup_under_a_writer("1");
}

/// A full and an incremental backup of snapshots of a volume a writer keeps rewriting, into
/// a repository of `format`, within a 4 MiB pre-image budget.
fn backup_under_a_writer(format: &str) {
    let Some(m) = Mounted::new(&[], &["--preimage-mem", "4M"]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--pack-size",
        "1M",
        "--format",
        format,
    ]);
    let vol = m.path("live/vm.img");
    fs::write(&vol, contents(1, 24 << 20)).unwrap();
    let _writer = start_writer(&vol);
    std::thread::sleep(Duration::from_millis(200));
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    let snap = m.path("snapshots/s1/vm.img");
    // The snapshot stays frozen while the writer goes on: this copy is what it holds.
    let expected = read(&snap);

    // Run the backup while watching the pre-image memory in control/status.json: the
    // writer keeps capturing, and the budget (4 MiB) holds throughout.
    let job = Command::new(env!("CARGO_BIN_EXE_snarf"))
        .args([
            "backup",
            m.mnt.to_str().unwrap(),
            "s1",
            "--repo",
            repo.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the backup");
    let (mut peak, mut budget, mut samples) = (0u64, 0u64, 0u32);
    let watch = |m: &Mounted| -> (u64, u64) {
        let json = fs::read_to_string(m.path("control/status.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mem = &v["preimage_memory"];
        (
            mem["used"].as_u64().unwrap(),
            mem["budget"].as_u64().unwrap(),
        )
    };
    let out = {
        let mut job = Started(job);
        while job.0.try_wait().unwrap().is_none() {
            let (used, b) = watch(&m);
            peak = peak.max(used);
            budget = b;
            samples += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(job.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(job.0.wait().unwrap().success(), "the backup failed: {out}");
        out
    };
    assert_eq!(budget, 4 << 20);
    assert!(
        samples > 0 && peak > 0,
        "no pre-image was ever held ({samples} samples)"
    );
    assert!(
        peak <= budget,
        "pre-image memory reached {peak} bytes, over the {budget}-byte budget"
    );
    let id = backup_id(&out);
    assert!(out.contains("full (first backup"), "{out}");
    assert!(
        restore(&repo, &id, &m.dir.path().join("out1"), "vm.img") == expected,
        "restore differs from the snapshot"
    );
    // Its pre-images are gone; reads come back from the repository.
    assert!(
        read_uncached(&snap) == expected,
        "snapshot reads differ after the backup"
    );
    assert_eq!(running_jobs(&m), 0);

    // An incremental backup of a later snapshot reads only what the writer changed.
    fs::create_dir(m.path("snapshots/s2")).unwrap();
    let expected2 = read(&m.path("snapshots/s2/vm.img"));
    // A repository path relative to the job's directory (the daemon is elsewhere).
    let out = Command::new(env!("CARGO_BIN_EXE_snarf"))
        .args(["backup", m.mnt.to_str().unwrap(), "s2", "--repo", "repo"])
        .current_dir(m.dir.path())
        .output()
        .expect("run snarf backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains(&format!("incremental from {id}")), "{out}");
    let id2 = backup_id(&out);
    assert!(restore(&repo, &id2, &m.dir.path().join("out2"), "vm.img") == expected2);
    // Releasing the snapshots removes the pins the daemon kept for them.
    fs::remove_dir(m.path("snapshots/s1")).unwrap();
    fs::remove_dir(m.path("snapshots/s2")).unwrap();
    let pins = repo.join("pins");
    let start = Instant::now();
    while fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pins left after release"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_backup_killed_mid_transfer_leaves_the_mount_serving_and_no_backup() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--pack-size",
        "256K",
        "--compression",
        "19",
    ]);
    let vol = m.path("live/big.img");
    fs::write(&vol, contents(2, 96 << 20)).unwrap();
    let _writer = start_writer(&vol);
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let snap = m.path("snapshots/s/big.img");
    let expected = read(&snap);

    let job = Started(
        Command::new(env!("CARGO_BIN_EXE_snarf"))
            .args([
                "backup",
                m.mnt.to_str().unwrap(),
                "s",
                "--repo",
                repo.to_str().unwrap(),
                "--threads",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the backup"),
    );
    // Kill it once it has sealed packs (so some snarfs were acknowledged and freed).
    wait_sealed_packs(&repo, 2);
    // SAFETY: signalling the child this test started, by its pid.
    unsafe { libc::kill(job.0.id() as i32, libc::SIGKILL) };
    drop(job);

    assert!(
        m.is_mounted() && m.daemon_alive(),
        "the mount went down with the job"
    );
    // The daemon notices the job is gone and drops it.
    let start = Instant::now();
    while running_jobs(&m) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon still lists the dead job"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        read_uncached(&snap) == expected,
        "the snapshot changed after the job died"
    );
    let out = snarf_ok(&["backups", repo.to_str().unwrap()]);
    assert_eq!(
        out.lines().count(),
        1,
        "a killed job left a visible backup: {out}"
    );
    // The live volume is still served.
    fs::OpenOptions::new()
        .write(true)
        .open(&vol)
        .unwrap()
        .write_all_at(b"still here", 0)
        .unwrap();

    // The next job completes; the repository checks clean.
    let out = snarf_ok(&[
        "backup",
        m.mnt.to_str().unwrap(),
        "s",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    let id = backup_id(&out);
    assert!(restore(&repo, &id, &m.dir.path().join("out"), "big.img") == expected);
    let check = snarf(&["check", repo.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Sealed packs in `repo`: format 1's `packs/ID.pack`, format 2's `packs/XX/ID` (an upload
/// in progress has a hidden temporary name until it is sealed).
fn sealed_packs(repo: &Path) -> usize {
    let Ok(top) = fs::read_dir(repo.join("packs")) else {
        return 0;
    };
    let mut n = 0;
    for e in top.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pack") {
            n += 1;
        } else if e.path().is_dir() {
            n += fs::read_dir(e.path())
                .map(|d| {
                    d.flatten()
                        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
                        .count()
                })
                .unwrap_or(0);
        }
    }
    n
}

/// Waits until `repo` holds at least `n` sealed packs.
fn wait_sealed_packs(repo: &Path, n: usize) {
    let start = Instant::now();
    loop {
        let sealed = sealed_packs(repo);
        if sealed >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the backup never sealed {n} packs"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_repository_that_disappears_mid_job_fails_the_job_by_name_and_loses_nothing() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    let moved = m.dir.path().join("repo.moved");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--pack-size",
        "256K",
        "--compression",
        "19",
    ]);
    let vol = m.path("live/big.img");
    fs::write(&vol, contents(3, 96 << 20)).unwrap();
    let writer = start_writer(&vol);
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let snap = m.path("snapshots/s/big.img");
    let expected = read(&snap);

    let err_path = m.dir.path().join("job.err");
    let job = Command::new(env!("CARGO_BIN_EXE_snarf"))
        .args([
            "backup",
            m.mnt.to_str().unwrap(),
            "s",
            "--repo",
            repo.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting the backup");
    let mut job = Started(job);
    // Pull the repository away once the job has stored (and freed) some snarfs: as an
    // unmounted disk or a directory moved by someone else would.
    wait_sealed_packs(&repo, 2);
    fs::rename(&repo, &moved).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = job.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job went on without its repository"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = fs::read_to_string(&err_path).unwrap();
    assert!(
        !status.success(),
        "the job succeeded without its repository"
    );
    assert!(
        err.contains(&format!("the repository {} disappeared", repo.display()))
            && err.contains("nothing was committed"),
        "the error does not say the repository went away: {err}"
    );
    drop(writer);

    // The mount is unharmed and the live volume still takes writes.
    assert!(
        m.is_mounted() && m.daemon_alive(),
        "the mount went down with the job"
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&vol)
        .unwrap()
        .write_all_at(b"still here", 0)
        .unwrap();
    // Nothing was committed into what is left behind, and once the repository is back,
    // the snapshot reads exactly as it was (its freed snarfs come from the packs).
    assert!(!repo.exists(), "the failed job recreated the repository");
    // Meanwhile the snapshot's freed snarfs cannot be read: an error, never wrong bytes.
    let f = fs::File::open(&snap).unwrap();
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    match fs::read(&snap) {
        Ok(data) => assert!(data == expected, "the snapshot read wrong bytes"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    fs::rename(&moved, &repo).unwrap();
    assert!(
        read_uncached(&snap) == expected,
        "the snapshot changed after its repository came back"
    );
    let out = snarf_ok(&["backups", repo.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 1, "a failed job left a backup: {out}");
    let out = snarf_ok(&[
        "backup",
        m.mnt.to_str().unwrap(),
        "s",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    let id = backup_id(&out);
    assert!(restore(&repo, &id, &m.dir.path().join("out"), "big.img") == expected);
    let check = snarf(&["check", repo.to_str().unwrap(), "--read-data"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Writes one command to a control file and reads the answer on the same descriptor.
fn control(m: &Mounted, file: &str, command: &str) -> std::io::Result<String> {
    use std::io::{Read, Seek, Write};
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

#[test]
fn a_backup_started_through_control_jobs_runs_as_its_own_process() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    fs::write(m.path("live/db"), contents(3, 8 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/nightly")).unwrap();
    let expected = read(&m.path("snapshots/nightly/db"));

    let e = control(
        &m,
        "control/jobs",
        &format!("backup nosuch repo={}\n", repo.display()),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    let answer = control(
        &m,
        "control/jobs",
        &format!("backup nightly repo={}\n", repo.display()),
    )
    .unwrap();
    let job = answer.trim().to_string();
    assert!(!job.is_empty(), "no job id in {answer:?}");
    let start = Instant::now();
    let row = loop {
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&job))
            .unwrap_or_else(|| panic!("job {job} not listed: {table}"))
            .to_string();
        if row.contains(" done ") || row.contains(" failed ") {
            break row;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job never ended: {table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(row.contains(" done ") && row.contains("nightly"), "{row}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.path("control/jobs.json")).unwrap()).unwrap();
    assert_eq!(json[0]["state"], "done", "{json}");
    assert_eq!(json[0]["done_bytes"], json[0]["total_bytes"], "{json}");
    // The job's report file names the backup it committed.
    let report = snarf::jobs::report::JobReport::read(&snarf::jobs::report::report_path(
        &m.store.join("run"),
        &job,
    ))
    .expect("report file");
    let id = report.backup_id.expect("backup id in the report");
    assert!(report
        .summary
        .unwrap_or_default()
        .contains("full (first backup"));
    assert!(restore(&repo, &id, &m.dir.path().join("out"), "db") == expected);
    let e = control(&m, "control/jobs", "cancel nosuchjob\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn a_backup_started_from_a_shell_is_listed_while_it_runs() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--compression",
        "19",
    ]);
    fs::write(m.path("live/v"), contents(4, 64 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let job = Started(
        Command::new(env!("CARGO_BIN_EXE_snarf"))
            .args([
                "backup",
                m.mnt.to_str().unwrap(),
                "s",
                "--repo",
                repo.to_str().unwrap(),
                "--threads",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the backup"),
    );
    let pid = job.0.id().to_string();
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(60) {
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        if table
            .lines()
            .any(|l| l.contains(&pid) && l.contains(" running "))
        {
            seen = true;
            break;
        }
        if !m.store.join("run/pids").exists() && start.elapsed() > Duration::from_secs(5) {
            break; // the job ended before it could be seen
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut job = job;
    let status = job.0.wait().expect("wait");
    assert!(status.success());
    assert!(seen, "a connected job was never listed in control/jobs");
}

#[test]
fn the_mounts_repository_is_the_default() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    m.unmount();
    m.mount(&["--repo", repo.to_str().unwrap()]);
    fs::write(m.path("live/v"), contents(5, 1 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let out = snarf_ok(&["backup", m.mnt.to_str().unwrap(), "s"]);
    let id = backup_id(&out);
    assert!(snarf_ok(&["backups", repo.to_str().unwrap()]).contains(&id));
}

#[test]
fn backup_wait_follows_the_job_and_detach_plus_cancel_stops_one() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    fs::write(m.path("live/v"), contents(9, 16 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let expected = read(&m.path("snapshots/s/v"));
    let mp = m.mnt.to_str().unwrap();
    // --wait: handed to the mount, followed through control/jobs, summary at the end.
    let out = snarf_ok(&[
        "backup",
        mp,
        "s",
        "--repo",
        repo.to_str().unwrap(),
        "--wait",
    ]);
    let id = backup_id(&out);
    assert!(restore(&repo, &id, &m.dir.path().join("w"), "v") == expected);
    let table = fs::read_to_string(m.path("control/jobs")).unwrap();
    assert!(
        table.lines().skip(1).any(|l| l.contains(" done ")),
        "{table}"
    );
    // A job handed over by a cron(8) or timer script (SNARF_PROCESS_TYPE=cron) runs as
    // type cron.
    snarf_ok(&["snapshot", "create", mp, "by-cron"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snarf"))
        .args([
            "backup",
            "--repo",
            repo.to_str().unwrap(),
            "--wait",
            "--",
            mp,
            "by-cron",
        ])
        .env("SNARF_PROCESS_TYPE", "cron")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    snarf_ok(&["snapshot", "release", mp, "by-cron"]);
    let table = fs::read_to_string(m.path("control/jobs")).unwrap();
    let types = mounted::sh(&format!(
        "awk 'NR > 1 {{ print $2, $3 }}' {}",
        m.path("control/jobs").display()
    ));
    assert!(
        types.contains("user done") && types.contains("cron done"),
        "{table}"
    );
    assert!(
        fs::read_dir(m.path("snapshots")).unwrap().count() == 1,
        "the cron snapshot was not released"
    );
    // A job that fails is reported with its reason and a failing exit status.
    let out = mounted::snarf(&[
        "backup",
        mp,
        "s",
        "--repo",
        repo.to_str().unwrap(),
        "--wait",
        "--mode",
        "incremental",
        "--volume",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{out:?}"
    );
    // --detach returns the id at once; cancel stops the job; nothing is committed.
    let before = snarf_ok(&["backups", repo.to_str().unwrap()]);
    fs::write(m.path("live/big"), contents(10, 192 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/t")).unwrap();
    let job = snarf_ok(&[
        "backup",
        mp,
        "t",
        "--repo",
        repo.to_str().unwrap(),
        "--detach",
        "--mode",
        "full",
    ])
    .trim()
    .to_string();
    assert!(!job.is_empty());
    // Refused only if the job already ended, which the loop below tells apart.
    let _ = fs::write(m.path("control/jobs"), format!("cancel {job}\n"));
    let start = Instant::now();
    loop {
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&job))
            .unwrap_or_default()
            .to_string();
        if row.contains(" cancelled ") {
            break;
        }
        if row.contains(" done ") {
            // The machine was fast enough to finish first; then the cancel was refused.
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never cancelled: {table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = fs::read_to_string(m.path("control/jobs")).unwrap();
    if table
        .lines()
        .any(|l| l.starts_with(&job) && l.contains(" cancelled "))
    {
        assert_eq!(
            snarf_ok(&["backups", repo.to_str().unwrap()]),
            before,
            "a cancelled job committed a backup"
        );
    }
    // The snapshot still reads as it was.
    assert!(read(&m.path("snapshots/s/v")) == expected);
}

#[test]
fn a_format_2_backup_through_the_mount_under_a_writer_restores_the_snapshot_and_shows_in_backups() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--pack-size",
        "1M",
        "--format",
        "2",
    ]);
    m.unmount();
    m.mount(&["--repo", repo.to_str().unwrap()]);
    let vol = m.path("live/vm.img");
    fs::write(&vol, contents(3, 12 << 20)).unwrap();
    let writer = start_writer(&vol);
    std::thread::sleep(Duration::from_millis(200));
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    let snap = m.path("snapshots/s1/vm.img");
    let expected = read(&snap);
    // The mount's repository is the default.
    let out = snarf_ok(&["backup", m.mnt.to_str().unwrap(), "s1"]);
    let id = backup_id(&out);
    assert!(out.contains("full (first backup"), "{out}");
    assert!(
        restore(&repo, &id, &m.dir.path().join("out1"), "vm.img") == expected,
        "restore differs from the snapshot"
    );
    assert!(
        read_uncached(&snap) == expected,
        "snapshot reads differ after the backup"
    );
    fs::create_dir(m.path("snapshots/s2")).unwrap();
    let expected2 = read(&m.path("snapshots/s2/vm.img"));
    drop(writer);
    let out = snarf_ok(&["backup", m.mnt.to_str().unwrap(), "s2"]);
    assert!(out.contains(&format!("incremental from {id}")), "{out}");
    let id2 = backup_id(&out);
    assert!(restore(&repo, &id2, &m.dir.path().join("out2"), "vm.img") == expected2);
    // backups/ serves both, byte for byte, with the holes seekable.
    let mut listed: Vec<String> = fs::read_dir(m.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, vec![id.clone(), id2.clone()]);
    assert!(read(&m.path(&format!("backups/{id}/vm.img"))) == expected);
    assert!(read(&m.path(&format!("backups/{id2}/vm.img"))) == expected2);
    let cp = m.dir.path().join("cp.img");
    mounted::sh(&format!(
        "cp --sparse=always {} {}",
        m.path(&format!("backups/{id2}/vm.img")).display(),
        cp.display()
    ));
    assert!(read(&cp) == expected2, "cp of backups/{id2}/vm.img differs");
    let out = snarf_ok(&["check", repo.to_str().unwrap(), "--read-data"]);
    assert!(out.contains("no problems found"), "{out}");
    fs::remove_dir(m.path("snapshots/s1")).unwrap();
    fs::remove_dir(m.path("snapshots/s2")).unwrap();
}

/// The pre-image bytes the mount holds now (control/status.json).
fn preimage_bytes(m: &Mounted) -> u64 {
    let json = fs::read_to_string(m.path("control/status.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["preimage_memory"]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("no preimage_memory.used in {json}"))
}

#[test]
fn a_format_2_backup_through_control_jobs_frees_preimages_while_it_runs() {
    // Memory enough for every pre-image of the volume, so only acknowledgements free any.
    let Some(mut m) = Mounted::new(&[], &["--preimage-mem", "64M"]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&[
        "repo",
        "init",
        repo.to_str().unwrap(),
        "--format",
        "2",
        "--pack-size",
        "1M",
    ]);
    let vol = m.path("live/vm.img");
    fs::write(&vol, contents(5, 24 << 20)).unwrap();
    let writer = start_writer(&vol);
    std::thread::sleep(Duration::from_millis(200));
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    let snap = m.path("snapshots/s1/vm.img");
    let expected = read(&snap);
    // The writer goes on; wait until it has captured most of the volume's pre-images.
    let start = Instant::now();
    while preimage_bytes(&m) < 16 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer captured only {} pre-image bytes",
            preimage_bytes(&m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = preimage_bytes(&m);
    let job = control(
        &m,
        "control/jobs",
        &format!("backup s1 repo={}\n", repo.display()),
    )
    .unwrap()
    .trim()
    .to_string();
    let (mut lowest_running, mut samples) = (u64::MAX, 0u32);
    let row = loop {
        let used = preimage_bytes(&m);
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&job))
            .unwrap_or_else(|| panic!("job {job} not listed: {table}"))
            .to_string();
        if row.contains(" done ") || row.contains(" failed ") {
            break row;
        }
        // Sampled before the row said done: the job was still running.
        lowest_running = lowest_running.min(used);
        samples += 1;
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job never ended: {table}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(row.contains(" done "), "{row}");
    let after = preimage_bytes(&m);
    // Acknowledgements free a pack's worth at a time: a fast job may end right after the
    // batch that freed half (seen: exactly half in the last sample), so a quarter freed
    // while the row still said running is the proof.
    assert!(
        lowest_running < before * 3 / 4,
        "the held pre-images never fell while the job ran: {before} bytes before it, at least {lowest_running} in {samples} samples"
    );
    assert!(
        after < before / 4,
        "{after} pre-image bytes still held after the backup, {before} before it"
    );
    drop(writer);
    let report = snarf::jobs::report::JobReport::read(&snarf::jobs::report::report_path(
        &m.store.join("run"),
        &job,
    ))
    .expect("report file");
    let id = report.backup_id.expect("backup id in the report");
    assert!(
        restore(&repo, &id, &m.dir.path().join("out1"), "vm.img") == expected,
        "restore differs from the snapshot"
    );
    // The freed snarfs are read back from the format 2 repository, and the daemon pinned
    // their packs.
    assert!(
        read_uncached(&snap) == expected,
        "snapshot reads differ after the backup freed its pre-images"
    );
    assert!(
        fs::read_dir(repo.join("pins")).unwrap().count() > 0,
        "no pin while the snapshot reads from the repository"
    );
    // A new daemon adopts the released-snarf table of the persistent snapshot and reads
    // those snarfs from the repository too.
    m.unmount();
    m.mount(&["--preimage-mem", "64M"]);
    assert!(
        read_uncached(&snap) == expected,
        "snapshot reads differ after a remount"
    );
    // Releasing the snapshot removes the pin.
    fs::remove_dir(m.path("snapshots/s1")).unwrap();
    let start = Instant::now();
    while fs::read_dir(repo.join("pins"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pins left after release"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = snarf_ok(&["check", repo.to_str().unwrap(), "--read-data"]);
    assert!(out.contains("no problems found"), "{out}");
}
