//! Converge backups on a real mount, under a writer process that stamps every block it
//! writes with a sequence number and logs each write after it returns: the backup,
//! restored with `snarf restore`, equals the writer's log replayed up to some write, and
//! that prefix holds every write that returned before the backup started. Run from the
//! command line (`snarf backup MOUNT --converge`) and through `converge` on control/jobs.

mod mounted;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mounted::{read, snarf_ok, Mounted};

const BLOCK: u64 = 16 << 10;
const BLOCKS: u64 = 2048;
/// One log record: the sequence number and the block, u64 little-endian each.
const RECORD: usize = 16;

/// The bytes the writer's write number `seq` puts in block `block`.
fn stamped(seq: u64, block: u64) -> Vec<u8> {
    let mut b = vec![(seq as u8) | 1; BLOCK as usize];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b
}

/// The writer process's role: with SNARF_TEST_SEQ_WRITER set, writes stamped blocks to that
/// file (each write synced, so they reach the daemon in order) and appends a record to
/// SNARF_TEST_SEQ_LOG after each returns, until SNARF_TEST_SEQ_STOP exists.
#[test]
fn seq_writer_role() {
    let (Ok(path), Ok(log), Ok(stop)) = (
        std::env::var("SNARF_TEST_SEQ_WRITER"),
        std::env::var("SNARF_TEST_SEQ_LOG"),
        std::env::var("SNARF_TEST_SEQ_STOP"),
    ) else {
        return;
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&path)
        .expect("writer: open");
    let mut log = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .expect("writer: log");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut seq = 0u64;
    while !Path::new(&stop).exists() {
        seq += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % BLOCKS;
        f.write_all_at(&stamped(seq, block), block * BLOCK)
            .expect("writer: write");
        let mut rec = [0u8; RECORD];
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        rec[8..].copy_from_slice(&block.to_le_bytes());
        log.write_all(&rec).expect("writer: log write");
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// The writer, stopped by its stop file (and killed by pid if it does not stop).
struct Writer {
    child: Option<Child>,
    log: std::path::PathBuf,
    stop: std::path::PathBuf,
}

impl Writer {
    fn start(volume: &Path, dir: &Path) -> Writer {
        let (log, stop) = (dir.join("writes.log"), dir.join("writes.stop"));
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "seq_writer_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SNARF_TEST_SEQ_WRITER", volume)
            .env("SNARF_TEST_SEQ_LOG", &log)
            .env("SNARF_TEST_SEQ_STOP", &stop)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the writer");
        Writer {
            child: Some(child),
            log,
            stop,
        }
    }

    /// Writes logged so far (each returned before it was logged).
    fn logged(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len() / RECORD as u64)
    }

    /// Stops the writer and returns its log: the block of each write, in order.
    fn finish(&mut self) -> Vec<u64> {
        fs::write(&self.stop, b"").expect("stop file");
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().expect("wait").is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let bytes = fs::read(&self.log).unwrap_or_default();
        bytes
            .chunks_exact(RECORD)
            .enumerate()
            .map(|(i, r)| {
                let seq = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                assert_eq!(seq, i as u64 + 1, "the log is in order");
                u64::from_le_bytes(r[8..].try_into().expect("8 bytes"))
            })
            .collect()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn initial() -> Vec<u8> {
    let mut v = vec![0u8; (BLOCK * BLOCKS) as usize];
    let mut x = 7u64;
    for (i, b) in v.iter_mut().enumerate() {
        if i % 3 == 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        *b = x as u8;
    }
    // Headers that are no write's: sequence 0.
    for blk in v.chunks_mut(BLOCK as usize) {
        blk[..8].fill(0);
    }
    v
}

/// Checks `image` is the initial contents with the writes `1..=p` of `log` replayed, for
/// the `p` its newest stamp names; returns `p`.
fn prefix_of(image: &[u8], log: &[u64]) -> u64 {
    let p = image
        .chunks(BLOCK as usize)
        .map(|b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
        .max()
        .unwrap_or(0);
    assert!(
        p as usize <= log.len(),
        "the image holds write {p}, past the log's {}",
        log.len()
    );
    let mut oracle = initial();
    for (i, &block) in log[..p as usize].iter().enumerate() {
        let at = (block * BLOCK) as usize;
        oracle[at..at + BLOCK as usize].copy_from_slice(&stamped(i as u64 + 1, block));
    }
    if image != oracle {
        let bad = (0..BLOCKS)
            .find(|&b| {
                let r = (b * BLOCK) as usize..((b + 1) * BLOCK) as usize;
                image[r.clone()] != oracle[r]
            })
            .unwrap_or(BLOCKS);
        panic!("the backup is not the writes 1..={p} replayed: block {bad} differs");
    }
    p
}

/// Old contents the mount holds now (pre-images in memory and on disk), from control/status.json.
fn held(m: &Mounted) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.path("control/status.json")).unwrap()).unwrap();
    ["preimage_memory", "preimage_disk"]
        .iter()
        .map(|k| {
            v[k]["used"]
                .as_u64()
                .unwrap_or_else(|| panic!("no {k} in {v}"))
        })
        .sum()
}

fn restore(repo: &Path, id: &str, dest: &Path) -> Vec<u8> {
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        id,
        dest.to_str().unwrap(),
    ]);
    read(&dest.join("vm.img"))
}

fn backup_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_string()
}

#[test]
fn a_converge_backup_under_a_writer_process_restores_a_prefix_of_its_writes() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let vol = m.path("live/vm.img");
    fs::write(&vol, initial()).unwrap();
    let mut writer = Writer::start(&vol, m.dir.path());
    let start = Instant::now();
    while writer.logged() < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the writer never wrote"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // From the command line.
    let before = writer.logged();
    let out = Command::new(env!("CARGO_BIN_EXE_snarf"))
        .args([
            "backup",
            "--converge",
            "--repo",
            repo.to_str().unwrap(),
            "--",
        ])
        .arg(&m.mnt)
        .output()
        .expect("snarf backup --converge");
    let after = writer.logged();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(text.contains("as of its final freeze (converge)"), "{text}");
    assert!(text.contains("live passes"), "{text}");
    let id = backup_id(&text);
    // Nothing is held for it afterwards (the writer goes on; with no snapshot left, its
    // writes capture nothing).
    assert_eq!(
        held(&m),
        0,
        "old contents are still held after the converge backup"
    );

    // Through control/jobs, while the writer goes on: an incremental from the first.
    let before2 = writer.logged();
    let (errno, answer) = m.write_control("jobs", &format!("converge repo={}\n", repo.display()));
    assert_eq!(errno, 0, "{answer}");
    let job = answer.trim().to_string();
    let row = m.wait_job(&job, Duration::from_secs(120));
    let after2 = writer.logged();
    let log = writer.finish();
    assert!(row.contains(" done ") && row.contains("converge"), "{row}");
    let report = m.job_report(&job);
    let id2 = report.backup_id.expect("backup id in the report");
    let summary = report.summary.unwrap_or_default();
    assert!(
        summary.contains(&format!("incremental from {id}")),
        "{summary}"
    );
    assert!(summary.contains("live passes"), "{summary}");
    eprintln!("{summary}");

    let p1 = prefix_of(&restore(&repo, &id, &m.dir.path().join("out1")), &log);
    assert!(
        (before..=after + 1).contains(&p1),
        "the first backup holds writes 1..={p1}; {before} had returned before it started, {after} when it ended"
    );
    let p2 = prefix_of(&restore(&repo, &id2, &m.dir.path().join("out2")), &log);
    assert!(
        (before2..=after2 + 1).contains(&p2),
        "the second backup holds writes 1..={p2}; {before2} had returned before it started, {after2} when it ended"
    );
    assert!(p2 > p1);
    snarf_ok(&["check", repo.to_str().unwrap(), "--read-data"]);
}
