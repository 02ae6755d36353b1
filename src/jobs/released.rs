//! Snarfs a snapshot handed to a backup: once a job has stored a snarf, the daemon frees its
//! pre-image, so a later read of that snarf through the snapshot must come from the
//! repository; [`Released`] is that source of the snapshot layer's reads
//! ([`crate::snapshot::StoredSnarfs`]). This table remembers, per snapshot, where each acknowledged snarf was
//! stored, and keeps those packs from garbage collection (a repository *pin*) until the
//! snapshot is released, even if the backup that stored them is abandoned.
//!
//! Memory stays bounded: the chunk references live in sparse files of fixed records under
//! `STORE/run/released/EPOCH/` (one file per volume, record `i` at `72 * i`; an all-zero
//! record means "not stored"), so their disk use follows the snarfs recorded:
//!
//! ```text
//! 0..64   the chunk reference, in the encoding of the format below
//! 64..68  the repository number (its place in meta.json's list), u32 LE
//! 68      the reference's format: 0 format 1 (tables written before format 2 acks had a
//!         zero there, and still read the same), 2 format 2; anything else is refused
//! 69..72  reserved, zero
//! ```
//!
//! A format 1 record whose repository was upgraded to format 2 since is read as the legacy
//! blob the upgrade kept in place. `meta.json` beside
//! them lists the pin name and the repositories, so a daemon that crashed is cleaned up at
//! its next start; it is durable (with every folder above it up to run/) before the first
//! pin, since it must outlive a power cut as long as its pin does.
//!
//! A persistent snapshot outlives the daemon, and so does its table: records are synced
//! before the engine frees the pre-images they replace, and the next daemon adopts the
//! tables of the snapshots the engine restored (keeping their pins). The tables of
//! snapshots that are gone (released, broken, volatile) are removed with their pins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::proto::StoredChunk;
use super::{Error, Result};
use crate::chain::ErrorChain;
use crate::repo::chunk::REF_LEN;
use crate::repo::{v2, Handle, Location, PackId};
use crate::snapshot::{Engine, SnapState, Snapshot, StoredSnarfs};
use crate::store::files::sync_dir;
use crate::store::VolumeId;
use crate::sys::durable;

/// Bytes of one record.
pub const RECORD_LEN: u64 = 72;
/// Name of the folder under the store's run folder.
pub const DIR: &str = "released";
/// Decompressed chunks kept for repeated reads of the same snarf.
const CACHE_CHUNKS: usize = 16;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    pin: String,
    snapshot: String,
    repos: Vec<PathBuf>,
}

struct SnapTable {
    snap: Arc<Snapshot>,
    dir: PathBuf,
    pin: String,
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    /// The repositories by number: open, or (adopted from an earlier daemon) not there now.
    repos: Vec<Option<Handle>>,
    /// Their paths, by the same number.
    paths: Vec<PathBuf>,
    pinned: Vec<HashSet<PackId>>,
    files: HashMap<VolumeId, Arc<File>>,
    /// Files written since their last sync.
    unsynced: HashSet<VolumeId>,
}

/// The released-snarf tables of every snapshot of one store; see the module documentation.
pub struct Released {
    dir: PathBuf,
    store_id: String,
    tables: Mutex<HashMap<u64, Arc<SnapTable>>>,
    cache: Mutex<VecDeque<(StoredChunk, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Released")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Released {
    /// Opens the tables folder in `run_dir`: the tables of `engine`'s live persistent
    /// snapshots are adopted, everything else a previous daemon left is removed (with its
    /// pins).
    pub fn open(run_dir: &Path, store_id: &str, engine: &Engine) -> Result<Released> {
        let dir = run_dir.join(DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let r = Released {
            dir,
            store_id: store_id.to_string(),
            tables: Mutex::new(HashMap::new()),
            cache: Mutex::new(VecDeque::new()),
        };
        r.take_over(engine);
        Ok(r)
    }

    fn take_over(&self, engine: &Engine) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let snaps: HashMap<u64, Arc<Snapshot>> = engine
            .list()
            .iter()
            .filter_map(|i| engine.snapshot(&i.name).ok())
            .filter(|s| s.is_persistent() && s.state() == SnapState::Live)
            .map(|s| (s.epoch(), s))
            .collect();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::read(path.join("meta.json"))
                .ok()
                .and_then(|text| serde_json::from_slice::<Meta>(&text).ok());
            let snap = u64::from_str_radix(&name, 16)
                .ok()
                .filter(|_| name.len() == 16)
                .and_then(|epoch| snaps.get(&epoch));
            if let Some(snap) = snap {
                match self.adopt(&path, snap, meta.as_ref()) {
                    Ok(()) => continue,
                    Err(e) => log::warn!(
                        "the released-snarf table {} of snapshot \"{}\" cannot be used: {}",
                        path.display(),
                        snap.name(),
                        e.chain()
                    ),
                }
            }
            if let Some(meta) = meta {
                unpin_all(&meta.pin, &meta.repos);
            }
            if let Err(e) = std::fs::remove_dir_all(&path) {
                log::warn!("removing {}: {e}", path.display());
            }
        }
    }

    /// Takes over the table an earlier daemon kept for `snap` at `dir`.
    fn adopt(&self, dir: &Path, snap: &Arc<Snapshot>, meta: Option<&Meta>) -> Result<()> {
        let mut inner = TableInner::default();
        let pin = match meta {
            Some(m) => {
                if crate::store::validate_name("pin", &m.pin).is_err() {
                    return Err(Error::Protocol(format!(
                        "its pin name {:?} is not one",
                        m.pin
                    )));
                }
                for path in &m.repos {
                    let repo = open_repo(path)
                        .map_err(|e| {
                            log::warn!(
                                "repository {} of snapshot \"{}\" cannot be opened now ({}); its snarfs are read from there once it is back",
                                path.display(),
                                snap.name(),
                                e.chain()
                            )
                        })
                        .ok();
                    inner.repos.push(repo);
                    inner.paths.push(path.clone());
                    inner.pinned.push(HashSet::new());
                }
                m.pin.clone()
            }
            None => self.pin_name(snap),
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(vol) = name
                .strip_suffix(".tbl")
                .filter(|h| h.len() == 16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .map_err(|err| Error::io(format!("opening {}", e.path().display()), err))?;
            inner.files.insert(vol, Arc::new(f));
        }
        self.tables.lock().insert(
            snap.epoch(),
            Arc::new(SnapTable {
                snap: snap.clone(),
                dir: dir.to_path_buf(),
                pin,
                inner: Mutex::new(inner),
            }),
        );
        Ok(())
    }

    fn pin_name(&self, snap: &Snapshot) -> String {
        let short: String = self.store_id.chars().take(16).collect();
        format!("snapshot-{short}-{:x}", snap.epoch())
    }

    fn table(&self, snap: &Arc<Snapshot>) -> Result<Arc<SnapTable>> {
        let mut tables = self.tables.lock();
        if let Some(t) = tables.get(&snap.epoch()) {
            return Ok(t.clone());
        }
        let dir = self.dir.join(format!("{:016x}", snap.epoch()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        if snap.is_persistent() {
            crate::store::files::sync_dir(&self.dir)
                .map_err(|e| Error::io(format!("syncing {}", self.dir.display()), e))?;
        }
        let t = Arc::new(SnapTable {
            snap: snap.clone(),
            dir,
            pin: self.pin_name(snap),
            inner: Mutex::new(TableInner::default()),
        });
        tables.insert(snap.epoch(), t.clone());
        Ok(t)
    }

    /// Pins `packs` of `repo` for `snap` (those not pinned yet), so no gc that starts from
    /// now on removes them while the snapshot may read from them.
    pub fn pin(&self, snap: &Arc<Snapshot>, repo: &Handle, packs: &[PackId]) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let t = self.table(snap)?;
        let mut inner = t.inner.lock();
        let rn = Self::repo_number(&t, &mut inner, snap, repo)?;
        let mut seen = HashSet::new();
        let new: Vec<PackId> = packs
            .iter()
            .copied()
            .filter(|p| !inner.pinned[rn].contains(p) && seen.insert(*p))
            .collect();
        if !new.is_empty() {
            match repo {
                Handle::V1(r) => r.pin(&t.pin, &new)?,
                Handle::V2(r) => r.pin(&t.pin, &new)?,
            }
            inner.pinned[rn].extend(new);
        }
        Ok(())
    }

    /// The table's number for `repo`, added (with its meta file, before any pin) if new.
    fn repo_number(
        t: &SnapTable,
        inner: &mut TableInner,
        snap: &Snapshot,
        repo: &Handle,
    ) -> Result<usize> {
        let path = repo.local_path().ok_or_else(|| {
            Error::Protocol(format!(
                "{} is not a local folder; the mount reads freed snarfs only from one",
                repo.location()
            ))
        })?;
        if let Some(n) = inner.paths.iter().position(|p| p == path) {
            if inner.repos[n].is_none() {
                inner.repos[n] = Some(repo.clone());
            }
            return Ok(n);
        }
        inner.repos.push(Some(repo.clone()));
        inner.paths.push(path.to_path_buf());
        inner.pinned.push(HashSet::new());
        // Durable before the first pin, so a crash leaves enough to unpin (or to adopt).
        let meta = Meta {
            pin: t.pin.clone(),
            snapshot: snap.name().to_string(),
            repos: inner.paths.clone(),
        };
        let path = t.dir.join("meta.json");
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Protocol(e.to_string()))?;
        let released = t.dir.parent();
        // Replaced atomically (the next daemon may adopt it, and a meta file cut while
        // naming a second repository must still name the first, whose pin would otherwise
        // stay for ever), durable with every folder above it up to run/.
        durable::replace(&path, &text, durable::PRIVATE)
            .map_err(crate::sys::Error::into_io)
            .and_then(|_| released.map_or(Ok(()), sync_dir))
            .and_then(|_| released.and_then(Path::parent).map_or(Ok(()), sync_dir))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(inner.repos.len() - 1)
    }

    /// Records that snarfs of `snap` are stored in `repo` at the given chunks, pinning
    /// packs not pinned yet. Call it before freeing the pre-images. Every snarf must be
    /// inside its volume in the snapshot (the caller checked the acknowledgement).
    pub fn record(
        &self,
        snap: &Arc<Snapshot>,
        repo: &Handle,
        items: &[(VolumeId, u64, StoredChunk)],
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        for (vol, snarf, _) in items {
            let inside = snap
                .volume_by_id(*vol)
                .is_some_and(|sv| *snarf < sv.snarf_count());
            if !inside {
                return Err(Error::Protocol(format!(
                    "snarf {snarf} of volume {vol:016x} is not in snapshot \"{}\"",
                    snap.name()
                )));
            }
        }
        let packs: Vec<PackId> = items
            .iter()
            .filter(|(_, _, c)| !c.is_zero())
            .map(|(_, _, c)| c.pack())
            .collect();
        self.pin(snap, repo, &packs)?;
        let t = self.table(snap)?;
        let mut inner = t.inner.lock();
        let rn = Self::repo_number(&t, &mut inner, snap, repo)?;
        let mut created = false;
        for (vol, snarf, chunk) in items {
            let file = match inner.files.get(vol) {
                Some(f) => f.clone(),
                None => {
                    created = true;
                    let path = t.dir.join(format!("{vol:016x}.tbl"));
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o600)
                        .open(&path)
                        .map(Arc::new)
                        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                    inner.files.insert(*vol, f.clone());
                    f
                }
            };
            let mut rec = [0u8; RECORD_LEN as usize];
            rec[..REF_LEN].copy_from_slice(&chunk.encode());
            rec[REF_LEN..REF_LEN + 4].copy_from_slice(&(rn as u32).to_le_bytes());
            rec[REF_LEN + 4] = match chunk {
                StoredChunk::V1(_) => 0,
                StoredChunk::V2(_) => 2,
            };
            let at = record_offset(*snarf)?;
            file.write_all_at(&rec, at)
                .map_err(|e| Error::io(format!("writing {}", t.dir.display()), e))?;
            inner.unsynced.insert(*vol);
        }
        if snap.is_persistent() {
            // Durable before the engine frees the pre-images: the snapshot outlives us.
            for vol in std::mem::take(&mut inner.unsynced) {
                if let Some(f) = inner.files.get(&vol) {
                    f.sync_data()
                        .map_err(|e| Error::io(format!("syncing {}", t.dir.display()), e))?;
                }
            }
            if created {
                crate::store::files::sync_dir(&t.dir)
                    .map_err(|e| Error::io(format!("syncing {}", t.dir.display()), e))?;
            }
        }
        Ok(())
    }

    /// Where snarf `snarf` of volume `vol` of `snap` was stored, if a backup acknowledged it.
    pub fn lookup(
        &self,
        snap: &Snapshot,
        vol: VolumeId,
        snarf: u64,
    ) -> Result<Option<(Handle, StoredChunk)>> {
        let Some(t) = self.tables.lock().get(&snap.epoch()).cloned() else {
            return Ok(None);
        };
        let inner = t.inner.lock();
        let Some(file) = inner.files.get(&vol) else {
            return Ok(None);
        };
        let mut rec = [0u8; RECORD_LEN as usize];
        match file.read_exact_at(&mut rec, record_offset(snarf)?) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", t.dir.display()), e)),
        }
        let mut r = [0u8; REF_LEN];
        r.copy_from_slice(&rec[..REF_LEN]);
        let format = match rec[REF_LEN + 4] {
            0 => 1,
            2 => 2,
            other => {
                return Err(Error::Protocol(format!(
                    "released-snarf table {} holds a record of format {other} for snarf {snarf}, which this snarf does not know",
                    t.dir.display()
                )))
            }
        };
        let Some(chunk) = StoredChunk::decode(format, &r) else {
            return Ok(None);
        };
        let rn = u32::from_le_bytes([rec[64], rec[65], rec[66], rec[67]]) as usize;
        drop(inner);
        let mut inner = t.inner.lock();
        let Some(path) = inner.paths.get(rn).cloned() else {
            return Err(Error::Protocol(format!(
                "released-snarf table {} names repository {rn}, which it does not list",
                t.dir.display()
            )));
        };
        let repo = match &inner.repos[rn] {
            Some(repo) => repo.clone(),
            None => {
                let repo = open_repo(&path).map_err(|e| {
                    Error::FreedSnarf(format!(
                        "snarf {snarf} of snapshot \"{}\" was freed after a backup stored it in the repository {}, which cannot be opened ({}); put it back at that path to read this snapshot again",
                        snap.name(),
                        path.display(),
                        e.chain()
                    ))
                })?;
                inner.repos[rn] = Some(repo.clone());
                repo
            }
        };
        Ok(Some((repo, chunk)))
    }

    /// Reads bytes `offset..offset + buf.len()` of snarf `snarf` of volume `volume` of
    /// `snap` from the repository a backup stored it in (hash-checked).
    pub fn read(
        &self,
        snap: &Snapshot,
        volume: &str,
        snarf: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let sv = snap
            .volume(volume)
            .ok_or_else(|| crate::snapshot::Error::NoSuchVolume {
                snapshot: snap.name().to_string(),
                volume: volume.to_string(),
            })?;
        let Some((repo, chunk)) = self.lookup(snap, sv.volume.id(), snarf)? else {
            return Err(crate::snapshot::Error::Internal(format!(
                "snarf {snarf} of volume \"{volume}\" in snapshot \"{}\" was handed to a backup but the daemon has no record of where it was stored",
                snap.name()
            ))
            .into());
        };
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .filter(|r| r.end <= chunk.raw_len() as usize)
            .ok_or_else(|| {
                Error::from(crate::snapshot::Error::Internal(format!(
                    "read of {} bytes at {offset} of a {}-byte snarf",
                    buf.len(),
                    chunk.raw_len()
                )))
            })?;
        if chunk.is_zero() {
            buf.fill(0);
            return Ok(());
        }
        // Keyed by the whole reference: the same id with another length is another chunk
        // (a bad record must not get a cached chunk of another size).
        let cached = self
            .cache
            .lock()
            .iter()
            .find(|(r, _)| *r == chunk)
            .map(|(_, d)| d.clone());
        let data = match cached {
            Some(d) => d,
            None => {
                let d = Arc::new(read_chunk(&repo, &chunk).map_err(|e| {
                    Error::FreedSnarf(format!(
                        "snarf {snarf} of \"{volume}\" in snapshot \"{}\" was freed after a backup stored it in the repository {}, and reading it back failed: {e}{}",
                        snap.name(),
                        repo.location(),
                        if repo.is_present() {
                            ""
                        } else {
                            "; the repository is no longer there: put it back at that path to read this snapshot again"
                        },
                        e = e.chain()
                    ))
                })?);
                let mut c = self.cache.lock();
                if c.len() >= CACHE_CHUNKS {
                    c.pop_front();
                }
                c.push_back((chunk, d.clone()));
                d
            }
        };
        let bytes = data.get(range).ok_or_else(|| {
            Error::from(crate::snapshot::Error::Internal(format!(
                "chunk {} holds {} bytes, not the {} its record says",
                chunk.id().short(),
                data.len(),
                chunk.raw_len()
            )))
        })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    /// Drops the tables (and pins) of snapshots that are no longer readable (released or
    /// broken). Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let gone: Vec<Arc<SnapTable>> = {
            let mut tables = self.tables.lock();
            let keys: Vec<u64> = tables
                .iter()
                .filter(|(_, t)| t.snap.state() != SnapState::Live)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| tables.remove(k)).collect()
        };
        for t in &gone {
            drop_table(t);
        }
        gone.len()
    }

    /// Drops every table and pin except those of live persistent snapshots, which the
    /// next daemon adopts (the daemon is stopping).
    pub fn clear(&self) {
        let gone: Vec<Arc<SnapTable>> = {
            let mut tables = self.tables.lock();
            let keys: Vec<u64> = tables
                .iter()
                .filter(|(_, t)| !(t.snap.is_persistent() && t.snap.state() == SnapState::Live))
                .map(|(k, _)| *k)
                .collect();
            let gone = keys.iter().filter_map(|k| tables.remove(k)).collect();
            tables.clear();
            gone
        };
        for t in &gone {
            drop_table(t);
        }
        self.cache.lock().clear();
    }

    /// Number of snapshots with a table.
    pub fn len(&self) -> usize {
        self.tables.lock().len()
    }

    /// Whether no snapshot has a table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Snapshot reads plug the repository in here: a snarf a backup stored is read back from
/// the repository it was stored in.
impl StoredSnarfs for Released {
    type Error = Error;

    fn read_stored(
        &self,
        snap: &Snapshot,
        volume: &str,
        snarf: u64,
        within: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        self.read(snap, volume, snarf, within, buf)
    }
}

/// Opens the repository of a table (either format), completing nothing: the job writing
/// it may be running.
fn open_repo(path: &Path) -> crate::repo::Result<Handle> {
    Handle::open_quiet(&Location::local(path))
}

/// Removes pin `name` from `repo`.
fn unpin(repo: &Handle, name: &str) -> crate::repo::Result<()> {
    match repo {
        Handle::V1(r) => r.unpin(name),
        Handle::V2(r) => r.unpin(name),
    }
}

/// Reads and verifies the stored chunk `c` from `repo`. A format 1 chunk of a repository
/// upgraded to format 2 since is the legacy blob the upgrade kept where it was.
fn read_chunk(repo: &Handle, c: &StoredChunk) -> crate::repo::Result<Vec<u8>> {
    match (repo, c) {
        (Handle::V1(r), StoredChunk::V1(c)) => r.read_chunk_at(c),
        (Handle::V2(r), StoredChunk::V2(c)) => r.read_blob(c),
        (Handle::V2(r), StoredChunk::V1(c)) => r.read_blob(&v2::chunk::ChunkRef {
            id: c.id,
            kind: v2::chunk::BlobKind::Legacy,
            pack: c.pack,
            offset: c.offset,
            stored_len: c.stored_len,
            within: 0,
            raw_len: c.raw_len,
        }),
        (Handle::V1(r), StoredChunk::V2(_)) => Err(crate::repo::Error::BadArgument(format!(
            "{} is a format 1 repository, but a backup into it was recorded with a format 2 chunk",
            r.path().display()
        ))),
    }
}

/// Where snarf `snarf`'s record is in a table file; an error rather than a wrapped offset
/// for a snarf no volume can have.
fn record_offset(snarf: u64) -> Result<u64> {
    snarf.checked_mul(RECORD_LEN).ok_or_else(|| {
        Error::Protocol(format!(
            "snarf {snarf} is beyond any volume (its table record would be past 2^64 bytes)"
        ))
    })
}

fn drop_table(t: &SnapTable) {
    let inner = t.inner.lock();
    for (repo, path) in inner.repos.iter().zip(&inner.paths) {
        let Some(repo) = repo else {
            unpin_all(&t.pin, std::slice::from_ref(path));
            continue;
        };
        if let Err(e) = unpin(repo, &t.pin) {
            log::warn!(
                "could not remove pin {} from repository {}: {e}; remove {}/pins/{} by hand",
                t.pin,
                path.display(),
                path.display(),
                t.pin,
                e = e.chain()
            );
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&t.dir) {
        log::warn!("removing {}: {e}", t.dir.display());
    }
}

fn unpin_all(pin: &str, repos: &[PathBuf]) {
    for path in repos {
        match open_repo(path).and_then(|r| unpin(&r, pin)) {
            Ok(()) => {}
            Err(e) => log::warn!(
                "could not remove pin {pin} left in {} by an earlier mount: {e}",
                path.display(),
                e = e.chain()
            ),
        }
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        self.clear();
    }
}
