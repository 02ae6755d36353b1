//! A mount whose repository is on S3 (`snarf mount --repo s3://…`, against moto on
//! loopback): a snapshot backed up through `control/jobs` while a writer goes on, read
//! back through `backups/` on the mount and restored byte-exact; the snapshot still reads
//! what it froze afterwards (its pre-images stay: the mount reads nothing back from S3
//! for it); a converge backup into the same repository is an incremental from the first
//! and equals the volume.

mod mounted;
#[path = "common/s3server.rs"]
mod s3server;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mounted::{read, snarf_ok, Mounted};
use s3server::S3Server;

const REPO: &str = "s3://snarf-mount/r";

fn contents(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|i| {
            if i % 8192 < 2048 {
                return 0;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts a job on control/jobs and waits for its row to end; returns (row, summary, id).
fn run_job(m: &Mounted, command: &str) -> (String, String, String) {
    let (errno, answer) = m.write_control("jobs", command);
    assert_eq!(errno, 0, "{command}: {answer}");
    let job = answer.trim().to_string();
    let row = m.wait_job(&job, Duration::from_secs(120));
    let report = m.job_report(&job);
    let summary = format!(
        "{}{}",
        report.summary.unwrap_or_default(),
        report.error.unwrap_or_default()
    );
    (row, summary, report.backup_id.unwrap_or_default())
}

#[test]
fn a_mount_backs_up_to_s3_and_reads_the_backups_back_through_the_mount() {
    if !s3server::available() || !mounted::fuse_available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("snarf-mount");
    // The mount, its daemon and the jobs it starts reach the server through these.
    for (k, v) in server.env() {
        std::env::set_var(k, v);
    }
    snarf_ok(&["repo", "init", REPO]);
    let Some(m) = Mounted::new(&[], &["--repo", REPO]) else {
        return;
    };
    let vol = m.path("live/vm.img");
    fs::write(&vol, contents(12 << 20)).unwrap();
    fs::create_dir(m.path("snapshots/s1")).unwrap();
    let expected = read(&m.path("snapshots/s1/vm.img"));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (vol, stop) = (vol.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(vol).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                f.write_all_at(&[n as u8 | 1; 4096], (n * 7919 % 3000) * 4096)
                    .unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        })
    };

    let (row, summary, id) = run_job(&m, "backup s1\n");
    assert!(row.contains(" done "), "{row}\n{summary}");
    assert!(summary.contains("full (first backup"), "{summary}");
    // Read back from S3 through the mount.
    let through = m.path(&format!("backups/{id}/vm.img"));
    assert!(
        read(&through) == expected,
        "backups/{id}/vm.img differs from the snapshot"
    );
    assert!(
        fs::write(&through, b"x").is_err(),
        "backups/ on S3 is read-only"
    );
    // The snapshot kept its pre-images: it still reads what it froze.
    assert!(read(&m.path("snapshots/s1/vm.img")) == expected);

    // The writer stops, so the converge backup must equal the live volume exactly.
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    let live = read(&m.path("live/vm.img"));
    let (row, summary, id2) = run_job(&m, "converge\n");
    assert!(row.contains(" done "), "{row}\n{summary}");
    assert!(
        summary.contains(&format!("incremental from {id}")),
        "{summary}"
    );
    assert!(summary.contains("live passes"), "{summary}");

    let dest = m.dir.path().join("out");
    snarf_ok(&["restore", REPO, &id, dest.to_str().unwrap()]);
    assert!(
        read(&dest.join("vm.img")) == expected,
        "restore from S3 differs"
    );
    assert!(
        read(&m.path(&format!("backups/{id2}/vm.img"))) == live,
        "the converge backup differs from the volume"
    );
    snarf_ok(&["check", REPO, "--read-data"]);
    let listed = snarf_ok(&["backups", REPO]);
    assert!(listed.contains(&id) && listed.contains(&id2), "{listed}");
}
