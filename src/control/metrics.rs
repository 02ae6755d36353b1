//! `control/metrics`: the mount's figures in the Prometheus text exposition format 0.0.4,
//! for a scrape (`snarf metrics --listen`) or node_exporter's textfile collector. The
//! daemon fills a [`MetricsReport`]; [`render_metrics`] encodes it with prometheus-client,
//! which also escapes label values (a volume or snapshot name may hold `"` or `\`).
//!
//! Every series is named `snarf_*`, with its unit in the name and `_total` on counters.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::rows::{JobRow, SnapshotState, StatusReport};
use crate::jobs::JobState;

/// The `Content-Type` of [`render_metrics`]'s output, for an HTTP answer.
pub const METRICS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every job state, in the order `snarf_jobs` lists them (each always present, 0 or more).
pub const JOB_STATES: [JobState; 6] = [
    JobState::Queued,
    JobState::Running,
    JobState::Finishing,
    JobState::Done,
    JobState::Failed,
    JobState::Cancelled,
];

/// Reads and writes a live volume served since the mount started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeIo {
    /// Volume name.
    pub name: String,
    /// Reads served.
    pub read_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes served.
    pub write_ops: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// What the mount's repository says about its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTimes {
    /// The mount has no repository.
    NoRepository,
    /// The repository could not be read (the reason is in the log).
    Unreadable,
    /// The newest committed backup of each volume, Unix seconds, by volume name.
    Newest(Vec<(String, u64)>),
}

/// Everything `control/metrics` shows.
#[derive(Debug, Clone)]
pub struct MetricsReport {
    /// Volumes, snapshots, pre-image budgets and throttling, as `control/status` shows them.
    pub status: StatusReport,
    /// Total time writers waited for pre-image room since the mount started, in seconds.
    pub throttle_seconds: f64,
    /// The mount's jobs, as `control/jobs` shows them.
    pub jobs: Vec<JobRow>,
    /// Live volume I/O.
    pub volume_io: Vec<VolumeIo>,
    /// Last successful backup of each volume.
    pub backups: BackupTimes,
}

type Labels = Vec<(&'static str, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(value.min(i64::MAX as u64) as i64);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// A gauge family with one series per label set.
fn gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in series {
        family
            .get_or_create(&labels)
            .set(value.min(i64::MAX as u64) as i64);
    }
    registry.register(name, help, family);
}

/// A counter family with one series per label set.
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// `control/metrics`: the report in the Prometheus text format 0.0.4.
pub fn render_metrics(report: &MetricsReport) -> String {
    let mut r = Registry::default();
    let s = &report.status;
    gauge(
        &mut r,
        "snarf_preimage_memory_bytes",
        "Pre-images held in memory, in bytes",
        s.preimage_memory.used,
    );
    gauge(
        &mut r,
        "snarf_preimage_memory_budget_bytes",
        "Memory pre-images may use before they spill to disk, in bytes",
        s.preimage_memory.budget,
    );
    gauge(
        &mut r,
        "snarf_preimage_disk_bytes",
        "Pre-images spilled to disk, in bytes",
        s.preimage_disk.used,
    );
    gauge(
        &mut r,
        "snarf_preimage_disk_budget_bytes",
        "Disk spilled pre-images may use before writers are slowed, in bytes",
        s.preimage_disk.budget,
    );
    gauge(
        &mut r,
        "snarf_throttled_writers",
        "Writers waiting for pre-image room now",
        s.throttled_writers,
    );
    counter(
        &mut r,
        "snarf_throttle_waits",
        "Times a writer waited for pre-image room",
        s.throttle_events,
    );
    let seconds: Counter<f64, AtomicU64> = Counter::default();
    seconds.inc_by(report.throttle_seconds.max(0.0));
    r.register(
        "snarf_throttle_seconds",
        "Time writers spent waiting for pre-image room, in seconds",
        seconds,
    );
    counter(
        &mut r,
        "snarf_snapshots_broken",
        "Snapshots broken to protect writers since the mount started",
        s.snapshots_broken,
    );
    gauge(
        &mut r,
        "snarf_snapshots",
        "Snapshots listed under snapshots/, intact or broken",
        s.snapshots.len() as u64,
    );
    gauge(
        &mut r,
        "snarf_snapshots_broken_now",
        "Snapshots listed under snapshots/ that are broken",
        s.snapshots
            .iter()
            .filter(|x| x.state == SnapshotState::Broken)
            .count() as u64,
    );
    gauges(
        &mut r,
        "snarf_snapshot_broken",
        "1 if the snapshot is broken (control/status says why), 0 if intact",
        s.snapshots.iter().map(|x| {
            (
                vec![("snapshot", x.name.clone())],
                u64::from(x.state == SnapshotState::Broken),
            )
        }),
    );
    gauges(
        &mut r,
        "snarf_snapshot_preimages",
        "Pre-images held for the snapshot",
        s.snapshots
            .iter()
            .map(|x| (vec![("snapshot", x.name.clone())], x.preimages_held)),
    );
    gauges(
        &mut r,
        "snarf_jobs",
        "The mount's jobs by state",
        JOB_STATES.iter().map(|state| {
            let n = report.jobs.iter().filter(|j| j.state == *state).count() as u64;
            (vec![("state", state.as_str().to_string())], n)
        }),
    );
    let job_labels = |j: &JobRow| {
        vec![
            ("job", j.id.clone()),
            ("type", j.kind.clone()),
            ("snapshot", j.snapshot.clone()),
        ]
    };
    gauges(
        &mut r,
        "snarf_job_done_bytes",
        "Bytes a job has transferred",
        report.jobs.iter().map(|j| (job_labels(j), j.done_bytes)),
    );
    gauges(
        &mut r,
        "snarf_job_total_bytes",
        "Bytes a job transfers in all, once known",
        report
            .jobs
            .iter()
            .filter_map(|j| Some((job_labels(j), j.total_bytes?))),
    );
    gauges(
        &mut r,
        "snarf_job_rate_bytes_per_second",
        "A job's recent transfer rate, once measured, in bytes per second",
        report
            .jobs
            .iter()
            .filter_map(|j| Some((job_labels(j), j.rate_bytes_per_sec?))),
    );
    let volume = |name: &str| vec![("volume", name.to_string())];
    match &report.backups {
        BackupTimes::NoRepository => {}
        BackupTimes::Unreadable => gauge(
            &mut r,
            "snarf_repository_readable",
            "1 if the mount's repository could be read for this scrape",
            0,
        ),
        BackupTimes::Newest(times) => {
            gauge(
                &mut r,
                "snarf_repository_readable",
                "1 if the mount's repository could be read for this scrape",
                1,
            );
            gauges(
                &mut r,
                "snarf_last_backup_timestamp_seconds",
                "When the newest committed backup holding the volume was taken, Unix seconds",
                times.iter().map(|(name, t)| (volume(name), *t)),
            );
        }
    }
    gauges(
        &mut r,
        "snarf_volume_size_bytes",
        "A live volume's apparent size, in bytes",
        s.volumes.iter().map(|v| (volume(&v.name), v.size)),
    );
    gauges(
        &mut r,
        "snarf_volume_allocated_bytes",
        "Bytes a live volume's backing file holds on disk",
        s.volumes.iter().map(|v| (volume(&v.name), v.allocated)),
    );
    let io = &report.volume_io;
    counters(
        &mut r,
        "snarf_volume_read_ops",
        "Reads of a live volume served since the mount started",
        io.iter().map(|v| (volume(&v.name), v.read_ops)),
    );
    counters(
        &mut r,
        "snarf_volume_read_bytes",
        "Bytes read from a live volume since the mount started",
        io.iter().map(|v| (volume(&v.name), v.read_bytes)),
    );
    counters(
        &mut r,
        "snarf_volume_write_ops",
        "Writes to a live volume served since the mount started",
        io.iter().map(|v| (volume(&v.name), v.write_ops)),
    );
    counters(
        &mut r,
        "snarf_volume_write_bytes",
        "Bytes written to a live volume since the mount started",
        io.iter().map(|v| (volume(&v.name), v.write_bytes)),
    );
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in it.
    if let Err(e) = prometheus_text::encode(&mut out, &r) {
        log::error!("encoding metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::rows::{RecoveryStatus, SnapshotStatus, Usage, VolumeStatus};
    use super::*;

    fn report(names: &[&str]) -> MetricsReport {
        MetricsReport {
            status: StatusReport {
                repository: None,
                volumes: names
                    .iter()
                    .map(|n| VolumeStatus {
                        name: n.to_string(),
                        size: 1 << 20,
                        allocated: 4096,
                    })
                    .collect(),
                snapshots: names
                    .iter()
                    .map(|n| SnapshotStatus {
                        name: n.to_string(),
                        created: 1,
                        state: SnapshotState::Broken,
                        broken_reason: "spill disk full".into(),
                        preimages_held: 3,
                        kind: "persistent".into(),
                    })
                    .collect(),
                preimage_memory: Usage {
                    used: 10,
                    budget: 100,
                },
                preimage_disk: Usage {
                    used: 20,
                    budget: 200,
                },
                throttled_writers: 1,
                throttle_events: 2,
                snapshots_broken: 3,
                running_jobs: 0,
                schedule: Vec::new(),
                live_restores: Vec::new(),
                recovery: RecoveryStatus::default(),
            },
            throttle_seconds: 1.5,
            jobs: Vec::new(),
            volume_io: names
                .iter()
                .map(|n| VolumeIo {
                    name: n.to_string(),
                    write_ops: 7,
                    write_bytes: 70,
                    ..VolumeIo::default()
                })
                .collect(),
            backups: BackupTimes::Newest(names.iter().map(|n| (n.to_string(), 42)).collect()),
        }
    }

    #[test]
    fn hostile_names_are_escaped_in_label_values() {
        let hostile = [
            r#"a"b"#,
            r"back\slash",
            "new\nline",
            "} x{y=\"1",
            "ünï cödé",
        ];
        let text = render_metrics(&report(&hostile));
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // Every sample is one line: name, optional labels, a value; no raw newline or
        // quote breaks out of a label value.
        for line in &series {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("snarf_"), "{line}");
        }
        assert!(
            text.contains(r#"snarf_volume_write_bytes_total{volume="a\"b"} 70"#),
            "{text}"
        );
        assert!(text.contains(r#"{volume="back\\slash"}"#), "{text}");
        assert!(text.contains(r#"{snapshot="new\nline"} 1"#), "{text}");
        assert!(text.contains(r#"{volume="} x{y=\"1"}"#), "{text}");
    }

    #[test]
    fn units_are_in_the_names_and_counters_end_in_total() {
        let text = render_metrics(&report(&["v"]));
        for want in [
            "snarf_preimage_memory_bytes 10",
            "snarf_preimage_memory_budget_bytes 100",
            "snarf_preimage_disk_bytes 20",
            "snarf_preimage_disk_budget_bytes 200",
            "snarf_throttled_writers 1",
            "snarf_throttle_waits_total 2",
            "snarf_throttle_seconds_total 1.5",
            "snarf_snapshots_broken_total 3",
            "snarf_snapshots_broken_now 1",
            "snarf_jobs{state=\"running\"} 0",
            "snarf_jobs{state=\"cancelled\"} 0",
            "snarf_last_backup_timestamp_seconds{volume=\"v\"} 42",
            "snarf_volume_write_ops_total{volume=\"v\"} 7",
            "# TYPE snarf_volume_read_bytes_total counter",
            "# TYPE snarf_preimage_disk_bytes gauge",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(!text.contains("# EOF"), "0.0.4 text has no EOF marker");
    }
}
