//! What persistent snapshots are, on disk: the *snapshot table* `STORE/cow/snapshots.json`
//! (each snapshot's name, epoch, the session it was taken in, its volumes with their ids,
//! sizes and times, and whether it is live or broken with the reason), replaced atomically
//! and durable before `mkdir` returns or a broken snapshot's pre-images are freed; and one
//! *stored log* per snapshot, `STORE/cow/stored/EPOCH`, of the snarfs a backup stored
//! (their pre-images freed), appended and synced before those pre-images go.
//!
//! Everything read back is checked: names as names, epochs older than the session reading
//! them, sizes within what a volume may be. A stored log is a series of batches, each
//! `count` u32, `count` records of volume u64, first snarf u64, snarfs u64, then 16 bytes
//! of blake3 over the batch; reading stops at the first batch that is not whole (its sync
//! never finished, so nothing of it was freed).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::store::{files, validate_name, VolumeId};

/// Name of the table in `STORE/cow/`.
pub const TABLE: &str = "snapshots.json";
/// Folder of the stored logs in `STORE/cow/`.
pub const STORED: &str = "stored";
/// Largest table read (a few hundred bytes per snapshot).
const MAX_TABLE: u64 = 64 << 20;
/// Most records in one batch of a stored log.
const MAX_BATCH: u32 = 1 << 20;

/// One volume of a persistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableVolume {
    /// Its name in the snapshot.
    pub name: String,
    /// Its id in the store.
    pub id: VolumeId,
    /// Frozen size.
    pub size: u64,
    /// Frozen modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Frozen status change time.
    pub ctime_ns: i64,
    /// Bytes the backing file had allocated then.
    #[serde(default)]
    pub allocated: u64,
}

/// A snapshot's state as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// Readable.
    Live,
    /// Broken, with the reason.
    Broken(String),
}

/// One persistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Name.
    pub name: String,
    /// The epoch it froze.
    pub epoch: u64,
    /// When it was taken.
    pub created_ns: i64,
    /// The id of the store session it was taken in.
    pub session_id: String,
    /// Live or broken.
    pub state: TableState,
    /// Its volumes.
    pub volumes: Vec<TableVolume>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TableFile {
    format: u32,
    snapshots: Vec<TableEntry>,
}

/// Writes the table atomically and durably.
pub fn save(cow: &Path, entries: &[TableEntry]) -> Result<()> {
    let t = TableFile {
        format: 1,
        snapshots: entries.to_vec(),
    };
    let text = serde_json::to_vec_pretty(&t)
        .map_err(|e| Error::Internal(format!("encoding the snapshot table: {e}")))?;
    files::write_atomic(&cow.join(TABLE), &text)?;
    Ok(())
}

/// Reads the table; entries that break a rule are dropped with a warning naming why (a
/// damaged table never stops the store from opening, but what cannot be trusted is not
/// used). `first_epoch`: this session's first epoch, which every entry must predate.
pub fn load(cow: &Path, first_epoch: u64) -> Result<Vec<TableEntry>> {
    let path = cow.join(TABLE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let mut text = Vec::new();
    file.take(MAX_TABLE + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if text.len() as u64 > MAX_TABLE {
        log::error!(
            "{} is larger than any snapshot table; no persistent snapshot is restored",
            path.display()
        );
        return Ok(Vec::new());
    }
    let t: TableFile = match serde_json::from_slice(&text) {
        Ok(t) => t,
        Err(e) => {
            log::error!(
                "{} is damaged ({e}); no persistent snapshot is restored (move it aside to silence this)",
                path.display()
            );
            return Ok(Vec::new());
        }
    };
    let mut out: Vec<TableEntry> = Vec::new();
    for e in t.snapshots {
        let why = if validate_name("snapshot", &e.name).is_err() {
            Some("its name is not one a snapshot may have".to_string())
        } else if e.epoch >= first_epoch || e.epoch == 0 {
            Some(format!(
                "its epoch {:#x} was never reached by an earlier session",
                e.epoch
            ))
        } else if out.iter().any(|o| o.name == e.name || o.epoch == e.epoch) {
            Some("another snapshot has its name or epoch".to_string())
        } else if e
            .volumes
            .iter()
            .any(|v| validate_name("volume", &v.name).is_err())
        {
            Some("a volume name in it is not one a volume may have".to_string())
        } else {
            None
        };
        match why {
            Some(why) => log::error!(
                "{}: snapshot {:?} is not restored: {why}",
                path.display(),
                e.name.chars().take(64).collect::<String>()
            ),
            None => out.push(e),
        }
    }
    Ok(out)
}

/// Path of a snapshot's stored log.
pub fn stored_path(cow: &Path, epoch: u64) -> PathBuf {
    cow.join(STORED).join(format!("{epoch:016x}"))
}

/// Appends a batch of stored runs `(volume, first, count)` to a snapshot's stored log and
/// syncs it (creating the log, durably, the first time).
pub fn append_stored(cow: &Path, epoch: u64, runs: &[(VolumeId, u64, u64)]) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let dir = cow.join(STORED);
    let path = stored_path(cow, epoch);
    let fresh = !path.exists();
    if fresh {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    for part in runs.chunks(MAX_BATCH as usize) {
        let mut batch = Vec::with_capacity(4 + part.len() * 24 + 16);
        batch.extend_from_slice(&(part.len() as u32).to_le_bytes());
        for &(vol, first, n) in part {
            batch.extend_from_slice(&vol.to_le_bytes());
            batch.extend_from_slice(&first.to_le_bytes());
            batch.extend_from_slice(&n.to_le_bytes());
        }
        let check = blake3::hash(&batch);
        batch.extend_from_slice(&check.as_bytes()[..16]);
        f.write_all(&batch)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    f.sync_data()
        .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    if fresh {
        // The log's name, and the folder's own name the first time, are durable before
        // any pre-image it stands for is freed.
        files::sync_dir(&dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        files::sync_dir(cow).map_err(|e| Error::io(format!("syncing {}", cow.display()), e))?;
    }
    Ok(())
}

/// Reads a snapshot's stored log: the runs of every whole batch, in order.
pub fn load_stored(cow: &Path, epoch: u64) -> Result<Vec<(VolumeId, u64, u64)>> {
    let path = stored_path(cow, epoch);
    let mut f = match File::open(&path) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let mut out = Vec::new();
    loop {
        let mut count = [0u8; 4];
        if f.read_exact(&mut count).is_err() {
            break;
        }
        let n = u32::from_le_bytes(count);
        if n == 0 || n > MAX_BATCH {
            log::warn!(
                "{}: a batch of {n} records; the rest is ignored",
                path.display()
            );
            break;
        }
        let mut body = vec![0u8; n as usize * 24 + 16];
        if f.read_exact(&mut body).is_err() {
            break;
        }
        let (records, check) = body.split_at(n as usize * 24);
        let mut hashed = count.to_vec();
        hashed.extend_from_slice(records);
        if blake3::hash(&hashed).as_bytes()[..16] != *check {
            log::warn!("{}: a damaged batch; the rest is ignored", path.display());
            break;
        }
        for r in records.chunks_exact(24) {
            let word = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap_or([0; 8]));
            out.push((word(0), word(8), word(16)));
        }
    }
    Ok(out)
}

/// Removes a snapshot's stored log (it was released).
pub fn remove_stored(cow: &Path, epoch: u64) {
    let path = stored_path(cow, epoch);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", path.display());
        }
    }
}

/// Stored logs in `cow` whose epoch is not in `keep` (left by released snapshots).
pub fn stale_stored(cow: &Path, keep: &[u64]) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(cow.join(STORED)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            (name.len() == 16)
                .then(|| u64::from_str_radix(name, 16).ok())
                .flatten()
        })
        .filter(|epoch| !keep.contains(epoch))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, epoch: u64) -> TableEntry {
        TableEntry {
            name: name.into(),
            epoch,
            created_ns: 5,
            session_id: "s".into(),
            state: TableState::Live,
            volumes: vec![TableVolume {
                name: "v".into(),
                id: 7,
                size: 100,
                mtime_ns: 1,
                ctime_ns: 2,
                allocated: 0,
            }],
        }
    }

    #[test]
    fn the_table_round_trips_and_refuses_what_cannot_be() {
        let dir = tempfile::tempdir().unwrap();
        let mut broken = entry("b", 9);
        broken.state = TableState::Broken("no room".into());
        save(dir.path(), &[entry("a", 5), broken.clone()]).unwrap();
        assert_eq!(load(dir.path(), 10).unwrap(), vec![entry("a", 5), broken]);
        // Epochs this session could not have inherited, twins and bad names are dropped.
        save(
            dir.path(),
            &[
                entry("a", 5),
                entry("a", 6),
                entry("../x", 7),
                entry("c", 99),
            ],
        )
        .unwrap();
        assert_eq!(load(dir.path(), 10).unwrap(), vec![entry("a", 5)]);
        std::fs::write(dir.path().join(TABLE), b"{garbage").unwrap();
        assert!(load(dir.path(), 10).unwrap().is_empty());
    }

    #[test]
    fn stored_logs_keep_whole_batches_only() {
        let dir = tempfile::tempdir().unwrap();
        append_stored(dir.path(), 3, &[(1, 0, 5), (2, 9, 1)]).unwrap();
        append_stored(dir.path(), 3, &[(1, 100, 2)]).unwrap();
        let path = stored_path(dir.path(), 3);
        assert_eq!(
            load_stored(dir.path(), 3).unwrap(),
            vec![(1, 0, 5), (2, 9, 1), (1, 100, 2)]
        );
        // A batch cut short by a crash is not there.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            load_stored(dir.path(), 3).unwrap(),
            vec![(1, 0, 5), (2, 9, 1)]
        );
        assert_eq!(stale_stored(dir.path(), &[4]), vec![3]);
        remove_stored(dir.path(), 3);
        assert!(load_stored(dir.path(), 3).unwrap().is_empty());
    }
}
