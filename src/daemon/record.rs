//! The daemon's record of how its store was closed, `STORE/run/daemon.json`, so `snarf
//! umount` can tell the truth: "serving" while the mount runs, then "closed" or
//! "close-failed" with the reason. A record still saying "serving" after the daemon has gone
//! means it was killed (or crashed) before it could close the store.
//!
//! The file is written once at start-up at a fixed size and later only overwritten in place
//! and fsynced, so recording a close that failed because the disk is full needs no new disk
//! space (on filesystems that overwrite in place, which is every one a store is meant for
//! except copy-on-write ones; there a failed update leaves "serving", which umount reports
//! as a close that was not confirmed: never as success).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name in the store's run folder.
pub const FILE: &str = "daemon.json";
/// Size the record is padded to, so every update overwrites the same bytes.
const RECORD_BYTES: usize = 4096;
/// Longest error text kept, leaving room for the other fields.
const MAX_ERROR_BYTES: usize = 3000;

/// Where the daemon is with its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Mounted and serving; the store is open.
    Serving,
    /// Unmounted and the store closed cleanly (flushed, tracking saved).
    Closed,
    /// Unmounted, but closing the store failed; `error` says how.
    CloseFailed,
}

/// The record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// The daemon's pid.
    pub pid: u32,
    /// Its start time (field 22 of /proc/PID/stat), so a reused pid is not mistaken for it.
    pub start_time: u64,
    /// Where it mounted the store.
    pub mountpoint: PathBuf,
    /// Where it is.
    pub phase: Phase,
    /// Why the close failed, for `close-failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the phase was recorded, seconds since the Unix epoch.
    pub at: u64,
}

/// The open record of a running daemon.
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    record: DaemonRecord,
}

fn encode(record: &DaemonRecord) -> std::io::Result<Vec<u8>> {
    let mut r = record.clone();
    if let Some(e) = &mut r.error {
        if e.len() > MAX_ERROR_BYTES {
            let mut cut = MAX_ERROR_BYTES;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
            e.push_str(" ...");
        }
    }
    let mut bytes = serde_json::to_vec(&r).map_err(std::io::Error::other)?;
    if bytes.len() >= RECORD_BYTES {
        return Err(std::io::Error::other(
            "the daemon record does not fit its file",
        ));
    }
    bytes.resize(RECORD_BYTES - 1, b' ');
    bytes.push(b'\n');
    Ok(bytes)
}

impl RecordFile {
    /// Writes the "serving" record of this process for `mountpoint` (replacing a previous
    /// daemon's), fsynced with its folder.
    pub fn start(run_dir: &Path, mountpoint: &Path) -> std::io::Result<RecordFile> {
        let (pid, start_time) = crate::pids::procfs::self_identity()?;
        let record = DaemonRecord {
            pid,
            start_time,
            mountpoint: mountpoint.to_path_buf(),
            phase: Phase::Serving,
            error: None,
            at: crate::sys::clock::now_secs(),
        };
        let path = run_dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        file.write_all_at(&encode(&record)?, 0)?;
        file.set_len(RECORD_BYTES as u64)?;
        file.sync_all()?;
        crate::sys::durable::sync_dir(run_dir)?;
        Ok(RecordFile { file, path, record })
    }

    /// Records how the close went (the error, if it failed), in place, and fsyncs it.
    pub fn finish(
        &mut self,
        closed: Result<(), &(dyn std::error::Error + 'static)>,
    ) -> std::io::Result<()> {
        self.record.phase = match &closed {
            Ok(()) => Phase::Closed,
            Err(_) => Phase::CloseFailed,
        };
        self.record.error = closed
            .err()
            .map(|e| crate::chain::Chain::new(e).to_string());
        self.record.at = crate::sys::clock::now_secs();
        self.file.write_all_at(&encode(&self.record)?, 0)?;
        self.file.sync_data()
    }

    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the record a daemon of the store left; `None` if there is none or it is unreadable.
pub fn read(run_dir: &Path) -> Option<DaemonRecord> {
    let bytes = std::fs::read(run_dir.join(FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the process the record names is still running (same pid and start time).
pub fn is_running(record: &DaemonRecord) -> bool {
    matches!(
        crate::pids::procfs::read_stat(record.pid),
        Ok(Some(s)) if !s.exited() && s.start_time == record.start_time
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_then_closed_or_failed_in_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RecordFile::start(dir.path(), Path::new("/mnt/x")).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.phase, r.pid), (Phase::Serving, std::process::id()));
        assert!(is_running(&r));
        let len = std::fs::metadata(f.path()).unwrap().len();
        let full = std::io::Error::other("closing the store: No space left on device".repeat(200));
        f.finish(Err(&full)).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!(r.phase, Phase::CloseFailed);
        assert!(r.error.unwrap().starts_with("closing the store: No space"));
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), len);
        f.finish(Ok(())).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.phase, r.error.clone()), (Phase::Closed, None));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(f.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let dead = DaemonRecord {
            start_time: r.start_time + 1,
            ..r
        };
        assert!(!is_running(&dead));
    }

    #[test]
    fn a_damaged_record_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        std::fs::write(dir.path().join(FILE), b"{\"pid\":").unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
