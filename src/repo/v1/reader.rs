//! Reading backups back: [`VolumeReader`] gives random access to one volume of a committed
//! backup (chunks fetched on demand, hash-checked on every fetch, a bounded LRU cache of
//! decompressed chunks, zero snarfs served without I/O), and `Repo::restore` writes volumes out as
//! sparse files. A damaged or missing chunk is always an error naming backup, volume and
//! byte offset, never silently wrong data.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::chunk::{self, ChunkRef};
use super::error::{Error, Fix, IoContext, Result};
use super::ids::{ChunkId, PackId};
use super::manifest::{Manifest, Table, VolumeEntry};
use super::pack;
use super::Repo;
pub use crate::repo::report::{RestoreProgress, RestoreSummary};

/// Default size of a reader's cache of decompressed chunks.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;
/// Open pack files a reader keeps.
const OPEN_PACKS: usize = 16;

/// Opens a sealed pack, with a clear error if it is missing.
pub(crate) fn open_pack(repo: &Repo, id: &PackId) -> Result<File> {
    let path = repo.pack_path(id);
    File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::PackMissing {
                repo: repo.path().to_path_buf(),
                pack: id.to_string(),
                path,
            }
        } else {
            Error::io(format!("opening {}", path.display()), e)
        }
    })
}

/// Reads, decompresses and verifies chunk `r` from its open pack.
pub(crate) fn fetch(repo: &Repo, file: &File, r: &ChunkRef) -> Result<Vec<u8>> {
    let damaged = |why: String| Error::PackDamaged {
        repo: repo.path().to_path_buf(),
        pack: r.pack.to_string(),
        offset: r.offset,
        why,
    };
    let stored = pack::read_stored(file, r).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            damaged(format!(
                "chunk {} runs past the end of the pack",
                r.id.short()
            ))
        } else {
            Error::io(format!("reading pack {}", r.pack), e)
        }
    })?;
    chunk::decode(&stored, r).map_err(damaged)
}

/// A small LRU of decompressed chunks, bounded in bytes.
struct Cache {
    limit: usize,
    bytes: usize,
    tick: u64,
    map: HashMap<ChunkId, (Arc<Vec<u8>>, u64)>,
}

impl Cache {
    fn get(&mut self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(id).map(|(d, t)| {
            *t = tick;
            d.clone()
        })
    }

    fn put(&mut self, id: ChunkId, data: Arc<Vec<u8>>) {
        if data.len() > self.limit {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        if let Some((old, _)) = self.map.insert(id, (data, self.tick)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.limit {
            // A linear scan is fine: the cache holds at most a few thousand chunks.
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&oldest) {
                self.bytes -= d.len();
            }
        }
    }
}

/// Random access to one volume of a committed backup; safe to share between threads.
pub struct VolumeReader {
    repo: Repo,
    backup: String,
    volume: VolumeEntry,
    table: Table,
    cache: Mutex<Cache>,
    packs: Mutex<HashMap<PackId, Arc<File>>>,
}

impl VolumeReader {
    /// Opens volume `volume` of backup `backup`.
    pub fn open(repo: &Repo, backup: &str, volume: &str) -> Result<VolumeReader> {
        let m = repo.backup(backup)?;
        Self::open_entry(repo, &m, volume)
    }

    fn open_entry(repo: &Repo, m: &Manifest, volume: &str) -> Result<VolumeReader> {
        let entry = m
            .volume(volume)
            .cloned()
            .ok_or_else(|| Error::NoSuchVolume {
                backup: m.id.to_string(),
                volume: volume.to_string(),
                known: m
                    .volumes
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let table = Table::open(
            repo.path(),
            &repo.backups_dir().join(m.id.as_str()).join(&entry.table),
        )?;
        if table.size() != entry.size || table.snarf_size() != entry.snarf_size {
            return Err(Error::Damaged {
                repo: repo.path().to_path_buf(),
                path: table.path().to_path_buf(),
                why: format!(
                    "its geometry ({} bytes, snarf {}) disagrees with the manifest ({} bytes, snarf {})",
                    table.size(),
                    table.snarf_size(),
                    entry.size,
                    entry.snarf_size
                ),
                fix: Fix::Check,
            });
        }
        Ok(VolumeReader {
            repo: repo.clone(),
            backup: m.id.to_string(),
            volume: entry,
            table,
            cache: Mutex::new(Cache {
                limit: DEFAULT_CACHE_BYTES,
                bytes: 0,
                tick: 0,
                map: HashMap::new(),
            }),
            packs: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the cache size in bytes (0 disables caching).
    pub fn set_cache_bytes(&self, limit: usize) {
        let mut c = self.cache.lock();
        c.limit = limit;
        c.map.clear();
        c.bytes = 0;
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.volume.size
    }

    /// Snarf size in bytes.
    pub fn snarf_size(&self) -> u32 {
        self.volume.snarf_size
    }

    /// Number of snarfs.
    pub fn snarf_count(&self) -> u64 {
        self.table.count()
    }

    /// The backup's id.
    pub fn backup(&self) -> &str {
        &self.backup
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.volume.name
    }

    fn err_at(&self, snarf: u64, e: Error) -> Error {
        e.at(
            &self.backup,
            &self.volume.name,
            snarf * self.volume.snarf_size as u64,
        )
    }

    /// Where snarf `snarf` is stored (for incremental backups: `BackupWriter::reuse`).
    pub fn chunk_ref(&self, snarf: u64) -> Result<ChunkRef> {
        if snarf >= self.table.count() {
            return Err(Error::BadArgument(format!(
                "volume \"{}\" has {} snarfs; snarf {snarf} does not exist",
                self.volume.name,
                self.table.count()
            )));
        }
        self.table
            .get(snarf)
            .map_err(|e| self.err_at(snarf, e))?
            .ok_or_else(|| self.missing_record(snarf))
    }

    /// The error for a table with a blank record where a snarf must be.
    fn missing_record(&self, snarf: u64) -> Error {
        self.err_at(
            snarf,
            Error::Damaged {
                repo: self.repo.path().to_path_buf(),
                path: self.table.path().to_path_buf(),
                why: format!("it has no record for snarf {snarf}"),
                fix: Fix::Check,
            },
        )
    }

    /// The chunk references of snarfs `first..first + n` (clamped to the volume), read in
    /// one go: what an incremental backup copies for a run of unchanged snarfs.
    pub fn chunk_refs(&self, first: u64, n: u64) -> Result<Vec<ChunkRef>> {
        let n = n.min(self.table.count().saturating_sub(first));
        let refs = self
            .table
            .get_run(first, n)
            .map_err(|e| self.err_at(first, e))?;
        refs.into_iter()
            .zip(first..)
            .map(|(r, snarf)| r.ok_or_else(|| self.missing_record(snarf)))
            .collect()
    }

    /// True if snarf `snarf` is all zeros (a hole in sparse output).
    pub fn is_zero(&self, snarf: u64) -> Result<bool> {
        Ok(self.chunk_ref(snarf)?.is_zero())
    }

    fn pack_file(&self, id: &PackId) -> Result<Arc<File>> {
        let mut packs = self.packs.lock();
        if let Some(f) = packs.get(id) {
            return Ok(f.clone());
        }
        let f = Arc::new(open_pack(&self.repo, id)?);
        if packs.len() >= OPEN_PACKS {
            packs.clear();
        }
        packs.insert(*id, f.clone());
        Ok(f)
    }

    /// The data of snarf `snarf`, verified; `None` for an all-zero snarf.
    pub fn read_snarf(&self, snarf: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let r = self.chunk_ref(snarf)?;
        if r.is_zero() {
            return Ok(None);
        }
        if let Some(d) = self.cache.lock().get(&r.id) {
            return Ok(Some(d));
        }
        let data = self
            .pack_file(&r.pack)
            .and_then(|f| fetch(&self.repo, &f, &r))
            .map_err(|e| self.err_at(snarf, e))?;
        let data = Arc::new(data);
        self.cache.lock().put(r.id, data.clone());
        Ok(Some(data))
    }

    /// The first offset at or after `offset` that holds data (lseek SEEK_DATA), in whole
    /// snarfs; `None` if only holes follow.
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        let ss = self.volume.snarf_size as u64;
        let mut s = offset / ss;
        while s < self.table.count() {
            if !self.is_zero(s)? {
                return Ok(Some(offset.max(s * ss)));
            }
            s += 1;
        }
        Ok(None)
    }

    /// The first offset at or after `offset` in a hole (lseek SEEK_HOLE), in whole snarfs;
    /// the volume size if no hole follows (the end counts as a hole, as in lseek).
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        crate::repo::span::seek_hole(
            self.volume.size,
            self.volume.snarf_size,
            self.table.count(),
            offset,
            |s| self.is_zero(s),
        )
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at end of volume).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        crate::repo::span::read_at(
            self.volume.size,
            self.volume.snarf_size,
            offset,
            buf,
            |snarf| self.read_snarf(snarf),
        )
    }
}

/// Restores volumes of a backup into `dest` (see [`Repo::restore`]).
pub(crate) fn restore(
    repo: &Repo,
    backup: &str,
    volume: Option<&str>,
    dest: &Path,
    progress: &mut dyn FnMut(&RestoreProgress),
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let m = repo.backup(backup)?;
    let names: Vec<String> = match volume {
        Some(v) => {
            if m.volume(v).is_none() {
                return Err(Error::NoSuchVolume {
                    backup: m.id.to_string(),
                    volume: v.to_string(),
                    known: m
                        .volumes
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            vec![v.to_string()]
        }
        None => m.volumes.iter().map(|v| v.name.clone()).collect(),
    };
    std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    for n in &names {
        let p = dest.join(n);
        if p.exists() {
            return Err(Error::DestinationExists { path: p });
        }
    }
    let total: u64 = names
        .iter()
        .filter_map(|n| m.volume(n))
        .map(|v| v.size)
        .sum();
    let mut summary = RestoreSummary::default();
    let mut done = 0u64;
    for n in &names {
        let reader = VolumeReader::open_entry(repo, &m, n)?;
        // Restore reads each chunk once; a cache would only cost memory.
        reader.set_cache_bytes(0);
        let path = dest.join(n);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        let result = file
            .set_len(reader.size())
            .ctx(|| format!("sizing {}", path.display()))
            .and_then(|()| {
                restore_volume(&reader, &file, &path, &mut |vol_done| {
                    progress(&RestoreProgress {
                        volume: n.clone(),
                        done: done + vol_done,
                        total,
                    })
                })
            })
            .and_then(|holes| {
                file.sync_all()
                    .ctx(|| format!("syncing {}", path.display()))?;
                Ok(holes)
            });
        done += reader.size();
        match result {
            Ok(holes) => summary.hole_bytes += holes,
            Err(e) => {
                // A half-restored file must not be mistaken for the volume.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
        summary.bytes += reader.size();
        summary.files.push(path);
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Snarfs a restore worker claims at a time: 1 MiB of 64 KiB snarfs, so each worker writes
/// runs long enough for the disk while the workers stay close to one another.
const RESTORE_BATCH: u64 = 16;

/// Writes every snarf of `reader` into `file` (already sized; zero snarfs stay holes) with
/// one worker per core, since fetching means decompressing and hash-checking each chunk.
/// `progress` gets the bytes done so far, from the calling thread. Returns the hole bytes.
fn restore_volume(
    reader: &VolumeReader,
    file: &File,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let ss = reader.snarf_size() as u64;
    let count = reader.snarf_count();
    let size = reader.size();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let holes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);

    /// Counts a worker out however it ends, so the progress loop never waits for a
    /// worker that panicked (the panic itself surfaces when the scope joins).
    struct Finished<'a>(&'a AtomicUsize);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }

    let work = || -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let first = next.fetch_add(RESTORE_BATCH, Ordering::Relaxed);
            if first >= count {
                break;
            }
            for i in first..(first + RESTORE_BATCH).min(count) {
                let len = (size - i * ss).min(ss);
                match reader.read_snarf(i)? {
                    None => {
                        holes.fetch_add(len, Ordering::Relaxed);
                    }
                    Some(d) => file
                        .write_all_at(&d, i * ss)
                        .ctx(|| format!("writing {}", path.display()))?,
                }
                done.fetch_add(len, Ordering::Relaxed);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let _counted = Finished(&finished);
                if let Err(e) = work() {
                    stop.store(true, Ordering::Relaxed);
                    failure.lock().get_or_insert(e);
                }
            });
        }
        while finished.load(Ordering::Acquire) < workers {
            progress(done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    progress(done.load(Ordering::Relaxed));
    Ok(holes.load(Ordering::Relaxed))
}
