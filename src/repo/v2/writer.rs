//! Writing a format 2 backup. Snarfs are put in any order; new chunks of one volume that
//! arrive together are compressed as one *frame* (up to `frame_bytes` raw), frames fill
//! packs, and a pack is uploaded whole when it reaches the pack size. Frames are compressed
//! by a pool of threads (`squeeze`) and appended in the order they were gathered. Dedup stays per
//! snarf: a chunk already in the repository (index) or in this backup is only referenced.
//!
//! A volume's tree is built at commit: a leaf with no snarf put is taken from the base
//! backup's tree by reference (an incremental writes only the pages its changes touch) or
//! is all zeros (a full backup never reads holes); a leaf with snarfs put is the base
//! leaf's entries overlaid with them. Commit then uploads the last pack, writes the
//! backup's index run (its new chunks and pages, listing its packs) and creates
//! `backups/<id>`: that create is the commit point. Nothing before it is visible as a
//! backup; a killed writer's packs are adopted into the index by the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::backup::{BackupObject, VolumeRoot, FORMAT};
use super::chunk::{is_all_zero, BlobKind, ChunkId, ChunkRef};
use super::index::{self, Index};
use super::pack::{PackWriter, Sealing, IN_FLIGHT};
use super::repository::Repository;
use super::squeeze::{self, Pool};
use super::tree::{self, Builder, Entry, PageStore, TreeError, LEAF_SNARFS};
use crate::chain::ErrorChain;
use crate::repo::backend::{Created, LockGuard, Pipelined};
use crate::repo::error::{Error, Result};
use crate::repo::ids::{self, BackupId, PackId};
use crate::repo::report::BackupStats;
use crate::repo::v1::manifest::{snarf_count, snarf_len};

/// Index runs past which a commit merges them into one.
const MERGE_RUNS: usize = 8;

/// What a new backup is.
#[derive(Debug, Clone)]
pub struct NewBackup {
    /// Name of the snapshot it is taken from.
    pub snapshot: String,
    /// Opaque caller data stored in the backup object.
    pub source: serde_json::Value,
    /// Host name to record; this host if `None`.
    pub host: Option<String>,
    /// Wait this long for the repository lock; fail at once if `None`.
    pub lock_wait: Option<std::time::Duration>,
    /// Description of this writer for the lock, e.g. "snarf backup nightly".
    pub command: String,
    /// zstd level for this backup's new frames (1 to 19); the repository's if `None`.
    pub compression: Option<i32>,
    /// What an upgrade keeps of a format 1 backup (its id, time and counts); `None` for a
    /// new backup.
    pub kept: Option<Kept>,
    /// Keep a list of the snarfs put whose chunks became durable ([`Writer::take_durable`]),
    /// for a job that acknowledges them to the mount daemon.
    pub report_durable: bool,
}

/// A snarf put whose chunk is durable in the repository: in a pack this writer sealed, in
/// a pack the index lists, or all zeros (recorded, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The volume.
    pub slot: Slot,
    /// The snarf.
    pub snarf: u64,
    /// Where its bytes are.
    pub chunk: ChunkRef,
}

/// A format 1 backup's id, creation time and counts, kept by `snarf repo upgrade`.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its id.
    pub id: BackupId,
    /// When it was made, Unix seconds.
    pub created: u64,
    /// What it added to the repository.
    pub stats: BackupStats,
}

impl NewBackup {
    /// A backup of `snapshot` with caller data `source` and defaults for the rest.
    pub fn new(snapshot: &str, source: serde_json::Value) -> NewBackup {
        NewBackup {
            snapshot: snapshot.to_string(),
            source,
            host: None,
            lock_wait: None,
            command: format!("snarf backup {snapshot}"),
            compression: None,
            kept: None,
            report_durable: false,
        }
    }
}

/// A volume of the backup being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(pub usize);

/// What one put snarf is, until commit.
#[derive(Debug, Clone, Copy)]
enum Put {
    Zero,
    /// A chunk: its reference is in `seen` once its frame is written.
    Chunk(ChunkId),
    /// A chunk stored already, by reference (an upgrade's format 1 chunks).
    Ref(ChunkRef),
}

struct Volume {
    name: String,
    size: u64,
    snarf_size: u32,
    base: Option<tree::Reader>,
    put: BTreeMap<u64, Put>,
}

/// Chunks of one volume waiting to be compressed together, laid end to end as the frame's
/// raw bytes (one copy of each snarf, not one per chunk and another for the frame).
struct Pending {
    slot: usize,
    raw: Vec<u8>,
    blobs: Vec<(ChunkId, BlobKind, usize)>,
}

struct State {
    index: Index,
    pack: Option<PackWriter>,
    /// Where each blob of this backup or of the index it reused is (`None`: in `pending`).
    seen: HashMap<ChunkId, Option<ChunkRef>>,
    /// Blobs this backup stored, for its index run.
    new: Vec<ChunkRef>,
    packs: Vec<PackId>,
    /// Sealed packs whose uploads are finishing (not yet durable).
    sealing: Sealing,
    pending: Option<Pending>,
    /// Frames being compressed by other threads (started at the first frame); appended to
    /// the pack in the order they were gathered. Their chunks are in `seen` as `None`.
    pool: Option<Pool<Vec<(ChunkId, BlobKind, usize)>>>,
    volumes: Vec<Volume>,
    stats: BackupStats,
    /// With `report_durable`: snarfs put whose chunk is in a frame of the unsealed pack or
    /// still pending, by chunk id.
    waiting: HashMap<ChunkId, Vec<(usize, u64)>>,
    /// With `report_durable`: snarfs whose chunks are durable, not taken yet.
    durable: Vec<Durable>,
}

impl State {
    /// The volume of `slot` and the length of its snarf `snarf`, or why there is no such
    /// snarf (what [`Writer::put`] and [`Writer::put_known`] check first).
    fn snarf_of(&self, slot: Slot, snarf: u64) -> Result<(&Volume, u32)> {
        let v = self
            .volumes
            .get(slot.0)
            .ok_or_else(|| Error::BadArgument(format!("no volume slot {}", slot.0)))?;
        let count = snarf_count(v.size, v.snarf_size);
        if snarf >= count {
            return Err(Error::BadArgument(format!(
                "volume \"{}\" has {count} snarfs; there is no snarf {snarf}",
                v.name
            )));
        }
        Ok((v, snarf_len(v.size, v.snarf_size, snarf)))
    }

    /// Notes that snarf `snarf` of `slot` is `r`, a durable chunk.
    fn durable(&mut self, report: bool, slot: usize, snarf: u64, r: ChunkRef) {
        if report {
            self.durable.push(Durable {
                slot: Slot(slot),
                snarf,
                chunk: r,
            });
        }
    }

    /// Notes that snarf `snarf` of `slot` holds chunk `id`, durable once its pack is sealed.
    fn waits(&mut self, report: bool, slot: usize, snarf: u64, id: ChunkId) {
        if report {
            self.waiting.entry(id).or_default().push((slot, snarf));
        }
    }
}

/// A backup being written; dropped without [`Writer::commit`], it leaves only packs that
/// the next writer adopts (or gc deletes past its grace period).
pub struct Writer {
    repo: Repository,
    /// Packs stream through it from a thread of their own; declared before the lock, so
    /// its thread is done before the lock is released.
    uploads: Pipelined,
    _lock: Box<dyn LockGuard>,
    id: BackupId,
    new: NewBackup,
    host: String,
    state: Mutex<State>,
}

impl Repository {
    /// Starts writing a backup: takes the lock (see [`NewBackup::lock_wait`]) and adopts
    /// the packs of killed writers into the index.
    pub fn begin_backup(&self, new: NewBackup) -> Result<Writer> {
        let lock = self.lock(&new.command, new.lock_wait)?;
        self.begin_backup_locked(new, lock)
    }

    /// Starts writing a backup under a lock the caller holds already (an upgrade holds it
    /// across many backups); completes nothing a crashed writer left but adopting its packs.
    pub fn begin_backup_locked(&self, new: NewBackup, lock: Box<dyn LockGuard>) -> Result<Writer> {
        if let Some(level) = new.compression.filter(|l| !(1..=19).contains(l)) {
            return Err(Error::BadArgument(format!(
                "compression level {level} is not allowed: use 1 (fastest) to 19 (smallest)"
            )));
        }
        super::gc::adopt(self)?;
        let index = Index::open(self.backend(), self.shared_seal())?;
        let id = match &new.kept {
            Some(k) => k.id.clone(),
            None => {
                let last = self.backup_ids()?.pop();
                BackupId::generate_after(ids::now_secs(), last.as_ref())
            }
        };
        let host = new.host.clone().unwrap_or_else(crate::repo::lock::hostname);
        Ok(Writer {
            repo: self.clone(),
            uploads: Pipelined::new(self.backend().clone())?,
            _lock: lock,
            id,
            new,
            host,
            state: Mutex::new(State {
                index,
                pack: None,
                seen: HashMap::new(),
                new: Vec::new(),
                packs: Vec::new(),
                sealing: Sealing::default(),
                pending: None,
                pool: None,
                volumes: Vec::new(),
                stats: BackupStats::default(),
                waiting: HashMap::new(),
                durable: Vec::new(),
            }),
        })
    }
}

impl Writer {
    /// The id the backup will have.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// Counts of what was written so far.
    pub fn stats(&self) -> BackupStats {
        self.state.lock().stats.clone()
    }

    /// Adds a volume of `size` bytes in snarfs of `snarf_size`. With `base` (a committed
    /// backup and its volume), snarfs never put are those of the base; without, they are
    /// zeros (holes that were never read).
    pub fn add_volume(
        &self,
        name: &str,
        size: u64,
        snarf_size: u32,
        base: Option<(&BackupObject, &str)>,
    ) -> Result<Slot> {
        crate::store::validate_name("volume", name)
            .map_err(|e| Error::BadArgument(e.to_string()))?;
        if snarf_size == 0 || snarf_size > super::chunk::MAX_BLOB {
            return Err(Error::BadArgument(format!(
                "snarf size {snarf_size} is not allowed: use 1 byte to 8 MiB"
            )));
        }
        if size > i64::MAX as u64
            || size.div_ceil(u64::from(snarf_size)) > crate::store::volume::MAX_SNARFS
        {
            return Err(Error::BadArgument(format!(
                "volume \"{name}\" of {size} bytes has more than {} snarfs of {snarf_size} bytes",
                crate::store::volume::MAX_SNARFS
            )));
        }
        let base = match base {
            None => None,
            Some((b, vol)) => {
                let v = b.volumes.iter().find(|v| v.name == vol).ok_or_else(|| {
                    Error::NoSuchVolume {
                        backup: b.id.to_string(),
                        volume: vol.to_string(),
                        known: b
                            .volumes
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                if v.snarf_size != snarf_size {
                    return Err(Error::BadArgument(format!(
                        "volume \"{name}\" has snarfs of {snarf_size} bytes, but its base in backup {} has {}",
                        b.id, v.snarf_size
                    )));
                }
                Some(tree::Reader::new(
                    snarf_count(v.size, v.snarf_size),
                    v.root_ref(),
                ))
            }
        };
        let mut st = self.state.lock();
        if st.volumes.iter().any(|v| v.name == name) {
            return Err(Error::BadArgument(format!(
                "volume \"{name}\" was added to backup {} twice",
                self.id
            )));
        }
        st.volumes.push(Volume {
            name: name.to_string(),
            size,
            snarf_size,
            base,
            put: BTreeMap::new(),
        });
        Ok(Slot(st.volumes.len() - 1))
    }

    /// Puts snarf `snarf` of a volume with its data (whose length must be the snarf's).
    pub fn put(&self, slot: Slot, snarf: u64, data: &[u8]) -> Result<()> {
        let mut st = self.state.lock();
        let (v, want) = st.snarf_of(slot, snarf)?;
        if data.len() != want as usize {
            return Err(Error::BadArgument(format!(
                "snarf {snarf} of volume \"{}\" is {want} bytes, not {}",
                v.name,
                data.len()
            )));
        }
        let report = self.new.report_durable;
        if is_all_zero(data) {
            st.volumes[slot.0].put.insert(snarf, Put::Zero);
            st.stats.zero_snarfs += 1;
            st.durable(report, slot.0, snarf, ChunkRef::zero(want));
            return Ok(());
        }
        let id = self.repo.seal().blob_id(data);
        st.volumes[slot.0].put.insert(snarf, Put::Chunk(id));
        if let Some(known) = st.seen.get(&id).copied() {
            st.stats.dedup_snarfs += 1;
            let open_pack = st.pack.as_ref().map(PackWriter::id);
            match known {
                Some(r) if Some(r.pack) != open_pack && !st.sealing.holds(&r.pack) => {
                    st.durable(report, slot.0, snarf, r)
                }
                _ => st.waits(report, slot.0, snarf, id),
            }
            return Ok(());
        }
        if let Some(r) = st
            .index
            .lookup_all(&id)?
            .into_iter()
            .find(|r| r.kind.is_data())
        {
            st.seen.insert(id, Some(r));
            st.stats.dedup_snarfs += 1;
            st.durable(report, slot.0, snarf, r);
            return Ok(());
        }
        st.seen.insert(id, None);
        st.waits(report, slot.0, snarf, id);
        st.stats.new_chunks += 1;
        st.stats.new_raw_bytes += data.len() as u64;
        let frame_bytes = self.repo.config().frame_bytes as usize;
        let full = st
            .pending
            .as_ref()
            .is_some_and(|p| p.slot != slot.0 || p.raw.len() + data.len() > frame_bytes);
        if full {
            self.flush_frame(&mut st)?;
        }
        let p = st.pending.get_or_insert_with(|| Pending {
            slot: slot.0,
            raw: Vec::with_capacity(frame_bytes.max(data.len())),
            blobs: Vec::new(),
        });
        p.raw.extend_from_slice(data);
        p.blobs.push((id, BlobKind::Data, data.len()));
        Ok(())
    }

    /// Sets snarf `snarf` of a volume to chunk `id` without its data if this repository
    /// has that chunk already (in its index or in this backup); returns false, changing
    /// nothing, if it must be [`Writer::put`] with its data. `snarf copy` decides by id
    /// this way when both repositories name chunks alike, and reads only what is missing.
    pub fn put_known(&self, slot: Slot, snarf: u64, id: ChunkId) -> Result<bool> {
        let mut st = self.state.lock();
        let want = st.snarf_of(slot, snarf)?.1;
        let report = self.new.report_durable;
        if let Some(known) = st.seen.get(&id).copied() {
            st.volumes[slot.0].put.insert(snarf, Put::Chunk(id));
            st.stats.dedup_snarfs += 1;
            let open_pack = st.pack.as_ref().map(PackWriter::id);
            match known {
                Some(r) if Some(r.pack) != open_pack && !st.sealing.holds(&r.pack) => {
                    st.durable(report, slot.0, snarf, r)
                }
                _ => st.waits(report, slot.0, snarf, id),
            }
            return Ok(true);
        }
        let Some(r) = st
            .index
            .lookup_all(&id)?
            .into_iter()
            .find(|r| r.kind.is_data())
        else {
            return Ok(false);
        };
        if r.raw_len != want {
            return Ok(false);
        }
        st.volumes[slot.0].put.insert(snarf, Put::Chunk(id));
        st.seen.insert(id, Some(r));
        st.stats.dedup_snarfs += 1;
        st.durable(report, slot.0, snarf, r);
        Ok(true)
    }

    /// Sets snarf `snarf` of a volume to a chunk already stored (`r`, a data blob of the
    /// snarf's length), without reading it: an upgrade's trees point at format 1 packs.
    pub fn put_ref(&self, slot: Slot, snarf: u64, r: ChunkRef) -> Result<()> {
        let mut st = self.state.lock();
        let v = st
            .volumes
            .get_mut(slot.0)
            .ok_or_else(|| Error::BadArgument(format!("no volume slot {}", slot.0)))?;
        let count = snarf_count(v.size, v.snarf_size);
        let want = if snarf < count {
            snarf_len(v.size, v.snarf_size, snarf)
        } else {
            0
        };
        if want == 0 || r.raw_len != want || !r.kind.is_data() {
            return Err(Error::BadArgument(format!(
                "snarf {snarf} of volume \"{}\" ({want} bytes) cannot be chunk {} of {} bytes",
                v.name,
                r.id.short(),
                r.raw_len
            )));
        }
        v.put
            .insert(snarf, if r.is_zero() { Put::Zero } else { Put::Ref(r) });
        Ok(())
    }

    /// Writes blobs laid end to end in `raw` as one frame into the current pack, sealing
    /// the pack when full.
    fn write_frame(
        &self,
        st: &mut State,
        blobs: &[(ChunkId, BlobKind, usize)],
        raw: &[u8],
    ) -> Result<Vec<ChunkRef>> {
        self.append_encoded(
            st,
            blobs,
            raw.len(),
            super::frame::encode(raw, self.level()),
        )
    }

    /// The zstd level of this backup's frames.
    fn level(&self) -> i32 {
        self.new
            .compression
            .unwrap_or(self.repo.config().compression)
    }

    /// Appends a frame encoded already (see [`Writer::write_frame`]) to the current pack.
    fn append_encoded(
        &self,
        st: &mut State,
        blobs: &[(ChunkId, BlobKind, usize)],
        raw_len: usize,
        encoded: Vec<u8>,
    ) -> Result<Vec<ChunkRef>> {
        let mut pack = match st.pack.take() {
            Some(p) => p,
            None => PackWriter::create(&self.uploads, PackId::generate())?,
        };
        let before = pack.len();
        let refs = pack.append_encoded(self.repo.shared_seal(), blobs, raw_len, encoded)?;
        st.stats.new_stored_bytes += pack.len() - before;
        for r in &refs {
            st.seen.insert(r.id, Some(*r));
        }
        st.pack = Some(pack);
        if st
            .pack
            .as_ref()
            .is_some_and(|p| p.len() >= self.repo.config().pack_target)
        {
            self.seal_pack(st)?;
        }
        Ok(refs)
    }

    fn flush_frame(&self, st: &mut State) -> Result<()> {
        let Some(p) = st.pending.take() else {
            return Ok(());
        };
        if st.pool.is_none() {
            let level = self.level();
            let threads = squeeze::default_threads();
            st.pool = Some(Pool::new(
                threads,
                2 * threads,
                Arc::new(move |raw: &[u8]| Ok(super::frame::encode(raw, level))),
            )?);
        }
        let done = match st.pool.as_mut() {
            Some(pool) => pool.submit(p.blobs, p.raw)?,
            None => Vec::new(),
        };
        for d in done {
            self.append_encoded(st, &d.tag, d.raw.len(), d.out)?;
        }
        Ok(())
    }

    /// Waits for the frames being compressed and appends them, so every chunk put is in
    /// the pack (before the trees are built, whose pages are written on this thread).
    fn drain_frames(&self, st: &mut State) -> Result<()> {
        let done = match st.pool.as_mut() {
            Some(pool) => pool.drain()?,
            None => Vec::new(),
        };
        for d in done {
            self.append_encoded(st, &d.tag, d.raw.len(), d.out)?;
        }
        Ok(())
    }

    /// Seals the open pack; its upload finishes while the next is written.
    fn seal_pack(&self, st: &mut State) -> Result<()> {
        if let Some(pack) = st.pack.take() {
            st.sealing.push(pack.finish_later(self.repo.seal())?);
        }
        self.landed(st, IN_FLIGHT)
    }

    /// Takes the sealed packs that are durable now, waiting while more than `keep` are
    /// finishing: the snarfs holding their chunks can be acknowledged.
    fn landed(&self, st: &mut State, keep: usize) -> Result<()> {
        for (id, refs) in st.sealing.settle(keep)? {
            for r in refs.iter().filter(|r| r.kind.is_data()) {
                for (slot, snarf) in st.waiting.remove(&r.id).unwrap_or_default() {
                    st.durable(true, slot, snarf, *r);
                }
            }
            st.new.extend(refs);
            st.packs.push(id);
            st.stats.packs += 1;
        }
        Ok(())
    }

    /// Builds one volume's tree; returns its root and the number of zero snarfs.
    fn build_tree(&self, st: &mut State, v: &Volume) -> Result<(Option<ChunkRef>, u64)> {
        let pages = WriterPages {
            w: self,
            st: Mutex::new(st),
        };
        let snarfs = snarf_count(v.size, v.snarf_size);
        let mut b = Builder::new(snarfs);
        let leaves = b.geometry().leaves();
        let same = v
            .base
            .as_ref()
            .is_some_and(|r| r.geometry().snarfs == snarfs);
        let tree_err = |e: TreeError| match e {
            TreeError::Store(e) => e,
            other => Error::Damaged {
                repo: self.repo.location().into(),
                path: format!("backups/{}", self.id).into(),
                why: format!("the base tree of volume \"{}\": {other}", v.name),
                fix: crate::repo::error::Fix::Check,
            },
        };
        let mut zeros = 0u64;
        for k in 0..leaves {
            let first = k * LEAF_SNARFS;
            let len = b.geometry().leaf_len(k);
            let mut puts = v.put.range(first..first + len).peekable();
            if puts.peek().is_none() && (same || v.base.is_none()) {
                let r = match &v.base {
                    Some(base) => base.leaf_ref(&pages, k).map_err(tree_err)?,
                    None => None,
                };
                if r.is_none() {
                    zeros += len;
                }
                b.set_leaf(k, r).map_err(tree_err)?;
                continue;
            }
            let mut entries = vec![Entry::Zero; len as usize];
            if let Some(base) = &v.base {
                let bs = base.geometry().snarfs;
                if first < bs {
                    let bk = base.leaf(&pages, k).map_err(tree_err)?;
                    for (i, e) in bk.into_iter().enumerate().take(len as usize) {
                        entries[i] = e;
                    }
                }
            }
            for (&s, p) in puts {
                entries[(s - first) as usize] = match p {
                    Put::Zero => Entry::Zero,
                    Put::Ref(r) => Entry::Chunk(*r),
                    Put::Chunk(id) => match pages.st.lock().seen.get(id).copied().flatten() {
                        Some(r) => Entry::Chunk(r),
                        None => {
                            return Err(Error::BadArgument(format!(
                                "chunk {} of snarf {s} was never written",
                                id.short()
                            )))
                        }
                    },
                };
            }
            zeros += entries.iter().filter(|e| **e == Entry::Zero).count() as u64;
            b.put_leaf(&pages, k, &entries).map_err(tree_err)?;
        }
        let root = b.finish(&pages).map_err(tree_err)?;
        Ok((root, zeros))
    }

    /// Waits for the frames being compressed and appends them to the pack (sealing it when
    /// full), so [`Writer::take_durable`] then reports every snarf of a sealed pack.
    pub fn flush_frames(&self) -> Result<()> {
        self.drain_frames(&mut self.state.lock())
    }

    /// Takes the snarfs put whose chunks became durable since the last call (always empty
    /// without [`NewBackup::report_durable`]); fails if a pack's upload failed.
    pub fn take_durable(&self) -> Result<Vec<Durable>> {
        let mut st = self.state.lock();
        self.landed(&mut st, IN_FLIGHT)?;
        Ok(std::mem::take(&mut st.durable))
    }

    /// [`Writer::take_durable`] after waiting for every sealed pack to finish its upload.
    pub fn wait_durable(&self) -> Result<Vec<Durable>> {
        let mut st = self.state.lock();
        self.landed(&mut st, 0)?;
        Ok(std::mem::take(&mut st.durable))
    }

    /// Replaces the caller data recorded in the backup object (a converge backup learns
    /// what it is a copy of only at its end).
    pub fn set_source(&mut self, source: serde_json::Value) {
        self.new.source = source;
    }

    /// Commits the backup (see the module documentation) and returns its id.
    pub fn commit(self) -> Result<BackupId> {
        self.commit_reporting().map(|(id, _)| id)
    }

    /// Commits the backup like [`Writer::commit`], and also returns the snarfs whose chunks
    /// became durable since the last [`Writer::take_durable`] (those of the last pack).
    pub fn commit_reporting(self) -> Result<(BackupId, Vec<Durable>)> {
        self.commit_counted().map(|(id, durable, _)| (id, durable))
    }

    /// Commits the backup like [`Writer::commit_reporting`], and also returns what this
    /// writer stored (its trees' pages included), which differs from the counts a backup
    /// with [`NewBackup::kept`] records: `snarf copy` reports what it sent.
    pub fn commit_counted(self) -> Result<(BackupId, Vec<Durable>, BackupStats)> {
        let mut st = self.state.lock();
        self.flush_frame(&mut st)?;
        self.drain_frames(&mut st)?;
        let volumes = std::mem::take(&mut st.volumes);
        let mut roots = Vec::with_capacity(volumes.len());
        for v in &volumes {
            let (root, zero_snarfs) = self.build_tree(&mut st, v)?;
            roots.push(VolumeRoot {
                name: v.name.clone(),
                size: v.size,
                snarf_size: v.snarf_size,
                root: root.as_ref().map(super::backup::encode_ref),
                zero_snarfs,
            });
        }
        self.seal_pack(&mut st)?;
        // Every pack durable before the index run and the backup that name them.
        self.landed(&mut st, 0)?;
        let durable = std::mem::take(&mut st.durable);
        if !st.new.is_empty() {
            let mut recs = std::mem::take(&mut st.new);
            recs.sort_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
            index::write_run(
                self.repo.backend().as_ref(),
                self.repo.seal(),
                recs.into_iter().map(Ok),
                &st.packs,
            )?;
        }
        let created = self
            .new
            .kept
            .as_ref()
            .map_or_else(ids::now_secs, |k| k.created);
        let written = st.stats.clone();
        if let Some(k) = &self.new.kept {
            st.stats = k.stats.clone();
        }
        let obj = BackupObject {
            format: FORMAT,
            id: self.id.clone(),
            created,
            created_utc: ids::format_utc(created),
            snapshot: self.new.snapshot.clone(),
            host: self.host.clone(),
            source: self.new.source.clone(),
            volumes: roots,
            stats: st.stats.clone(),
        };
        obj.validate(&self.id).map_err(Error::BadArgument)?;
        let bytes = obj.encode(self.repo.seal())?;
        // The commit point.
        match self.repo.backend().create(&obj.key(), &bytes)? {
            Created::Created => {}
            Created::AlreadyExists => {
                return Err(Error::BadArgument(format!(
                    "backup {} exists already in {}",
                    self.id,
                    self.repo.location()
                )))
            }
        }
        // Upkeep after the commit: a failure does not undo the backup, and the next commit
        // merges again.
        if st.index.runs().len() + 1 > MERGE_RUNS {
            if let Err(e) = super::gc::merge_index(&self.repo, &[]) {
                log::warn!(
                    "{}: backup {} is committed, but merging the index failed: {}",
                    self.repo.location(),
                    self.id,
                    e.chain()
                );
            }
        }
        Ok((self.id.clone(), durable, written))
    }
}

/// Pages of the tree being built go into the writer's packs, one frame each (a page
/// compresses well alone, and its reference is needed at once by its parent).
struct WriterPages<'a> {
    w: &'a Writer,
    st: Mutex<&'a mut State>,
}

impl PageStore for WriterPages<'_> {
    fn put_page(&self, raw: &[u8]) -> Result<ChunkRef> {
        let id = self.w.repo.seal().blob_id(raw);
        let mut st = self.st.lock();
        if let Some(Some(r)) = st.seen.get(&id) {
            if r.kind == BlobKind::Page {
                return Ok(*r);
            }
        }
        if let Some(r) = st
            .index
            .lookup_all(&id)?
            .into_iter()
            .find(|r| r.kind == BlobKind::Page)
        {
            st.seen.insert(id, Some(r));
            return Ok(r);
        }
        let refs = self
            .w
            .write_frame(&mut st, &[(id, BlobKind::Page, raw.len())], raw)?;
        refs.into_iter()
            .next()
            .ok_or_else(|| Error::BadArgument("a frame of one page gave no reference".into()))
    }
    fn get_page(&self, r: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.w.repo.get_page(r)
    }
}
