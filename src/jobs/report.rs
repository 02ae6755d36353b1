//! A job's report file, `STORE/run/jobs/ID.json`: what a job process started through
//! `control/jobs` tells the daemon about itself (state, progress, outcome). The job replaces
//! it atomically every second or so; the daemon reads it when `control/jobs` is read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::vocab::JobState;

/// The contents of a report file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Where the job is, in its own words: running, finishing, done or failed.
    pub state: JobState,
    /// Bytes transferred so far.
    pub done_bytes: u64,
    /// Bytes to transfer in all, once planned.
    pub total_bytes: Option<u64>,
    /// Recent rate in bytes per second.
    pub rate_bytes_per_sec: Option<u64>,
    /// The backup's id, once committed.
    pub backup_id: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The summary printed at the end.
    pub summary: Option<String>,
    /// What the prune after the commit did (the job's `keep-*` options), if it ran.
    #[serde(default)]
    pub pruned: Option<String>,
}

/// Folder of the report files of a store.
pub fn reports_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("jobs")
}

/// Path of one job's report file.
pub fn report_path(run_dir: &Path, job: &str) -> PathBuf {
    reports_dir(run_dir).join(format!("{job}.json"))
}

/// Path of one job's output (stdout and stderr of its process).
pub fn log_path(run_dir: &Path, job: &str) -> PathBuf {
    reports_dir(run_dir).join(format!("{job}.log"))
}

impl JobReport {
    /// Replaces the report file atomically and durably (a reader sees the old or the new
    /// one, also after a power cut), mode 0600.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        Ok(crate::sys::durable::replace(
            path,
            &json,
            crate::sys::durable::PRIVATE,
        )?)
    }

    /// Reads a report file; `None` if there is none (yet) or it is unreadable.
    pub fn read(path: &Path) -> Option<JobReport> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j1.json");
        assert_eq!(JobReport::read(&path), None);
        let r = JobReport {
            state: JobState::Running,
            done_bytes: 10,
            total_bytes: Some(100),
            rate_bytes_per_sec: Some(5),
            backup_id: None,
            error: None,
            summary: None,
            pruned: None,
        };
        r.write(&path).unwrap();
        assert_eq!(JobReport::read(&path), Some(r));
    }

    #[test]
    fn a_report_is_private_and_never_written_through_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("j2.json");
        // The temporary name reports were written to before.
        std::os::unix::fs::symlink(&victim, dir.path().join("j2.json.tmp")).unwrap();
        let r = JobReport {
            state: JobState::Done,
            done_bytes: 1,
            total_bytes: Some(1),
            rate_bytes_per_sec: None,
            backup_id: Some("20240501-120000-abcd".into()),
            error: None,
            summary: Some("repo /srv/repo".into()),
            pruned: None,
        };
        r.write(&path).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(JobReport::read(&path), Some(r));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
