//! Writing one backup. Chunks are prepared on any thread ([`Preparer`]: hash first, so a
//! chunk the repository already has is never compressed), then put into per-volume tables in
//! any order. New chunks go into the open pack; when it reaches the target size it is sealed
//! (trailer, fsync, logged in the transfer folder, renamed, folder fsynced) and every snarf
//! whose data it holds is reported [`Durable`], so the mount can drop that snarf's pre-image.
//! Sealing runs on a sealer thread, in order, so puts go on while a full pack is fsynced;
//! flush and commit wait until every sealing has finished.
//! A transfer lives in `tmp/<ID>/` until commit hands it to finishing; a dropped writer
//! leaves no visible backup, and its sealed packs are adopted for later deduplication.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use super::chunk::{self, ChunkRef};
use super::error::{Error, IoContext, Result};
use super::fault::{self, FilePoints};
use super::finishing::{self, Record};
use super::fsx;
use super::ids::{format_utc, now_secs, BackupId, ChunkId, PackId};
use super::index::Index;
use super::known::Known;
use super::lock::{hostname, RepoLock};
use super::manifest::{self, BackupStats, Manifest, Table, VolumeEntry, MANIFEST_FORMAT};
use super::pack::PackWriter;
use super::prune::Policy;
use super::Repo;
use crate::chain::ErrorChain;

mod sealer;
use sealer::{SealCtx, SealJob, SealProgress};

/// Receives durability reports; called from whichever thread sealed the pack.
pub type DurableSink = Arc<dyn Fn(Durable) + Send + Sync>;

/// Name of the sealed-pack log in a transfer folder.
pub(crate) const PACK_LOG: &str = "packs";
/// Name of the draft manifest in a transfer folder.
pub(crate) const DRAFT: &str = "draft.json";

/// What a new backup is.
pub struct NewBackup {
    /// Name of the snapshot it is taken from.
    pub snapshot: String,
    /// Opaque caller data stored in the manifest (store id, volume ids, epochs...).
    pub source: serde_json::Value,
    /// Host name to record; this host if `None`.
    pub host: Option<String>,
    /// Retention applied in this backup's finishing, if any.
    pub retention: Option<Policy>,
    /// Where to report durable snarfs.
    pub on_durable: Option<DurableSink>,
    /// Wait this long for the repository lock; fail at once if `None`.
    pub lock_wait: Option<Duration>,
    /// Description of this writer in the lock file, e.g. "snarf backup nightly".
    pub command: String,
    /// zstd level for this backup's new chunks (1 to 19); the repository's if `None`.
    pub compression: Option<i32>,
}

impl NewBackup {
    /// A backup of `snapshot` with caller data `source` and defaults for the rest.
    pub fn new(snapshot: &str, source: serde_json::Value) -> NewBackup {
        NewBackup {
            snapshot: snapshot.to_string(),
            source,
            host: None,
            retention: None,
            on_durable: None,
            lock_wait: None,
            command: format!("snarf backup {snapshot}"),
            compression: None,
        }
    }
}

/// A volume of the backup being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeSlot(pub usize);

/// A snarf whose data is durably stored, with where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The volume.
    pub slot: VolumeSlot,
    /// The snarf index in the volume.
    pub snarf: u64,
    /// Where its chunk is (the zero marker for an all-zero snarf).
    pub chunk: ChunkRef,
}

/// A chunk ready to be put: hashed, and compressed only if the repository lacks it.
#[derive(Debug)]
pub struct PreparedChunk {
    id: ChunkId,
    raw_len: u32,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Zero,
    Known,
    New(Vec<u8>),
}

impl PreparedChunk {
    /// The chunk id (all zero for a zero snarf).
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// Uncompressed length.
    pub fn len(&self) -> u32 {
        self.raw_len
    }

    /// True for an empty chunk (never produced by `prepare`).
    pub fn is_empty(&self) -> bool {
        self.raw_len == 0
    }

    /// True for an all-zero snarf.
    pub fn is_zero(&self) -> bool {
        matches!(self.body, Body::Zero)
    }

    /// True when the repository or this backup already holds the chunk.
    pub fn is_known(&self) -> bool {
        matches!(self.body, Body::Known)
    }
}

/// A chunk this backup stored, and whether its pack is sealed yet.
#[derive(Clone, Copy)]
struct Fresh {
    r: ChunkRef,
    sealed: bool,
}

/// State shared between the writer and its preparers.
struct Shared {
    known: Known,
    fresh: RwLock<HashMap<ChunkId, Fresh>>,
    level: i32,
}

impl Shared {
    /// Where the repository or this backup already has `id`, and whether that is durable.
    /// An index entry counts only if its pack's trailer lists it (see `known`): a backup
    /// never commits a chunk it cannot read back.
    fn locate(&self, id: &ChunkId) -> Result<Option<Fresh>> {
        if let Some(f) = self.fresh.read().get(id) {
            return Ok(Some(*f));
        }
        Ok(self.known.lookup(id)?.map(|r| Fresh { r, sealed: true }))
    }
}

/// Hashes and compresses chunks for a [`BackupWriter`]; clone it into worker threads.
#[derive(Clone)]
pub struct Preparer {
    shared: Arc<Shared>,
}

impl Preparer {
    /// Prepares one snarf's data: zero detection, hash, and compression only for chunks
    /// the repository does not already hold.
    pub fn prepare(&self, data: &[u8]) -> Result<PreparedChunk> {
        let raw_len = u32::try_from(data.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::BadArgument(format!(
                    "a chunk must be 1 byte to 4 GiB, not {}",
                    data.len()
                ))
            })?;
        if chunk::is_all_zero(data) {
            return Ok(PreparedChunk {
                id: ChunkId([0; 32]),
                raw_len,
                body: Body::Zero,
            });
        }
        let id = ChunkId::of(data);
        if self.shared.locate(&id)?.is_some() {
            return Ok(PreparedChunk {
                id,
                raw_len,
                body: Body::Known,
            });
        }
        let stored = chunk::compress(data, self.shared.level).unwrap_or_else(|| data.to_vec());
        Ok(PreparedChunk {
            id,
            raw_len,
            body: Body::New(stored),
        })
    }
}

/// One volume being written.
struct Slot {
    entry: VolumeEntry,
    table: Table,
    written: Vec<u64>,
}

impl Slot {
    fn mark(&mut self, i: u64) {
        self.written[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn is_marked(&self, i: u64) -> bool {
        self.written[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// Mutable state, behind one mutex so `put` can be called from several threads.
struct State {
    slots: Vec<Slot>,
    pack: Option<PackWriter>,
    /// Snarfs whose chunk is in the open pack, reported when it is sealed.
    pending: Vec<(VolumeSlot, u64, ChunkId)>,
    new_packs: Vec<PackId>,
    known_packs: HashSet<PackId>,
    stats: BackupStats,
}

/// A backup being written; holds the repository lock until committed or dropped.
pub struct BackupWriter {
    repo: Repo,
    lock: Option<RepoLock>,
    id: BackupId,
    created: u64,
    snapshot: String,
    host: String,
    source: serde_json::Value,
    retention: Option<Policy>,
    tmp: PathBuf,
    shared: Arc<Shared>,
    sink: Option<DurableSink>,
    state: Arc<Mutex<State>>,
    seal: Arc<SealCtx>,
    seal_tx: Option<SyncSender<SealJob>>,
    sealer: Option<JoinHandle<()>>,
    handed_over: bool,
}

impl BackupWriter {
    /// Starts the transfer folder; the caller holds the lock and has settled the repository.
    pub(crate) fn start(repo: Repo, lock: RepoLock, new: NewBackup) -> Result<BackupWriter> {
        if let Some(p) = &new.retention {
            p.validate()?;
        }
        if let Some(level) = new.compression.filter(|l| !(1..=19).contains(l)) {
            return Err(Error::BadArgument(format!(
                "compression level {level} is not allowed: use 1 (fastest) to 19 (smallest)"
            )));
        }
        let created = now_secs();
        // After every existing id, so ids sort in commit order and retention sees the
        // newest backup as newest even within one second.
        let last = [repo.backup_ids()?.pop(), repo.current()?]
            .into_iter()
            .flatten()
            .max();
        let id = BackupId::generate_after(created, last.as_ref());
        let tmp = repo.tmp_dir().join(id.as_str());
        fsx::ensure_dir(&tmp)?;
        let log_path = tmp.join(PACK_LOG);
        let pack_log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .ctx(|| format!("creating {}", log_path.display()))?;
        // The log's name must be durable before a sealed pack relies on it: after a power
        // cut, recovery finds an abandoned transfer's packs only through the log.
        fsx::sync_dir(&tmp)?;
        let index = Index::open(&repo.index_dir())?;
        let shared = Arc::new(Shared {
            known: Known::new(repo.clone(), index),
            fresh: RwLock::new(HashMap::new()),
            level: new.compression.unwrap_or(repo.config().compression),
        });
        let state = Arc::new(Mutex::new(State {
            slots: Vec::new(),
            pack: None,
            pending: Vec::new(),
            new_packs: Vec::new(),
            known_packs: HashSet::new(),
            stats: BackupStats::default(),
        }));
        let seal = Arc::new(SealCtx {
            repo: repo.clone(),
            tmp: tmp.clone(),
            shared: shared.clone(),
            sink: new.on_durable.clone(),
            state: state.clone(),
            pack_log: Mutex::new(pack_log),
            progress: Mutex::new(SealProgress::default()),
            idle: Condvar::new(),
        });
        // One pack queued behind the one being sealed: puts go on during an fsync, and at
        // most three packs are ever unsealed.
        let (seal_tx, seal_rx) = sync_channel(1);
        let sealer = {
            let seal = seal.clone();
            std::thread::Builder::new()
                .name("snarf-pack-sealer".into())
                .spawn(move || seal.run(seal_rx))
                .ctx(|| "starting the pack sealer thread".to_string())?
        };
        Ok(BackupWriter {
            lock: Some(lock),
            id,
            created,
            snapshot: new.snapshot,
            host: new.host.unwrap_or_else(hostname),
            source: new.source,
            retention: new.retention,
            tmp,
            shared,
            sink: new.on_durable,
            state,
            seal,
            seal_tx: Some(seal_tx),
            sealer: Some(sealer),
            handed_over: false,
            repo,
        })
    }

    /// The id the backup will have.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// A preparer for worker threads.
    pub fn preparer(&self) -> Preparer {
        Preparer {
            shared: self.shared.clone(),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> BackupStats {
        self.state.lock().stats.clone()
    }

    /// Adds a volume of `size` bytes cut into snarfs of `snarf_size` bytes.
    pub fn add_volume(&self, name: &str, size: u64, snarf_size: u32) -> Result<VolumeSlot> {
        crate::store::validate_name("volume", name)
            .map_err(|e| Error::BadArgument(e.to_string()))?;
        if snarf_size == 0 {
            return Err(Error::BadArgument("snarf size must not be zero".into()));
        }
        let mut st = self.state.lock();
        if st.slots.iter().any(|s| s.entry.name == name) {
            return Err(Error::BadArgument(format!(
                "backup {} already has a volume \"{name}\"",
                self.id
            )));
        }
        let n = st.slots.len();
        let table_name = manifest::table_name(n);
        let table = Table::create(&self.tmp.join(&table_name), size, snarf_size)?;
        let count = table.count();
        st.slots.push(Slot {
            entry: VolumeEntry {
                name: name.to_string(),
                size,
                snarf_size,
                table: table_name,
                zero_snarfs: 0,
            },
            table,
            written: vec![0; count.div_ceil(64) as usize],
        });
        Ok(VolumeSlot(n))
    }

    /// Checks a slot and snarf index and returns the snarf's expected length.
    fn expected_len(&self, st: &State, slot: VolumeSlot, snarf: u64) -> Result<u32> {
        let s = st.slots.get(slot.0).ok_or_else(|| {
            Error::BadArgument(format!("backup {} has no volume slot {}", self.id, slot.0))
        })?;
        if snarf >= s.table.count() {
            return Err(Error::BadArgument(format!(
                "volume \"{}\" has {} snarfs; snarf {snarf} does not exist",
                s.entry.name,
                s.table.count()
            )));
        }
        Ok(manifest::snarf_len(s.entry.size, s.entry.snarf_size, snarf))
    }

    /// Stores snarf `snarf` of volume `slot`. Its durability is reported to the sink now
    /// (zero, or already durable) or when the pack holding it is sealed.
    pub fn put(&self, slot: VolumeSlot, snarf: u64, chunk: PreparedChunk) -> Result<()> {
        self.check_sealing()?;
        let mut events = Vec::new();
        let mut job = None;
        {
            let mut st = self.state.lock();
            let want = self.expected_len(&st, slot, snarf)?;
            if chunk.raw_len != want {
                return Err(Error::BadArgument(format!(
                    "snarf {snarf} of volume \"{}\" must be {want} bytes, not {}",
                    st.slots[slot.0].entry.name, chunk.raw_len
                )));
            }
            let r = match chunk.body {
                Body::Zero => {
                    st.stats.zero_snarfs += 1;
                    st.slots[slot.0].entry.zero_snarfs += 1;
                    let r = ChunkRef::zero(want);
                    events.push(Durable { slot, snarf, chunk: r });
                    r
                }
                Body::Known => match self.shared.locate(&chunk.id)? {
                    Some(f) => {
                        st.stats.dedup_snarfs += 1;
                        self.note_dup(&mut st, &mut events, slot, snarf, f);
                        f.r
                    }
                    None => {
                        return Err(Error::BadArgument(format!(
                            "chunk {} was prepared by another backup writer; prepare it with this writer's preparer",
                            chunk.id.short()
                        )))
                    }
                },
                Body::New(stored) => match self.shared.locate(&chunk.id)? {
                    Some(f) => {
                        // Another thread stored the same data since it was prepared.
                        st.stats.dedup_snarfs += 1;
                        self.note_dup(&mut st, &mut events, slot, snarf, f);
                        f.r
                    }
                    None => {
                        let (r, full) = self.append(&mut st, slot, snarf, chunk.id, &stored, want)?;
                        if full {
                            job = Some(Self::take_job(&mut st));
                        }
                        r
                    }
                },
            };
            let s = &mut st.slots[slot.0];
            s.table.put(snarf, &r)?;
            s.mark(snarf);
        }
        self.deliver(events);
        if let Some(job) = job {
            self.dispatch(job)?;
        }
        Ok(())
    }

    /// Copies an entry of a previous backup's table (an unchanged snarf of an incremental
    /// backup): nothing is read or written but the record. Reported durable at once.
    pub fn reuse(&self, slot: VolumeSlot, snarf: u64, r: ChunkRef) -> Result<()> {
        self.reuse_run(slot, snarf, &[r])
    }

    /// [`BackupWriter::reuse`] for the consecutive snarfs `first..first + refs.len()`, with
    /// one table write: an incremental backup reuses thousands of records per volume.
    pub fn reuse_run(&self, slot: VolumeSlot, first: u64, refs: &[ChunkRef]) -> Result<()> {
        {
            let mut st = self.state.lock();
            for (snarf, r) in (first..).zip(refs) {
                let want = self.expected_len(&st, slot, snarf)?;
                if r.raw_len != want {
                    return Err(Error::BadArgument(format!(
                        "cannot reuse a {}-byte chunk for snarf {snarf} of volume \"{}\", which is {want} bytes",
                        r.raw_len, st.slots[slot.0].entry.name
                    )));
                }
                if r.is_zero() {
                    st.stats.zero_snarfs += 1;
                    st.slots[slot.0].entry.zero_snarfs += 1;
                } else {
                    if !st.known_packs.contains(&r.pack) {
                        let path = self.repo.pack_path(&r.pack);
                        if !path.exists() {
                            return Err(Error::PackMissing {
                                repo: self.repo.path().to_path_buf(),
                                pack: r.pack.to_string(),
                                path,
                            });
                        }
                        st.known_packs.insert(r.pack);
                    }
                    st.stats.dedup_snarfs += 1;
                }
            }
            let s = &mut st.slots[slot.0];
            s.table.put_run(first, refs)?;
            for snarf in first..first + refs.len() as u64 {
                s.mark(snarf);
            }
        }
        self.deliver(
            (first..)
                .zip(refs)
                .map(|(snarf, r)| Durable {
                    slot,
                    snarf,
                    chunk: *r,
                })
                .collect(),
        );
        Ok(())
    }

    /// Seals the open pack now and waits, so every snarf put so far is durable and reported.
    pub fn flush(&self) -> Result<()> {
        let job = Self::take_job(&mut self.state.lock());
        self.dispatch(job)?;
        self.wait_sealed()
    }

    /// Takes the open pack and the snarfs waiting on it, to be sealed.
    fn take_job(st: &mut State) -> SealJob {
        SealJob {
            pack: st.pack.take(),
            pending: std::mem::take(&mut st.pending),
        }
    }

    /// Hands a job to the sealer (waiting if one is already queued). Never called with
    /// the state lock held: the sealer needs it to finish.
    fn dispatch(&self, mut job: SealJob) -> Result<()> {
        if let Some(pack) = job.pack.take_if(|p| p.is_empty()) {
            let id = pack.id();
            drop(pack);
            fsx::remove_if_exists(&self.repo.packs_dir().join(super::pack::part_name(&id)))?;
        }
        if job.pack.is_none() && job.pending.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.seal_tx else {
            return Err(Error::BadArgument("the pack sealer has stopped".into()));
        };
        self.seal.progress.lock().in_flight += 1;
        if tx.send(job).is_err() {
            self.seal.progress.lock().in_flight -= 1;
            return Err(Error::BadArgument("the pack sealer has stopped".into()));
        }
        Ok(())
    }

    /// Fails if an earlier sealing failed (the first caller gets its error).
    fn check_sealing(&self) -> Result<()> {
        let mut p = self.seal.progress.lock();
        if let Some(e) = p.error.take() {
            return Err(e);
        }
        match &p.failed {
            Some(msg) => Err(Error::BadArgument(format!(
                "sealing a pack failed earlier: {msg}"
            ))),
            None => Ok(()),
        }
    }

    /// Waits until every queued sealing has finished; fails if one failed.
    fn wait_sealed(&self) -> Result<()> {
        {
            let mut p = self.seal.progress.lock();
            while p.in_flight > 0 {
                self.seal.idle.wait(&mut p);
            }
        }
        self.check_sealing()
    }

    fn note_dup(
        &self,
        st: &mut State,
        events: &mut Vec<Durable>,
        slot: VolumeSlot,
        snarf: u64,
        f: Fresh,
    ) {
        if f.sealed {
            events.push(Durable {
                slot,
                snarf,
                chunk: f.r,
            });
        } else {
            st.pending.push((slot, snarf, f.r.id));
        }
    }

    /// Appends a new chunk to the open pack; returns where it is and whether the pack is
    /// now full (to be sealed by the caller once it lets go of the state).
    fn append(
        &self,
        st: &mut State,
        slot: VolumeSlot,
        snarf: u64,
        id: ChunkId,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<(ChunkRef, bool)> {
        if st.pack.is_none() {
            st.pack = Some(PackWriter::create(
                &self.repo.packs_dir(),
                PackId::generate(),
            )?);
        }
        let Some(pack) = st.pack.as_mut() else {
            return Err(Error::BadArgument("no open pack".into()));
        };
        let r = pack.append(id, stored, raw_len)?;
        let full = pack.len() >= self.repo.config().pack_target;
        self.shared
            .fresh
            .write()
            .insert(id, Fresh { r, sealed: false });
        st.pending.push((slot, snarf, id));
        st.stats.new_chunks += 1;
        st.stats.new_stored_bytes += stored.len() as u64;
        st.stats.new_raw_bytes += raw_len as u64;
        Ok((r, full))
    }

    fn deliver(&self, events: Vec<Durable>) {
        if let Some(sink) = &self.sink {
            for e in events {
                sink(e);
            }
        }
    }

    /// Commits: seals the last pack, checks every snarf was stored, writes the draft
    /// manifest and the finishing record (from here the backup is committed), then runs
    /// finishing. An error after the record leaves finishing to the next open.
    pub fn commit(mut self) -> Result<BackupId> {
        self.flush()?;
        let (manifest, new_packs) = {
            let st = self.state.lock();
            for s in &st.slots {
                for i in 0..s.table.count() {
                    if !s.is_marked(i) {
                        return Err(Error::Incomplete {
                            backup: self.id.to_string(),
                            volume: s.entry.name.clone(),
                            snarf: i,
                            offset: i * s.entry.snarf_size as u64,
                        });
                    }
                }
            }
            for s in &st.slots {
                s.table.sync()?;
            }
            // The tables' folder entries too, before the record can name them.
            fsx::sync_dir(&self.tmp)?;
            fault::point("commit.tables-synced");
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                id: self.id.clone(),
                created: self.created,
                created_utc: format_utc(self.created),
                snapshot: self.snapshot.clone(),
                host: self.host.clone(),
                source: self.source.clone(),
                volumes: st.slots.iter().map(|s| s.entry.clone()).collect(),
                stats: st.stats.clone(),
            };
            (manifest, st.new_packs.clone())
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::BadArgument(format!("cannot encode manifest: {e}")))?;
        fsx::write_atomic(
            &self.tmp.join(DRAFT),
            &json,
            FilePoints::pair("draft.written", "draft.renamed"),
        )?;
        let record = Record::for_backup(self.id.clone(), &new_packs, self.retention);
        if let Err(e) = finishing::begin(
            &self.repo,
            &record,
            FilePoints::pair("record.manifest.written", "record.manifest.renamed"),
        ) {
            if !finishing::may_name_backup(&self.repo, &self.id) {
                // The record never reached its place: dropping abandons the transfer.
                return Err(e);
            }
            // Renamed into place, but its folder's fsync failed: the backup is committed
            // if the record survives, and its transfer folder is what finishing needs, so
            // it is kept (not abandoned) and the next open completes the finishing.
            self.handed_over = true;
            return Err(Error::FinishingStuck {
                repo: self.repo.path().to_path_buf(),
                what: format!("the finishing of backup {}", self.id),
                source: Box::new(e),
            });
        }
        self.handed_over = true;
        let lock = self.lock.take();
        if let Some(lock) = &lock {
            finishing::run(&self.repo, lock, record)?;
        }
        Ok(self.id.clone())
    }

    /// Gives the backup up: nothing becomes visible; sealed packs are adopted by the index
    /// for later deduplication and collected by a later finishing if nothing uses them.
    pub fn abandon(mut self) -> Result<()> {
        self.abandon_inner()
    }

    fn abandon_inner(&mut self) -> Result<()> {
        if self.handed_over {
            return Ok(());
        }
        self.handed_over = true;
        // Let the sealer finish what it has (sealed packs are adopted below) and stop.
        self.seal_tx = None;
        if let Some(t) = self.sealer.take() {
            let _ = t.join();
        }
        let part = {
            let mut st = self.state.lock();
            st.pack.take().map(|p| p.id())
        };
        if let Some(id) = part {
            fsx::remove_if_exists(&self.repo.packs_dir().join(super::pack::part_name(&id)))?;
        }
        finishing::recover_transfer(&self.repo, &self.id)
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if let Err(e) = self.abandon_inner() {
            log::warn!(
                "abandoning backup {}: {}; the next backup will clean up",
                self.id,
                e.chain()
            );
        }
    }
}
