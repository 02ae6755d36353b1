//! Starting a backup job from the mount daemon (a `backup` line written to
//! `control/jobs`): the daemon runs `snarf backup STORE SNAPSHOT ...` as its own process, so
//! the job can fail or be killed without touching the mount, and watches it: the job's
//! stderr goes to the daemon's log, and a job that fails before it ever connects still shows
//! in the listing with its error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Weak;

use super::plan::Mode;
use super::server::JobServer;

/// What to back up, as written to `control/jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnRequest {
    /// The snapshot.
    pub snapshot: String,
    /// The repository; the store's default if `None`.
    pub repo: Option<PathBuf>,
    /// Only these volumes.
    pub volumes: Option<Vec<String>>,
    /// Full, incremental or auto.
    pub mode: Mode,
}

/// The command line of the job process.
pub fn command_line(store: &Path, req: &SpawnRequest) -> Vec<String> {
    let mut args = vec![
        "backup".to_string(),
        store.display().to_string(),
        req.snapshot.clone(),
        "--mode".to_string(),
        req.mode.as_str().to_string(),
    ];
    if let Some(r) = &req.repo {
        args.push("--repo".into());
        args.push(r.display().to_string());
    }
    for v in req.volumes.iter().flatten() {
        args.push("--volume".into());
        args.push(v.clone());
    }
    args
}

/// Starts the job process with `exe` (this snarf binary) and watches it; returns its pid.
/// `server` is told how the process ended.
pub fn spawn_backup(
    exe: &Path,
    store: &Path,
    req: &SpawnRequest,
    server: Weak<parking_lot::Mutex<Option<JobServer>>>,
) -> std::io::Result<u32> {
    let mut child = Command::new(exe)
        .args(command_line(store, req))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let snapshot = req.snapshot.clone();
    std::thread::Builder::new()
        .name(format!("snarf-job-watch-{pid}"))
        .spawn(move || {
            let mut last = String::new();
            if let Some(err) = stderr {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    log::info!("backup job {pid}: {line}");
                    if let Some(msg) = line.strip_prefix("snarf: ") {
                        last = msg.to_string();
                    }
                }
            }
            let status = child.wait();
            let failure = match status {
                Ok(s) if s.success() => None,
                Ok(s) => Some(if last.is_empty() {
                    format!("the job process exited with {s}")
                } else {
                    last
                }),
                Err(e) => Some(format!("waiting for the job process: {e}")),
            };
            if let Some(server) = server.upgrade() {
                if let Some(s) = server.lock().as_ref() {
                    s.note_exit(pid, &snapshot, failure);
                }
            }
        })?;
    Ok(pid)
}
