//! The schedule on a real mount, with the daemon's clock set by the test through
//! SNARF_FAKE_CLOCK (honoured only in builds with the `fault-injection` feature): a schedule
//! written through control/schedule (a bad one refused with EINVAL and its line numbers, the
//! old one kept), its job run as type `cron` at the due time with a snapshot of its own that
//! is released afterwards, its backup in the repository, a user job started meanwhile that
//! leaves the cron job running, no second start in the same minute, one catch-up after the
//! mount was down over several due times, a bad line edited on disk shown in control/status
//! while the good line keeps its schedule, and `snarf schedule MOUNT`.

mod mounted;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use mounted::{snarf, snarf_ok, Mounted};

/// 2026-12-02T01:59:00Z.
const T0: u64 = 1_796_169_600 + 3600 + 59 * 60;

fn set_clock(file: &Path, secs: u64) {
    fs::write(file, format!("{secs}\n")).unwrap();
    // Past the scheduler's one-second tick, so it has looked at the new time.
    std::thread::sleep(Duration::from_millis(1500));
}

/// The rows of control/jobs of type cron: (id, state).
fn cron_jobs(m: &Mounted) -> Vec<(String, String)> {
    fs::read_to_string(m.path("control/jobs"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"cron")).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect()
}

/// Waits until `expect` cron jobs are listed and all have ended; their final states.
fn wait_cron_jobs_end(m: &Mounted, expect: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let jobs = cron_jobs(m);
        let ended: Vec<String> = jobs
            .iter()
            .map(|(_, s)| s.clone())
            .filter(|s| !["queued", "running", "finishing"].contains(&s.as_str()))
            .collect();
        if jobs.len() >= expect && ended.len() == jobs.len() {
            return ended;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cron jobs did not end: {jobs:?}\n{}",
            fs::read_to_string(m.path("control/jobs")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn snapshots(m: &Mounted) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.path("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_schedule_runs_cron_jobs_by_the_daemons_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    fs::write(&clock, format!("{T0}\n")).unwrap();
    // Only this test runs in this binary, so the variable reaches just our daemons.
    std::env::set_var("SNARF_FAKE_CLOCK", &clock);
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let mp = m.mnt.to_str().unwrap().to_string();
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    // Enough data that the cron job is still running when a user job starts.
    let data: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(m.path("live/v.img"), &data).unwrap();

    // A schedule with bad lines is refused whole, naming them; nothing changes.
    let line = format!("0 2 * * * backup snapshot=auto repo={}", repo.display());
    let (errno, answer) = m.write_control(
        "schedule",
        &format!("{line}\n0 2 * * * backup snapshot=auto repo=relative\n# fine\n*/0 * * * * backup snapshot=auto\n"),
    );
    assert_eq!(errno, libc::EINVAL, "{answer}");
    assert!(answer.contains("line 2: the repository path"), "{answer}");
    assert!(
        answer.contains("line 4: the step /0 in the minute field"),
        "{answer}"
    );
    assert!(answer.contains("the old one stays in force"), "{answer}");
    assert_eq!(fs::read_to_string(m.path("control/schedule")).unwrap(), "");

    let (errno, answer) = m.write_control("schedule", &format!("# nightly\n{line}\n"));
    assert_eq!(
        (errno, answer.as_str()),
        (0, "schedule replaced: 1 job line(s)\n")
    );
    assert_eq!(
        fs::read_to_string(m.path("control/schedule")).unwrap(),
        format!("# nightly\n{line}\n")
    );
    assert_eq!(
        fs::read_to_string(m.store.join("schedule")).unwrap(),
        format!("# nightly\n{line}\n")
    );
    // Several writes on one descriptor (a shell's echos) build one schedule.
    mounted::sh(&format!(
        "{{ echo '# nightly'; echo '{line}'; }} > {}/control/schedule",
        mp
    ));
    assert_eq!(
        fs::read_to_string(m.path("control/schedule")).unwrap(),
        format!("# nightly\n{line}\n")
    );
    let out = snarf_ok(&["schedule", &mp]);
    assert!(out.contains("2026-12-02T02:00:00Z"), "the next run: {out}");
    // The line is seen at 01:59; at 02:00 it is due.
    set_clock(&clock, T0 + 1);
    assert!(cron_jobs(&m).is_empty());
    snarf_ok(&["snapshot", "create", &mp, "mine"]);
    fs::write(&clock, format!("{}\n", T0 + 60)).unwrap();
    let start = Instant::now();
    // The job registers as type cron (control/pids: PID TYPE STATE ...).
    while !fs::read_to_string(m.path("control/pids"))
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("cron"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no cron job started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        snapshots(&m).contains(&"cron-20261202-0200-l2".to_string()),
        "{:?}",
        snapshots(&m)
    );
    // A user job started while the cron job runs: it waits for the repository and never
    // stops the cron job.
    let user = std::process::Command::new(mounted::snarf_bin())
        .args([
            "backup",
            "--repo",
            repo.to_str().unwrap(),
            "--lock-wait",
            "60",
            "--",
            &mp,
            "mine",
        ])
        .output()
        .unwrap();
    let ended = wait_cron_jobs_end(&m, 1);
    assert_eq!(
        ended,
        ["done"],
        "{}",
        fs::read_to_string(m.path("control/jobs")).unwrap()
    );
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    // The cron job's backup is in the repository, and its snapshot is released.
    let backups = snarf_ok(&["backups", repo.to_str().unwrap()]);
    assert_eq!(backups.lines().skip(1).count(), 2, "{backups}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(snapshots(&m), ["mine"]);
    let out = snarf_ok(&["schedule", &mp]);
    let row = out.lines().nth(1).unwrap();
    assert!(row.starts_with("2 "), "{out}");
    assert!(
        row.contains("2026-12-03T02:00:00Z") && row.contains("2026-12-02T02:00:00Z"),
        "{out}"
    );
    assert!(row.contains("done: backup "), "{out}");
    // The same minute again: no second run.
    set_clock(&clock, T0 + 90);
    assert_eq!(cron_jobs(&m).len(), 1);

    // Down over three nights: one catch-up at the next mount, not three.
    m.unmount();
    fs::write(&clock, format!("{}\n", T0 + 3 * 86_400 + 3600)).unwrap();
    m.mount(&[]);
    std::thread::sleep(Duration::from_millis(2500));
    let ended = wait_cron_jobs_end(&m, 1);
    assert_eq!(ended, ["done"]);
    set_clock(&clock, T0 + 3 * 86_400 + 3660);
    assert_eq!(cron_jobs(&m).len(), 1, "caught up once only");
    let out = snarf_ok(&["schedule", &mp]);
    assert!(out.contains("caught up"), "{out}");
    assert!(out.contains("2026-12-06T02:00:00Z"), "{out}");
    let backups = snarf_ok(&["backups", repo.to_str().unwrap()]);
    assert_eq!(backups.lines().skip(1).count(), 3, "{backups}");

    // Edited on disk with a bad line: shown in control/status, the good line still runs.
    let tmp = m.store.join("schedule.tmp");
    fs::write(
        &tmp,
        format!("{line}\n0 2 * * funday backup snapshot=auto\n"),
    )
    .unwrap();
    fs::rename(&tmp, m.store.join("schedule")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = snarf_ok(&["status", &mp]);
    assert!(status.contains("SCHEDULE-PROBLEM"), "{status}");
    assert!(
        status.contains("schedule line 2: the day-of-week field has \"funday\""),
        "{status}"
    );
    let out = snarf_ok(&["schedule", &mp]);
    assert!(out.lines().nth(1).unwrap().starts_with("1 "), "{out}");
    assert!(out.contains("BAD-LINE"), "{out}");
    // The CLI replaces it too, and refuses a bad one with the line number.
    let bad = dir.path().join("bad");
    fs::write(&bad, "@daily\n").unwrap();
    let out = snarf(&["schedule", &mp, "--set", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1: the job is missing"), "{err}");
    assert!(snarf_ok(&["schedule", "--help"]).contains("caught up once"));
    m.unmount();
}
