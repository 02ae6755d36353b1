//! What `control/metrics` collects: the daemon decides which figures a scrape shows and
//! gathers them from the engine (pre-images, throttling, snapshots, live I/O), the jobs and
//! the mount's repository; [`crate::control::render_metrics`] only encodes them.

use std::collections::BTreeMap;

use super::Daemon;
use crate::control::{BackupTimes, MetricsReport, VolumeIo};

impl Daemon {
    /// The figures `control/metrics` shows now.
    pub fn metrics_report(&self) -> MetricsReport {
        let stats = self.engine.stats();
        let volume_io = self
            .engine
            .store()
            .volumes()
            .into_iter()
            .map(|(name, v)| {
                let c = v.io().counts();
                VolumeIo {
                    name,
                    read_ops: c.read_ops,
                    read_bytes: c.read_bytes,
                    write_ops: c.write_ops,
                    write_bytes: c.write_bytes,
                }
            })
            .collect();
        MetricsReport {
            status: self.status(),
            throttle_seconds: stats.throttled_ns as f64 / 1e9,
            jobs: self.job_rows(),
            volume_io,
            backups: self.backup_times(),
        }
    }

    /// The newest committed backup of each volume in the mount's repository. Read only: a
    /// scrape never completes a finishing or takes the repository's lock.
    fn backup_times(&self) -> BackupTimes {
        if self.repo_path.is_none() {
            return BackupTimes::NoRepository;
        }
        let listed = self
            .repository()
            .and_then(|r| r.map(|r| r.list_backups()).transpose());
        match listed {
            Ok(manifests) => {
                let mut newest: BTreeMap<String, u64> = BTreeMap::new();
                for m in manifests.unwrap_or_default() {
                    for v in &m.volumes {
                        let t = newest.entry(v.name.clone()).or_default();
                        *t = (*t).max(m.created);
                    }
                }
                BackupTimes::Newest(newest.into_iter().collect())
            }
            Err(e) => {
                log::debug!("metrics: reading the repository's backups: {e}");
                BackupTimes::Unreadable
            }
        }
    }
}
