//! The engine side of one backup job: describe the snapshot, make the plan, hand out snarf
//! data in the feed's order, take acknowledgements. The daemon's socket server drives one per
//! connection; in direct mode (no mount) the job drives one in-process. Either way the same
//! [`Session`] calls reach it.
//!
//! # Acknowledgements are checked, not believed
//!
//! An ack makes the daemon free a pre-image and read that snarf of the snapshot from the
//! repository from then on, so a wrong one would make the snapshot read wrong bytes. Every
//! ack is refused (the job is told why and its connection ends; nothing is freed) unless:
//!
//! 1. it names a volume of the plan and a snarf inside the snapshot's frozen size, and the
//!    chunk has exactly that snarf's length, with a well-formed reference of the format of
//!    the repository the plan named (format 1: a zero chunk is the zero marker, a stored
//!    one names a pack and 1..=raw_len stored bytes; format 2: the zero marker or a data
//!    blob, never a tree page);
//! 2. the snarf was handed to this job, or the plan reuses it from the base (an unchanged
//!    snarf of an incremental volume);
//! 3. with a mount (an untrusted peer): a handed snarf's chunk id is the id of the bytes
//!    the snapshot holds there (blake3; the repository's keyed id for a format 2 blob; all
//!    zeros for a zero chunk); a reused snarf's chunk is the very record the base backup
//!    holds. The id is computed once, when the snarf is handed out: the snapshot's bytes
//!    are frozen, so the id of what was served is the id of what the snapshot holds, and
//!    the ack is checked against it without reading the snarf again (past [`IDS_KEPT`]
//!    snarfs handed and not yet acknowledged, an ack reads the snarf back instead, so a
//!    job that never acknowledges cannot make the daemon grow);
//! 4. the packs are pinned first, then the chunk is found in its sealed pack's hash-checked
//!    trailer, exactly (format 1: at that offset with those lengths; format 2: the whole
//!    blob reference, frame offset, sealed length, place in the frame and kind), in the
//!    repository the plan named (a chunk of another repository is in no pack there), and
//!    only then, with the job's process still alive (so it still holds the repository
//!    lock, and no gc that could delete the pack can have started before the pin), is the
//!    snarf recorded and its pre-image freed.
//!
//! A snarf a backup already stored for this snapshot is skipped: its first record stays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::converge::{self, ConvergeEnd, ConvergeFeed};
use super::feed::{AckKind, Feed, Handed, Tier};
use super::plan::{self, Plan, PlanRequest, SnapshotDesc};
use super::proto::{AckItem, BatchItem, StoredChunk};
use super::released::Released;
use super::{Error, Result};
use crate::repo::handle::VolumeReader;
use crate::repo::v2::chunk::BlobKind;
use crate::repo::v2::tree::Entry;
use crate::repo::{v2, ChunkId, ChunkRef, Handle, Location, PackId};
use crate::snapshot::{self, Engine, Snapshot};

/// Whether the job's process is still alive; asked after pinning, before freeing.
pub type PeerAlive = Arc<dyn Fn() -> bool + Send + Sync>;

/// Sealed packs whose trailers were read lately, for checking acks (acks come in pack order).
const TRAILERS_KEPT: usize = 4;

/// Handed snarfs, not acknowledged yet, whose content id the daemon keeps for checking
/// their acks (about 4 MiB at most; a job acknowledges a pack's worth at a time).
pub const IDS_KEPT: usize = 1 << 16;

/// One snarf's data as a job receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnarfData {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Length in bytes.
    pub len: u32,
    /// The bytes; `None` when all zeros.
    pub data: Option<Vec<u8>>,
    /// The tier of the feed's order it was handed out from.
    pub tier: Tier,
}

/// A batch of snarfs as a job receives it: each in its own buffer, or (from a socket) the
/// frame's payload as it was read, the bytes of the non-zero snarfs laid end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Each snarf with its own bytes.
    Each(Vec<SnarfData>),
    /// The items in order and their bytes, checked to add up ([`Batch::joined`]).
    Joined {
        /// The snarfs, in order.
        items: Vec<BatchItem>,
        /// The bytes of the non-zero ones, end to end.
        payload: Vec<u8>,
    },
}

/// One snarf of a [`Batch`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnarfRef<'a> {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Length in bytes.
    pub len: u32,
    /// The bytes; `None` when all zeros.
    pub data: Option<&'a [u8]>,
    /// The tier of the feed's order it was handed out from.
    pub tier: Tier,
}

impl Batch {
    /// A batch over a frame's items and payload; the error says how they do not match.
    pub fn joined(items: Vec<BatchItem>, payload: Vec<u8>) -> Result<Batch> {
        let mut at = 0usize;
        for it in items.iter().filter(|it| !it.zero) {
            at = at
                .checked_add(it.len as usize)
                .filter(|&end| end <= payload.len())
                .ok_or_else(|| {
                    Error::Protocol("a batch's payload is shorter than its items".into())
                })?;
        }
        if at != payload.len() {
            return Err(Error::Protocol(
                "a batch's payload is longer than its items".into(),
            ));
        }
        Ok(Batch::Joined { items, payload })
    }

    /// The snarfs, in order.
    pub fn snarfs(&self) -> Vec<SnarfRef<'_>> {
        match self {
            Batch::Each(list) => list
                .iter()
                .map(|d| SnarfRef {
                    vol: d.vol,
                    snarf: d.snarf,
                    len: d.len,
                    data: d.data.as_deref(),
                    tier: d.tier,
                })
                .collect(),
            Batch::Joined { items, payload } => {
                let mut at = 0usize;
                items
                    .iter()
                    .map(|it| {
                        let data = (!it.zero).then(|| {
                            let bytes = &payload[at..at + it.len as usize];
                            at += it.len as usize;
                            bytes
                        });
                        SnarfRef {
                            vol: it.vol,
                            snarf: it.snarf,
                            len: it.len,
                            data,
                            tier: it.tier,
                        }
                    })
                    .collect()
            }
        }
    }

    /// The snarfs, each with its own bytes.
    pub fn into_snarfs(self) -> Vec<SnarfData> {
        match self {
            Batch::Each(list) => list,
            joined => joined
                .snarfs()
                .into_iter()
                .map(|r| SnarfData {
                    vol: r.vol,
                    snarf: r.snarf,
                    len: r.len,
                    data: r.data.map(<[u8]>::to_vec),
                    tier: r.tier,
                })
                .collect(),
        }
    }
}

/// What a backup job asks of the engine side, wherever that runs.
pub trait Session: Send + Sync {
    /// What the snapshot holds.
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc>;
    /// Makes the plan and starts handing out snarfs; the backup goes to `repo`.
    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan>;
    /// Up to `max` more snarfs; `None` once every planned snarf was handed out.
    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>>;
    /// [`Session::next`] as a [`Batch`], which a client over a socket gives without
    /// copying each snarf out of the frame it read.
    fn next_batch(&self, max: usize) -> Result<Option<Batch>> {
        Ok(self.next(max)?.map(Batch::Each))
    }
    /// The backup stored these snarfs (durably).
    fn ack(&self, items: &[AckItem]) -> Result<()>;
    /// Starts a converge backup: describes the live volumes (the plan then takes an
    /// instant's snapshot to plan on, releases it and feeds the job live; see
    /// [`super::converge`]).
    fn begin_converge(&self) -> Result<SnapshotDesc> {
        Err(Error::Refused(
            "this end of the job cannot run converge backups".into(),
        ))
    }
    /// How a converge backup's copy ended, once every snarf was sent: the freeze it is a
    /// copy of, and its passes.
    fn converged(&self) -> Result<ConvergeEnd> {
        Err(Error::Protocol("no converge backup was started".into()))
    }
    /// The job is about to commit (for listings); nothing to answer.
    fn committing(&self) {}
    /// The backup is committed.
    fn done(&self, backup: &str) -> Result<()>;
    /// The job gives up.
    fn abort(&self, reason: &str);
    /// The mount daemon's pid, when the engine runs there.
    fn daemon_pid(&self) -> Option<u32> {
        None
    }
}

struct Active {
    snap: Arc<Snapshot>,
    feed: Feed,
    /// With a mount: the repository the plan named, where acknowledged snarfs are read back.
    repo: Option<Handle>,
    /// Per feed volume, its base backup's table, for checking reused snarfs (with a mount).
    bases: Vec<Option<VolumeReader>>,
}

/// Where a converge job is, on the engine side.
#[derive(Default)]
enum Converging {
    /// Not a converge job (or not yet).
    #[default]
    No,
    /// Described (the live volumes, through an instant's snapshot under this reserved
    /// name, released at once); the plan takes another instant under it.
    Described(String),
    /// Planned: fed live, then from the freeze.
    Running(Box<ConvergeFeed>),
}

/// The engine side of one job; see the module documentation.
pub struct JobService {
    engine: Arc<Engine>,
    released: Option<Arc<Released>>,
    active: OnceLock<Active>,
    converging: Mutex<Converging>,
    buf: Mutex<Vec<u8>>,
    peer_alive: Option<PeerAlive>,
    trailers: Mutex<VecDeque<(PackId, HashSet<StoredChunk>)>>,
    /// With a mount: the content id of each handed snarf not acknowledged yet (`None`: all
    /// zeros), computed as it was served, by (volume, snarf): an ack names no tier.
    ids: Mutex<HashMap<(usize, u64), Option<ChunkId>>>,
    /// Most entries `ids` holds.
    ids_kept: usize,
    /// Snarfs read from the snapshot, to hand out or to check an ack.
    reads: AtomicU64,
}

/// One acknowledgement that passed the checks that need no repository.
struct Checked {
    vol: usize,
    snarf: u64,
    chunk: StoredChunk,
    kind: AckKind,
}

/// A refused acknowledgement: the job is told this, and its connection ends.
fn refused(why: String) -> Error {
    Error::Protocol(format!("acknowledgement refused: {why}"))
}

/// Checks a chunk reference's shape for a snarf of `len` bytes.
fn check_shape(c: &StoredChunk, len: u32) -> std::result::Result<(), String> {
    match c {
        StoredChunk::V1(c) => check_shape_v1(c, len),
        StoredChunk::V2(c) => check_shape_v2(c, len),
    }
}

/// A format 2 reference decodes only well-formed (see `v2::chunk`); what is left is the
/// length and that it names a snarf's data, not a tree page.
fn check_shape_v2(c: &v2::chunk::ChunkRef, len: u32) -> std::result::Result<(), String> {
    if c.raw_len != len {
        return Err(format!(
            "it names a chunk of {} bytes for a snarf of {len}",
            c.raw_len
        ));
    }
    if !c.is_zero() && !c.kind.is_data() {
        return Err(format!(
            "blob {} is a tree page, not a snarf's data",
            c.id.short()
        ));
    }
    Ok(())
}

fn check_shape_v1(c: &ChunkRef, len: u32) -> std::result::Result<(), String> {
    if c.raw_len != len {
        return Err(format!(
            "it names a chunk of {} bytes for a snarf of {len}",
            c.raw_len
        ));
    }
    if c.pack.is_none() {
        // Only the zero marker has no pack.
        if *c != ChunkRef::zero(len) {
            return Err("a chunk without a pack that is not the zero-snarf marker".into());
        }
        return Ok(());
    }
    if c.stored_len == 0 || c.stored_len > c.raw_len {
        return Err(format!(
            "a stored chunk of {} bytes cannot hold {} raw bytes",
            c.stored_len, c.raw_len
        ));
    }
    Ok(())
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService").finish_non_exhaustive()
    }
}

impl JobService {
    /// A job over `engine`. With `released`, acknowledged snarfs are recorded there (and
    /// their packs pinned) so the snapshot stays readable; direct mode passes `None`.
    pub fn new(engine: Arc<Engine>, released: Option<Arc<Released>>) -> JobService {
        JobService {
            engine,
            released,
            active: OnceLock::new(),
            converging: Mutex::new(Converging::No),
            buf: Mutex::new(Vec::new()),
            peer_alive: None,
            trailers: Mutex::new(VecDeque::new()),
            ids: Mutex::new(HashMap::new()),
            ids_kept: IDS_KEPT,
            reads: AtomicU64::new(0),
        }
    }

    /// The same, keeping the content ids of at most `n` handed snarfs (tests use 0 to check
    /// every ack by reading the snarf back).
    #[cfg(test)]
    pub(crate) fn with_ids_kept(mut self, n: usize) -> JobService {
        self.ids_kept = n;
        self
    }

    /// Snarfs read from the snapshot so far, to hand them out or to check an ack.
    pub fn snarfs_read(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Reads a handed snarf as the snapshot froze it, counting the read.
    fn read_snarf(&self, a: &Active, h: Handed, buf: &mut Vec<u8>) -> snapshot::Result<bool> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        a.feed.read(h, buf)
    }

    /// The same, asking `alive` whether the job's process still runs before it frees
    /// anything an acknowledgement names (see the module documentation).
    pub fn with_peer(mut self, alive: PeerAlive) -> JobService {
        self.peer_alive = Some(alive);
        self
    }

    /// The checks of an ack that need no repository: place, length, shape, provenance.
    /// `None` for a snarf already stored for this snapshot (nothing to do).
    fn check_place(&self, a: &Active, it: &AckItem) -> Result<Option<Checked>> {
        let vol = it.vol as usize;
        let kind = a.feed.ack_kind(vol, it.snarf).map_err(refused)?;
        let len = a.feed.snarf_len(vol, it.snarf).ok_or_else(|| {
            refused(format!(
                "snarf {} of volume position {vol} is past the volume's end",
                it.snarf
            ))
        })?;
        if let Some(repo) = &a.repo {
            if repo.format() != it.chunk.format() {
                return Err(refused(format!(
                    "it carries a format {} chunk reference for a backup into {}, a format {} repository",
                    it.chunk.format(),
                    repo.location(),
                    repo.format()
                )));
            }
        }
        check_shape(&it.chunk, len).map_err(|why| {
            refused(format!(
                "snarf {} of volume position {vol}: {why}",
                it.snarf
            ))
        })?;
        if a.feed.is_stored(vol, it.snarf) {
            return Ok(None);
        }
        Ok(Some(Checked {
            vol,
            snarf: it.snarf,
            chunk: it.chunk,
            kind,
        }))
    }

    /// The content id of a handed snarf, as kept when it was served, or read back (past
    /// [`IDS_KEPT`]): `Some(None)` for all zeros, `None` when another job's backup stored
    /// the snarf meanwhile (nothing left to do).
    fn content_of(&self, a: &Active, repo: &Handle, h: Handed) -> Result<Option<Option<ChunkId>>> {
        if let Some(kept) = self.ids.lock().get(&(h.vol, h.snarf)) {
            return Ok(Some(*kept));
        }
        let mut buf = std::mem::take(&mut *self.buf.lock());
        let nonzero = match self.read_snarf(a, h, &mut buf) {
            Ok(nz) => nz,
            Err(snapshot::Error::StoredInBackup { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let id = nonzero.then(|| content_id(repo, &buf));
        *self.buf.lock() = buf;
        Ok(Some(id))
    }

    /// A handed snarf's chunk must hold exactly the bytes the snapshot has there. `false`
    /// when another job's backup stored the snarf meanwhile (nothing left to do).
    fn check_content(&self, a: &Active, repo: &Handle, c: &Checked) -> Result<bool> {
        if let (Handle::V2(repo), StoredChunk::V2(r)) = (repo, &c.chunk) {
            // Kept ids are the repository's; a format 1 chunk (plain blake3) exists only
            // in a plain repository, where the two are the same.
            if r.kind == BlobKind::Legacy && !repo.seal().is_plain() {
                return Err(refused(format!(
                    "snarf {} names format 1 chunk {}, which cannot be part of an encrypted repository",
                    c.snarf,
                    r.id.short()
                )));
            }
        }
        let h = Handed {
            vol: c.vol,
            snarf: c.snarf,
            tier: Tier::Cold,
        };
        let Some(held) = self.content_of(a, repo, h)? else {
            return Ok(false);
        };
        let same = match held {
            None => c.chunk.is_zero(),
            Some(id) => !c.chunk.is_zero() && id == c.chunk.id(),
        };
        if same {
            return Ok(true);
        }
        let name = &a.feed.volume_names()[c.vol];
        log::warn!(
            "snapshot \"{}\": refused an ack for snarf {} of \"{name}\": chunk {} does not hold the snapshot's bytes",
            a.snap.name(),
            c.snarf,
            c.chunk.id().short()
        );
        Err(refused(format!(
            "chunk {} named for snarf {} of volume \"{name}\" does not hold the snapshot's bytes there",
            c.chunk.id().short(),
            c.snarf
        )))
    }

    /// Reused snarfs must be acknowledged with the very records of the base backup.
    fn check_reused(&self, a: &Active, reused: &[&Checked]) -> Result<()> {
        let mut i = 0;
        while i < reused.len() {
            // A run of consecutive snarfs of one volume, read from the base in one go.
            let first = reused[i];
            let mut n = 1;
            while i + n < reused.len()
                && reused[i + n].vol == first.vol
                && reused[i + n].snarf == first.snarf + n as u64
            {
                n += 1;
            }
            let name = &a.feed.volume_names()[first.vol];
            let base = a.bases.get(first.vol).and_then(Option::as_ref).ok_or_else(|| {
                refused(format!(
                    "volume \"{name}\" is not reused from a base, so snarf {} cannot be acknowledged as reused",
                    first.snarf
                ))
            })?;
            let refs: Vec<StoredChunk> = match base {
                VolumeReader::V1(r) => r
                    .chunk_refs(first.snarf, n as u64)?
                    .into_iter()
                    .map(StoredChunk::V1)
                    .collect(),
                VolumeReader::V2(r) => (first.snarf..first.snarf + n as u64)
                    .map(|s| {
                        Ok(StoredChunk::V2(match r.entry(s)? {
                            Entry::Zero => v2::chunk::ChunkRef::zero(
                                crate::repo::v1::manifest::snarf_len(r.size(), r.snarf_size(), s),
                            ),
                            Entry::Chunk(c) => c,
                        }))
                    })
                    .collect::<crate::repo::Result<_>>()?,
            };
            for (k, c) in reused[i..i + n].iter().enumerate() {
                if refs.get(k) != Some(&c.chunk) {
                    return Err(refused(format!(
                        "snarf {} of volume \"{name}\" is acknowledged as reused from backup {}, which holds another chunk there",
                        c.snarf,
                        base.backup()
                    )));
                }
            }
            i += n;
        }
        Ok(())
    }

    /// The snapshot `name`, if it can still be read.
    fn snapshot(&self, name: &str) -> Result<Arc<Snapshot>> {
        let snap = self.engine.snapshot(name)?;
        match snap.state() {
            snapshot::SnapState::Live => Ok(snap),
            snapshot::SnapState::Broken(reason) => Err(snapshot::Error::Broken {
                name: name.to_string(),
                reason,
            }
            .into()),
            snapshot::SnapState::Released => Err(snapshot::Error::Released {
                name: name.to_string(),
            }
            .into()),
        }
    }

    fn active(&self) -> Result<&Active> {
        self.active
            .get()
            .ok_or_else(|| Error::Protocol("snarfs were asked for before a plan".into()))
    }

    /// Counts of the feed, once planned.
    pub fn feed_stats(&self) -> Option<super::FeedStats> {
        self.active.get().map(|a| a.feed.stats())
    }

    /// Reads one handed snarf, from the repository if an earlier backup of this snapshot
    /// already stored it and its pre-image is gone.
    fn read(&self, a: &Active, h: Handed) -> Result<SnarfData> {
        let mut buf = std::mem::take(&mut *self.buf.lock());
        let result = self.read_snarf(a, h, &mut buf);
        let nonzero = match result {
            Ok(nz) => nz,
            Err(snapshot::Error::StoredInBackup {
                snapshot: _,
                volume,
                snarf,
            }) if self.released.is_some() => {
                let r = self.released.as_ref().map(Arc::clone);
                if let Some(r) = r {
                    r.read(&a.snap, &volume, snarf, 0, &mut buf)?;
                }
                !crate::repo::chunk::is_all_zero(&buf)
            }
            Err(e) => return Err(e.into()),
        };
        if let (Some(_), Some(repo)) = (&self.released, &a.repo) {
            // Hashed now, while the bytes are at hand, for checking the ack (see the
            // module documentation).
            let mut ids = self.ids.lock();
            if ids.len() < self.ids_kept {
                ids.insert((h.vol, h.snarf), nonzero.then(|| content_id(repo, &buf)));
            }
        }
        let len = buf.len() as u32;
        let data = if nonzero {
            Some(buf)
        } else {
            *self.buf.lock() = buf;
            None
        };
        Ok(SnarfData {
            vol: h.vol as u32,
            snarf: h.snarf,
            len,
            data,
            tier: h.tier,
        })
    }

    /// A stored chunk must be listed, exactly so, in the hash-checked trailer of its
    /// sealed pack in `repo`.
    fn check_in_pack(&self, repo: &Handle, c: &StoredChunk) -> Result<()> {
        let pack = c.pack();
        let mut cache = self.trailers.lock();
        if !cache.iter().any(|(p, _)| *p == pack) {
            let set = match (repo, c) {
                (Handle::V1(repo), StoredChunk::V1(_)) => trailer_v1(repo, &pack)?,
                (Handle::V2(repo), StoredChunk::V2(r)) => trailer_v2(repo, r)?,
                _ => {
                    return Err(refused(format!(
                        "a format {} chunk for a format {} repository",
                        c.format(),
                        repo.format()
                    )))
                }
            };
            if cache.len() >= TRAILERS_KEPT {
                cache.pop_front();
            }
            cache.push_back((pack, set));
        }
        let listed_there = cache.iter().any(|(p, set)| *p == pack && set.contains(c));
        if listed_there {
            return Ok(());
        }
        let at = match c {
            StoredChunk::V1(r) => format!("at offset {} with those lengths", r.offset),
            StoredChunk::V2(r) => format!(
                "in the frame at offset {} with that place and those lengths",
                r.offset
            ),
        };
        Err(refused(format!(
            "pack {pack} of {} does not list chunk {} {at}",
            repo.location(),
            c.id().short(),
        )))
    }
}

/// The id `repo` gives a chunk of `bytes`: the repository's own (keyed when encrypted) in
/// format 2, plain blake3 in format 1.
fn content_id(repo: &Handle, bytes: &[u8]) -> ChunkId {
    match repo {
        Handle::V2(r) => r.seal().blob_id(bytes),
        Handle::V1(_) => ChunkId::of(bytes),
    }
}

/// The chunks format 1 pack `pack` of `repo` lists in its hash-checked trailer.
fn trailer_v1(repo: &crate::repo::Repo, pack: &PackId) -> Result<HashSet<StoredChunk>> {
    let path = repo.pack_path(pack);
    let file = std::fs::File::open(&path).map_err(|e| {
        refused(format!(
            "the chunk's pack {} cannot be opened ({e}); it is not sealed in the repository",
            path.display()
        ))
    })?;
    let entries = crate::repo::pack::read_trailer(&file, pack).map_err(|(at, why)| {
        refused(format!(
            "pack {} is not a sealed pack ({why} at {at})",
            path.display()
        ))
    })?;
    Ok(entries
        .iter()
        .map(|e| {
            StoredChunk::V1(ChunkRef {
                id: e.id,
                pack: *pack,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
            })
        })
        .collect())
}

/// The blobs the format 2 pack holding `r` lists in its sealed, hash-checked trailer.
fn trailer_v2(repo: &v2::Repository, r: &v2::chunk::ChunkRef) -> Result<HashSet<StoredChunk>> {
    let key = v2::pack::pack_key(r);
    let name = || format!("{}/{}", repo.location(), key.name());
    let size = repo.backend().size(&key)?.ok_or_else(|| {
        refused(format!(
            "the chunk's pack {} does not exist; it is not sealed in the repository",
            name()
        ))
    })?;
    let entries = v2::pack::read_trailer(repo.backend().as_ref(), repo.seal(), &key, size)
        .map_err(|(at, why)| {
            refused(format!(
                "pack {} is not a sealed pack ({why} at {at})",
                name()
            ))
        })?;
    Ok(entries.into_iter().map(StoredChunk::V2).collect())
}

/// A converge job's planning instant: released when dropped, whatever happened (a failed
/// or panicking plan included), since no user can release a reserved snapshot.
struct PlanningInstant {
    engine: Arc<Engine>,
    name: String,
    snap: Arc<Snapshot>,
    held: bool,
}

impl PlanningInstant {
    fn take(engine: &Arc<Engine>, name: &str) -> Result<PlanningInstant> {
        Ok(PlanningInstant {
            engine: engine.clone(),
            name: name.to_string(),
            snap: engine.take_reserved(name)?,
            held: true,
        })
    }

    /// Releases it; returns the snapshot (its epoch is the first pass's mark).
    fn release(mut self) -> Result<Arc<Snapshot>> {
        self.held = false;
        self.engine.release(&self.name)?;
        Ok(self.snap.clone())
    }
}

impl Drop for PlanningInstant {
    fn drop(&mut self) {
        if self.held {
            if let Err(e) = self.engine.release(&self.name) {
                log::warn!("releasing {}: {e}", self.name);
            }
        }
    }
}

impl JobService {
    /// The plan of a converge job (`None`: the request is not one): made on its planning
    /// snapshot, which is released at once; the feed then reads live after its epoch.
    fn plan_converge(&self, req: &PlanRequest) -> Result<Option<Plan>> {
        let mut c = self.converging.lock();
        let name = match &*c {
            Converging::Described(name) if *name == req.snapshot => name.clone(),
            Converging::No => return Ok(None),
            Converging::Running(_) => return Err(Error::Protocol("a job makes one plan".into())),
            Converging::Described(_) => {
                return Err(Error::Protocol(
                    "a converge job plans on the description its converge request got".into(),
                ))
            }
        };
        *c = Converging::No;
        let instant = PlanningInstant::take(&self.engine, &name)?;
        let (planned, volumes) = plan::plan(&self.engine, &instant.snap, req)?;
        let snap = instant.release()?;
        let sets: Vec<_> = volumes.iter().map(|v| v.only.clone()).collect();
        let feed = ConvergeFeed::start(
            self.engine.clone(),
            planned.clone(),
            sets.clone(),
            snap.epoch(),
            &name,
        )?;
        *c = Converging::Running(Box::new(feed));
        Ok(Some(Plan {
            volumes: planned,
            sets,
        }))
    }
}

impl Session for JobService {
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
        let snap = self.snapshot(snapshot)?;
        Ok(SnapshotDesc::of(&self.engine, &snap))
    }

    fn begin_converge(&self) -> Result<SnapshotDesc> {
        let mut c = self.converging.lock();
        if !matches!(*c, Converging::No) || self.active.get().is_some() {
            return Err(Error::Protocol("a job makes one plan".into()));
        }
        // An instant's snapshot, released at once: nothing is held while the job opens
        // its repository and finds its bases; the plan takes another instant.
        let name = converge::reserved_name();
        let instant = PlanningInstant::take(&self.engine, &name)?;
        let desc = SnapshotDesc::of(&self.engine, &instant.snap);
        instant.release()?;
        *c = Converging::Described(name);
        Ok(desc)
    }

    fn converged(&self) -> Result<ConvergeEnd> {
        match &*self.converging.lock() {
            Converging::Running(feed) => feed.end(),
            _ => Err(Error::Protocol("no converge backup was started".into())),
        }
    }

    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
        if self.active.get().is_some() {
            return Err(Error::Protocol("a job makes one plan".into()));
        }
        if let Some(plan) = self.plan_converge(req)? {
            return Ok(plan);
        }
        let snap = self.snapshot(&req.snapshot)?;
        let (planned, volumes) = plan::plan(&self.engine, &snap, req)?;
        let repo = match &self.released {
            // The daemon reads acknowledged snarfs back from here; the job holds the lock.
            // A repository over ssh is none the mount reads freed snarfs back from (the
            // released tables hold local folders): its acks free nothing (see `ack`).
            Some(_) => match Location::of_arg(repo)? {
                Location::Ssh(_) | Location::S3(_) => None,
                local => Some(Handle::open_quiet(&local)?),
            },
            None => None,
        };
        // With a mount, reused snarfs are checked against the base backups' own tables.
        let mut bases = Vec::with_capacity(planned.len());
        for pv in &planned {
            let reader = match (&repo, pv.base()) {
                (Some(repo), Some(backup)) => {
                    let name = req
                        .bases
                        .iter()
                        .find(|b| b.volume_id == pv.id && b.backup == backup)
                        .map_or(pv.name.as_str(), |b| b.name.as_str());
                    Some(repo.volume_reader(backup, name)?)
                }
                _ => None,
            };
            bases.push(reader);
        }
        let sets = volumes.iter().map(|v| v.only.clone()).collect();
        let feed = Feed::new(self.engine.clone(), snap.clone(), volumes)?;
        let _ = self.active.set(Active {
            snap,
            feed,
            repo,
            bases,
        });
        Ok(Plan {
            volumes: planned,
            sets,
        })
    }

    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        if let Converging::Running(feed) = &mut *self.converging.lock() {
            let batch = feed.next(max)?;
            let n = batch.as_ref().map_or(0, Vec::len);
            self.reads.fetch_add(n as u64, Ordering::Relaxed);
            return Ok(batch);
        }
        let a = self.active()?;
        let handed = a.feed.next(max);
        if handed.is_empty() {
            return Ok(None);
        }
        handed
            .into_iter()
            .map(|h| self.read(a, h))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ack(&self, items: &[AckItem]) -> Result<()> {
        if matches!(*self.converging.lock(), Converging::Running(_)) {
            // No snapshot holds pre-images for it: nothing to free (module documentation).
            return Ok(());
        }
        let a = self.active()?;
        let mut checked = Vec::with_capacity(items.len());
        for it in items {
            if let Some(c) = self.check_place(a, it)? {
                checked.push(c);
            }
        }
        if self.released.is_some() && a.repo.is_none() {
            // A backup into a repository the mount cannot read back from (ssh): the
            // snapshot keeps its pre-images until it is released, so its reads never
            // depend on a connection to another host.
            return Ok(());
        }
        if let (Some(released), Some(repo)) = (&self.released, &a.repo) {
            // A peer: nothing it says is freed before it is verified.
            let mut keep = Vec::with_capacity(checked.len());
            for c in &checked {
                keep.push(c.kind == AckKind::Reused || self.check_content(a, repo, c)?);
            }
            let mut keep = keep.into_iter();
            checked.retain(|_| keep.next().unwrap_or(false));
            let mut reused: Vec<&Checked> = checked
                .iter()
                .filter(|c| c.kind == AckKind::Reused)
                .collect();
            reused.sort_by_key(|c| (c.vol, c.snarf));
            self.check_reused(a, &reused)?;
            let packs: Vec<PackId> = checked
                .iter()
                .filter(|c| !c.chunk.is_zero())
                .map(|c| c.chunk.pack())
                .collect();
            // Pinned before the packs are looked at: a gc that starts from here on keeps
            // them, and one that started earlier needed the lock the job holds.
            released.pin(&a.snap, repo, &packs)?;
            for c in checked
                .iter()
                .filter(|c| c.kind == AckKind::Handed && !c.chunk.is_zero())
            {
                self.check_in_pack(repo, &c.chunk)?;
            }
            if let Some(alive) = &self.peer_alive {
                if !alive() {
                    return Err(refused(
                        "the job's process has ended, so it no longer holds the repository lock and its acknowledgements cannot be trusted; the pre-images stay".into(),
                    ));
                }
            }
            let mut ids = Vec::with_capacity(checked.len());
            for c in &checked {
                let id = a
                    .feed
                    .volume_id(c.vol)
                    .ok_or_else(|| refused(format!("volume position {} left the plan", c.vol)))?;
                ids.push((id, c.snarf, c.chunk));
            }
            // Recorded before the pre-images go: a reader who misses one finds the chunk.
            released.record(&a.snap, repo, &ids)?;
            let mut kept = self.ids.lock();
            for c in &checked {
                kept.remove(&(c.vol, c.snarf));
            }
        }
        if self.released.is_none() && a.snap.is_persistent() {
            // Nothing here records where the snarfs went: a persistent snapshot, readable
            // after this job from the next mount, keeps its pre-images.
            return Ok(());
        }
        let done: Vec<(usize, u64)> = checked.iter().map(|c| (c.vol, c.snarf)).collect();
        a.feed.ack_many(&done)?;
        Ok(())
    }

    fn done(&self, _backup: &str) -> Result<()> {
        // Changed-snarf tracking's checkpoint moves to the snapshot just backed up.
        if let Some(a) = self.active.get() {
            self.engine.backup_committed(&a.snap);
        }
        if let Converging::Running(feed) = &*self.converging.lock() {
            if let Some(freeze) = feed.freeze() {
                self.engine.backup_committed(freeze);
            }
        }
        Ok(())
    }

    fn abort(&self, _reason: &str) {}
}
