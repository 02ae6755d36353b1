//! Retention on a schedule line, on a real mount with the daemon's clock set through
//! SNARF_FAKE_CLOCK (a `fault-injection` build): `keep-last=1` after a scheduled backup
//! prunes the repository in the same cron job, the run's recorded result says what was
//! pruned, and a bad keep value is refused with EINVAL and its line number.

mod mounted;

use std::fs;
use std::time::{Duration, Instant};

use mounted::{snarf_ok, Mounted};

/// 2026-12-02T01:59:00Z.
const T0: u64 = 1_796_169_600 + 3600 + 59 * 60;

/// Waits until a job row of `kind` has ended; that row.
fn ended_job(m: &Mounted, kind: &str) -> String {
    let start = Instant::now();
    loop {
        let table = fs::read_to_string(m.path("control/jobs")).unwrap();
        if let Some(row) = table.lines().skip(1).find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&kind)
                && ["done", "failed", "cancelled"].contains(f.get(2).unwrap_or(&""))
        }) {
            return row.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {kind} job ended: {table}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_scheduled_backup_prunes_with_its_lines_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    fs::write(&clock, format!("{T0}\n")).unwrap();
    // Only this test runs in this binary, so the variable reaches just our daemons.
    std::env::set_var("SNARF_FAKE_CLOCK", &clock);
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    let r = repo.to_str().unwrap();
    snarf_ok(&["repo", "init", "--format", "2", r]);
    fs::write(m.path("live/v.img"), vec![7u8; 1 << 20]).unwrap();
    // One backup by hand first, which the scheduled run's keep-last=1 then removes.
    fs::create_dir(m.path("snapshots/by-hand")).unwrap();
    fs::write(m.path("control/jobs"), format!("backup by-hand repo={r}\n")).unwrap();
    let row = ended_job(&m, "user");
    assert!(row.contains(" done "), "{row}");
    let first = snarf_ok(&["backups", r]);

    // A bad keep value is refused like any bad line: EINVAL and its line number.
    let (errno, answer) = m.write_control(
        "schedule",
        &format!("# retention\n0 2 * * * backup snapshot=auto repo={r} keep-last=many\n"),
    );
    assert_eq!(errno, libc::EINVAL, "{answer}");
    assert!(answer.contains("line 2: keep-last=\"many\""), "{answer}");

    let line = format!("0 2 * * * backup snapshot=auto repo={r} keep-last=1");
    let (errno, answer) = m.write_control("schedule", &format!("{line}\n"));
    assert_eq!(errno, 0, "{answer}");
    fs::write(&clock, format!("{}\n", T0 + 90)).unwrap();
    let row = ended_job(&m, "cron");
    assert!(row.contains(" done "), "{row}");
    assert!(
        row.contains("pruned with keep-last=1: 1 backup(s) kept, 1 removed"),
        "{row}"
    );
    // The repository holds the scheduled backup only.
    let now = snarf_ok(&["backups", r]);
    assert_eq!(now.lines().count(), first.lines().count(), "{first}\n{now}");
    let by_hand_id = first
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(!now.contains(by_hand_id), "{now}");
    // The run's recorded result says so.
    let start = Instant::now();
    loop {
        let status = fs::read_to_string(m.path("control/schedule-status")).unwrap();
        if status.contains("pruned with keep-last=1") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
