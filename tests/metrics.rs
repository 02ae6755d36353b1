//! `control/metrics` and `snarf metrics` against a live mount under a backup job: the text is
//! parsed with the Prometheus project's own parser (python3-prometheus-client, which
//! scripts/test.sh installs), the I/O counters move with writes and reads, jobs are counted
//! by state, the last backup time appears, a hostile volume name survives as a label, and
//! `snarf metrics --listen` serves the same over HTTP (GET /metrics only, loopback only
//! unless --allow-remote).

mod mounted;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mounted::{snarf_bin, snarf_ok, Mounted};

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value, family.type])
print(json.dumps(out))
"#;

/// A parsed sample: (name, labels) -> (value, family type).
type Samples = HashMap<(String, Vec<(String, String)>), (f64, String)>;

fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Parses exposition text with prometheus_client's parser; panics if it refuses it.
fn parse(py: &str, text: &str) -> Samples {
    let mut child = Command::new(py)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, HashMap<String, String>, f64, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|(name, labels, value, kind)| {
            let mut labels: Vec<_> = labels.into_iter().collect();
            labels.sort();
            ((name, labels), (value, kind))
        })
        .collect()
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    match samples.get(&(name.to_string(), want)) {
        Some((v, _)) => *v,
        None => {
            let mut names: Vec<_> = samples.keys().collect();
            names.sort();
            panic!("no sample {name}{labels:?} among {names:#?}")
        }
    }
}

/// Kills the metrics server this test started, on every path.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes at the start of a file without truncating it.
fn overwrite(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
}

fn http(addr: &str, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("no HTTP head");
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_move_under_a_backup_job_and_parse_with_a_prometheus_parser() {
    let Some(py) = python() else {
        if std::env::var("SNARF_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("python3-prometheus-client is not installed; scripts/test.sh installs it");
        }
        eprintln!("skipping: python3-prometheus-client is not installed");
        return;
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = repo_dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let Some(m) = Mounted::new(&[], &["--repo", repo.to_str().unwrap()]) else {
        return;
    };
    let scrape = || parse(py, &fs::read_to_string(m.path("control/metrics")).unwrap());

    let before = scrape();
    assert_eq!(get(&before, "snarf_snapshots", &[]), 0.0);
    assert!(get(&before, "snarf_preimage_memory_budget_bytes", &[]) > 0.0);
    assert_eq!(
        before
            .get(&("snarf_throttle_seconds_total".to_string(), vec![]))
            .map(|(_, kind)| kind.as_str()),
        Some("counter")
    );

    // Names may hold quotes, backslashes and braces: they stay one label value.
    let hostile = r#"q"uo\te {x="1"}, y"#;
    let data: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    fs::write(m.path("live/v"), &data).unwrap();
    fs::write(m.path("live").join(hostile), b"hostile").unwrap();
    assert_eq!(fs::read(m.path("live/v")).unwrap(), data);
    let after = scrape();
    let vol = [("volume", "v")];
    assert!(get(&after, "snarf_volume_write_bytes_total", &vol) >= data.len() as f64);
    assert!(get(&after, "snarf_volume_write_ops_total", &vol) >= 4.0);
    assert!(get(&after, "snarf_volume_read_bytes_total", &vol) >= data.len() as f64);
    assert!(get(&after, "snarf_volume_read_ops_total", &vol) >= 1.0);
    assert_eq!(
        get(&after, "snarf_volume_size_bytes", &vol),
        data.len() as f64
    );
    assert_eq!(
        get(
            &after,
            "snarf_volume_write_bytes_total",
            &[("volume", hostile)]
        ),
        7.0
    );

    // A backup job: counted by state, its bytes shown, the last backup time set.
    fs::create_dir(m.path("snapshots/nightly")).unwrap();
    overwrite(&m.path("live/v"), b"after the snapshot");
    let during = scrape();
    assert_eq!(get(&during, "snarf_snapshots", &[]), 1.0);
    assert_eq!(
        get(&during, "snarf_snapshot_broken", &[("snapshot", "nightly")]),
        0.0
    );
    assert!(
        get(
            &during,
            "snarf_snapshot_preimages",
            &[("snapshot", "nightly")]
        ) >= 1.0
    );
    assert!(get(&during, "snarf_preimage_memory_bytes", &[]) > 0.0);
    assert_eq!(
        get(&during, "snarf_repository_readable", &[]),
        1.0,
        "the repository exists"
    );
    let start_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("control/jobs"))
        .unwrap();
    f.write_all(b"backup nightly\n").unwrap();
    let mut job = String::new();
    f.read_to_string(&mut job).unwrap();
    let job = job.trim().to_string();
    assert!(!job.is_empty());
    let start = Instant::now();
    let done = loop {
        let s = scrape();
        if get(&s, "snarf_jobs", &[("state", "done")]) == 1.0 {
            break s;
        }
        assert_eq!(get(&s, "snarf_jobs", &[("state", "failed")]), 0.0);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job never finished: {}",
            fs::read_to_string(m.path("control/jobs")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for state in ["queued", "running", "finishing", "failed", "cancelled"] {
        assert_eq!(
            get(&done, "snarf_jobs", &[("state", state)]),
            0.0,
            "{state}"
        );
    }
    let labels = [
        ("job", job.as_str()),
        ("type", "user"),
        ("snapshot", "nightly"),
    ];
    assert!(get(&done, "snarf_job_done_bytes", &labels) > 0.0);
    let last = get(&done, "snarf_last_backup_timestamp_seconds", &vol);
    assert!(
        last >= start_secs.floor() - 1.0 && last <= start_secs + 120.0,
        "{last} vs {start_secs}"
    );
    assert!(
        get(
            &done,
            "snarf_last_backup_timestamp_seconds",
            &[("volume", hostile)]
        ) > 0.0
    );

    // `snarf metrics MOUNT` prints the same file.
    let printed = parse(py, &snarf_ok(&["metrics", m.mnt.to_str().unwrap()]));
    assert_eq!(get(&printed, "snarf_jobs", &[("state", "done")]), 1.0);

    // --listen: refused beyond loopback without --allow-remote, before binding anything.
    let out = mounted::snarf(&["metrics", m.mnt.to_str().unwrap(), "--listen", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--allow-remote"),
        "{err}"
    );

    let mut child = Command::new(snarf_bin())
        .args([
            "metrics",
            m.mnt.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("serving http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let (head, body) = http(&addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let served = parse(py, &body);
    assert_eq!(get(&served, "snarf_jobs", &[("state", "done")]), 1.0);
    overwrite(&m.path("live/v"), b"more");
    let (_, body) = http(&addr, "GET /metrics HTTP/1.0\r\n\r\n");
    let again = parse(py, &body);
    assert!(
        get(&again, "snarf_volume_write_ops_total", &vol)
            > get(&served, "snarf_volume_write_ops_total", &vol)
    );
    let (head, _) = http(&addr, "GET / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http(&addr, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let (head, _) = http(&addr, &huge);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // Still serving after the bad ones.
    let (head, _) = http(&addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
