//! One backup job, from a [`Session`] to a committed backup:
//!
//! ```text
//! reader thread ──snarfs──> N worker threads ──prepared chunks──> writer (calling thread)
//!  session.next()            preparer.prepare()                    writer.put / reuse
//!                            (hash, then compress new ones)        durable → session.ack()
//! ```
//!
//! Queues between the stages are bounded, so memory stays a few MiB whatever the volume
//! size. The writer also reuses, a few at a time between puts, the unchanged snarfs of
//! incremental volumes from their base, so their pre-images are freed early too. Durable
//! snarfs (their pack sealed) are acknowledged in batches. Any failure abandons the backup:
//! nothing becomes visible in the repository.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::base::{find_bases, Source};
use super::converge::ConvergeEnd;
use super::feed::Tier;
use super::plan::{snarf_len, Plan, PlanRequest, PlannedVolume, SnapshotDesc, VolumeKind};
use super::progress::{Progress, ProgressSink};
use super::proto::{AckItem, StoredChunk};
use super::service::{Batch, Session, SnarfData};
use super::vocab::Mode;
use super::{Error, Result};
use crate::chain::ErrorChain;
use crate::repo::{
    v2, BackupId, ChunkRef, Durable, Handle, NewBackup, PreparedChunk, Repo, VolumeReader,
    VolumeSlot,
};
use crate::snapshot::SnarfSet;

/// What to back up, and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The snapshot.
    pub snapshot: String,
    /// Only these volumes (`None`: all).
    pub volumes: Option<Vec<String>>,
    /// Full, incremental or auto.
    pub mode: Mode,
    /// Hashing and compression threads (at least 1).
    pub workers: usize,
    /// zstd level for new chunks; the repository's if `None`.
    pub compression: Option<i32>,
    /// How long to wait for the repository lock; fail at once if `None`.
    pub lock_wait: Option<Duration>,
    /// Snarfs asked for per request.
    pub batch: usize,
    /// Snarfs acknowledged per message (at most; a pause sends what is pending).
    pub ack_batch: usize,
    /// A converge backup: copied live in passes, consistent as of a final freeze, instead
    /// of a backup of the snapshot named above (which only labels it).
    pub converge: bool,
}

impl BackupOptions {
    /// Defaults: every volume, auto mode, one worker per core.
    pub fn new(snapshot: &str) -> BackupOptions {
        BackupOptions {
            snapshot: snapshot.to_string(),
            volumes: None,
            mode: Mode::Auto,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            compression: None,
            lock_wait: None,
            batch: 16,
            ack_batch: 256,
            converge: false,
        }
    }
}

/// What happened to one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSummary {
    /// Name.
    pub name: String,
    /// Size.
    pub size: u64,
    /// Full (and why) or incremental (and from which base).
    pub kind: VolumeKind,
    /// Snarfs in the volume.
    pub snarfs: u64,
    /// Snarfs read from the snapshot.
    pub read: u64,
    /// Snarfs taken unchanged from the base (incremental), or recorded as zeros without
    /// being read because the snapshot has holes there (full).
    pub reused: u64,
}

/// Snarfs the engine side sent, by the tier of the feed's order they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentByTier {
    /// Their pre-image was captured by a live write while the job ran.
    pub urgent: u64,
    /// Their pre-image was held when the job started.
    pub held: u64,
    /// They were in the page cache of the volume file (the live workload had read or
    /// written them), so sending them cost no disk read.
    pub cached: u64,
    /// Read in disk order.
    pub cold: u64,
}

impl SentByTier {
    /// Snarfs sent in all.
    pub fn total(&self) -> u64 {
        self.urgent + self.held + self.cached + self.cold
    }

    fn count(&mut self, tier: Tier) {
        match tier {
            Tier::Urgent => self.urgent += 1,
            Tier::Held => self.held += 1,
            Tier::Cached => self.cached += 1,
            Tier::Cold => self.cold += 1,
        }
    }
}

/// A session that counts the snarfs it hands over by tier, for the summary.
struct Counting<'a> {
    inner: &'a dyn Session,
    sent: Mutex<SentByTier>,
}

impl Session for Counting<'_> {
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
        self.inner.describe(snapshot)
    }
    fn plan(&self, req: &PlanRequest, repo: &std::path::Path) -> Result<Plan> {
        self.inner.plan(req, repo)
    }
    fn begin_converge(&self) -> Result<SnapshotDesc> {
        self.inner.begin_converge()
    }
    fn converged(&self) -> Result<ConvergeEnd> {
        self.inner.converged()
    }
    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        let batch = self.inner.next(max)?;
        let mut sent = self.sent.lock();
        for d in batch.iter().flatten() {
            sent.count(d.tier);
        }
        Ok(batch)
    }
    fn next_batch(&self, max: usize) -> Result<Option<Batch>> {
        let batch = self.inner.next_batch(max)?;
        if let Some(b) = &batch {
            let mut sent = self.sent.lock();
            for d in b.snarfs() {
                sent.count(d.tier);
            }
        }
        Ok(batch)
    }
    fn ack(&self, items: &[AckItem]) -> Result<()> {
        self.inner.ack(items)
    }
    fn committing(&self) {
        self.inner.committing()
    }
    fn done(&self, backup: &str) -> Result<()> {
        self.inner.done(backup)
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
    fn daemon_pid(&self) -> Option<u32> {
        self.inner.daemon_pid()
    }
}

/// What a finished job did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The committed backup.
    pub backup: BackupId,
    /// The snapshot.
    pub snapshot: String,
    /// Per volume.
    pub volumes: Vec<VolumeSummary>,
    /// Bytes of snarfs read from the snapshot.
    pub bytes_read: u64,
    /// Of which all zeros (recorded, never stored).
    pub zero_bytes_read: u64,
    /// New chunks stored.
    pub new_chunks: u64,
    /// Their uncompressed bytes.
    pub new_raw_bytes: u64,
    /// Bytes they take in packs.
    pub new_stored_bytes: u64,
    /// The snarfs sent, by where the feed found them.
    pub sent: SentByTier,
    /// Seconds the whole job took.
    pub seconds: f64,
    /// For a converge backup: its passes, the bytes copied again and its freeze.
    pub converge: Option<ConvergeEnd>,
}

impl Summary {
    /// Non-zero bytes read for every byte new to the repository (1.0: nothing deduplicated).
    pub fn dedup_ratio(&self) -> Option<f64> {
        let data = self.bytes_read - self.zero_bytes_read;
        (self.new_raw_bytes > 0).then(|| data as f64 / self.new_raw_bytes as f64)
    }

    /// Uncompressed bytes of new chunks per stored byte.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.new_stored_bytes > 0)
            .then(|| self.new_raw_bytes as f64 / self.new_stored_bytes as f64)
    }

    /// Snarfs read, over all volumes.
    pub fn snarfs_read(&self) -> u64 {
        self.volumes.iter().map(|v| v.read).sum()
    }

    /// Snarfs reused, over all volumes.
    pub fn snarfs_reused(&self) -> u64 {
        self.volumes.iter().map(|v| v.reused).sum()
    }
}

/// A snarf on its way from the reader to the writer.
struct Work {
    vol: u32,
    snarf: u64,
    len: u32,
    chunk: PreparedChunk,
}

/// The first failure of any stage; the others stop when they see it.
#[derive(Default)]
struct Failure {
    stop: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    fn set(&self, e: Error) {
        let mut f = self.first.lock();
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Batches a format 2 job has asked for ahead of the one it is storing.
const PREFETCH: usize = 2;

/// Unchanged snarfs reused per turn of the write loop when nothing new is ready.
const REUSE_WINDOW: u64 = 1024;

/// Snarfs of a volume that are not sent, still to be recorded: unchanged ones of an
/// incremental volume, reused from its base, or the holes of a full one, as zeros.
struct Reuse {
    slot: VolumeSlot,
    vol: usize,
    /// The base's table; `None`: the snarfs not sent are holes.
    reader: Option<VolumeReader>,
    sent: SnarfSet,
    next: u64,
    count: u64,
    /// Size and snarf size of the volume (for the length of each zero snarf).
    size: u64,
    snarf_size: u32,
}

/// Runs one backup job to the end: plan, transfer, commit. `progress` hears now and then
/// from the calling thread, and is finished when the job ends, however it ends.
pub fn run(
    session: &dyn Session,
    repo: &Handle,
    opts: &BackupOptions,
    progress: &mut dyn ProgressSink,
) -> Result<Summary> {
    let counting = Counting {
        inner: session,
        sent: Mutex::default(),
    };
    let result = match repo {
        Handle::V1(r) => run_job(&counting, r, opts, progress),
        Handle::V2(r) => run_v2(&counting, repo, r, opts, progress),
    };
    progress.finish();
    result
        .map(|mut s| {
            s.sent = *counting.sent.lock();
            s
        })
        .map_err(|e| explain_missing_repo(e, repo))
}

/// A failure whose cause is that the repository itself went away is reported as that,
/// since the raw error only names some file inside it. Whoever met the missing repository
/// first (this job writing a pack, or the mount daemon writing a pin on the job's behalf
/// and answering with a refusal) is a race, so every failure but a stop counts.
pub fn explain_missing_repo(e: Error, repo: &Handle) -> Error {
    match e {
        Error::Stopped(_) | Error::RepoGone { .. } => e,
        e if !repo.is_present() => Error::RepoGone {
            repo: repo.location().into(),
            detail: e.chain().to_string(),
        },
        e => e,
    }
}

fn run_job(
    session: &dyn Session,
    repo: &Repo,
    opts: &BackupOptions,
    progress: &mut dyn ProgressSink,
) -> Result<Summary> {
    let start = Instant::now();
    if opts.converge {
        return Err(Error::Plan(format!(
            "converge backups need a format 2 repository, and {} is format 1; upgrade it first with snarf repo upgrade {0}",
            repo.path().display()
        )));
    }
    let desc = session.describe(&opts.snapshot)?;
    let names = chosen_volumes(&desc, opts)?;
    let source = Source::new(&desc, &names);

    let acks: Arc<Mutex<Vec<AckItem>>> = Arc::default();
    let sink_acks = acks.clone();
    let mut new = NewBackup::new(&opts.snapshot, source.to_json());
    new.lock_wait = opts.lock_wait;
    new.compression = opts.compression;
    new.command = format!(
        "snarf backup {} (pid {})",
        opts.snapshot,
        std::process::id()
    );
    // The snarfs sent per volume, once planned: a zero snarf that was not sent (a hole, or
    // unchanged zeros reused from the base) is not acknowledged, since the daemon holds
    // nothing of it worth freeing, and a sparse volume has millions of them.
    let sent_sets: Arc<OnceLock<Vec<Option<SnarfSet>>>> = Arc::default();
    let sink_sets = sent_sets.clone();
    new.on_durable = Some(Arc::new(move |d: Durable| {
        if d.chunk.is_zero() {
            let sent = sink_sets
                .get()
                .and_then(|sets| sets.get(d.slot.0)?.as_ref());
            if sent.is_some_and(|set| !set.contains(d.snarf)) {
                return;
            }
        }
        sink_acks.lock().push(AckItem {
            vol: d.slot.0 as u32,
            snarf: d.snarf,
            chunk: StoredChunk::V1(d.chunk),
        })
    }));
    let writer = repo.begin_backup(new)?;

    let bases = if opts.mode == Mode::Full {
        Vec::new()
    } else {
        find_bases(&Handle::V1(repo.clone()), &desc, &names)?
    };
    let plan = session.plan(
        &PlanRequest {
            snapshot: opts.snapshot.clone(),
            volumes: Some(names),
            mode: opts.mode,
            bases,
        },
        repo.path(),
    )?;
    let _ = sent_sets.set(plan.sets.clone());
    let result = transfer(session, repo, &writer, &plan, &acks, opts, start, progress);
    let (read, reused, bytes_read, zero_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            session.abort(&e.chain().to_string());
            drop(writer);
            return Err(e);
        }
    };
    session.committing();
    let id = match writer.commit() {
        Ok(id) => id,
        Err(e) => {
            session.abort(&e.chain().to_string());
            return Err(e.into());
        }
    };
    // The last pack was sealed by commit: acknowledge its snarfs too.
    let last: Vec<AckItem> = std::mem::take(&mut *acks.lock());
    if let Err(e) = session.ack(&last).and_then(|_| session.done(id.as_str())) {
        // The backup is committed; the daemon only misses the chance to free pre-images.
        log::warn!(
            "backup {id} is committed, but telling the mount daemon failed: {}",
            e.chain()
        );
    }
    let manifest = repo.backup(id.as_str())?;
    let stats = manifest.stats;
    Ok(summary(
        id, opts, &plan, &read, &reused, bytes_read, zero_bytes, &stats, start,
    ))
}

/// The summary of a committed job.
#[allow(clippy::too_many_arguments)]
fn summary(
    id: BackupId,
    opts: &BackupOptions,
    plan: &Plan,
    read: &[u64],
    reused: &[u64],
    bytes_read: u64,
    zero_bytes: u64,
    stats: &crate::repo::BackupStats,
    start: Instant,
) -> Summary {
    Summary {
        backup: id,
        snapshot: opts.snapshot.clone(),
        volumes: plan
            .volumes
            .iter()
            .enumerate()
            .map(|(n, v)| VolumeSummary {
                name: v.name.clone(),
                size: v.size,
                kind: v.kind.clone(),
                snarfs: v.snarfs,
                read: read[n],
                reused: reused[n],
            })
            .collect(),
        bytes_read,
        zero_bytes_read: zero_bytes,
        new_chunks: stats.new_chunks,
        new_raw_bytes: stats.new_raw_bytes,
        new_stored_bytes: stats.new_stored_bytes,
        sent: SentByTier::default(),
        seconds: start.elapsed().as_secs_f64(),
        converge: None,
    }
}

/// A job into a format 2 repository. The writer hashes each snarf and compresses frames of
/// consecutive new ones itself, so snarfs go to it straight from the session. A volume
/// with a base takes every snarf not sent from the base's tree (untouched leaves by
/// reference), a full one records them as zeros, so nothing is reused snarf by snarf.
/// Each snarf put is acknowledged once its chunk is durable (its pack sealed, or found in
/// the index), in batches like format 1's, so the mount frees its pre-image while the job
/// runs; the snarfs of the last pack are acknowledged after the commit sealed it.
fn run_v2(
    session: &dyn Session,
    handle: &Handle,
    repo: &v2::Repository,
    opts: &BackupOptions,
    progress: &mut dyn ProgressSink,
) -> Result<Summary> {
    let start = Instant::now();
    let desc = if opts.converge {
        session.begin_converge()?
    } else {
        session.describe(&opts.snapshot)?
    };
    let names = chosen_volumes(&desc, opts)?;
    let source = Source::new(&desc, &names);
    let mut new = v2::NewBackup::new(&opts.snapshot, source.to_json());
    new.report_durable = true;
    new.lock_wait = opts.lock_wait;
    new.compression = opts.compression;
    new.command = format!(
        "snarf backup {} (pid {})",
        opts.snapshot,
        std::process::id()
    );
    let mut writer = repo.begin_backup(new)?;
    let bases = if opts.mode == Mode::Full {
        Vec::new()
    } else {
        find_bases(handle, &desc, &names)?
    };
    let location = handle.location();
    let plan = session.plan(
        &PlanRequest {
            snapshot: desc.name.clone(),
            volumes: Some(names.clone()),
            mode: opts.mode,
            bases,
        },
        handle
            .local_path()
            .unwrap_or_else(|| std::path::Path::new(&location)),
    )?;
    let result = transfer_v2(session, repo, &writer, &plan, opts, start, progress);
    // A converge backup is a copy of the volumes at its final freeze: that is its source.
    let result = result.and_then(|counts| {
        if !opts.converge {
            return Ok((counts, None));
        }
        let end = session.converged()?;
        writer.set_source(Source::new(&end.desc, &names).to_json());
        Ok((counts, Some(end)))
    });
    let ((read, reused, bytes_read, zero_bytes), converged) = match result {
        Ok(r) => r,
        Err(e) => {
            session.abort(&e.chain().to_string());
            drop(writer);
            return Err(e);
        }
    };
    session.committing();
    let (id, last) = match writer.commit_reporting() {
        Ok(done) => done,
        Err(e) => {
            session.abort(&e.chain().to_string());
            return Err(e.into());
        }
    };
    // What the commit recorded: its last frames and pack are counted only there.
    let stats = match repo.backup(id.as_str()) {
        Ok(b) => b.stats,
        Err(e) => {
            log::warn!("reading back committed backup {id}: {}", e.chain());
            crate::repo::BackupStats::default()
        }
    };
    // The last pack was sealed by commit: acknowledge its snarfs too.
    let last = acks_v2(&last);
    if let Err(e) = session.ack(&last).and_then(|_| session.done(id.as_str())) {
        log::warn!(
            "backup {id} is committed, but telling the mount daemon failed: {}",
            e.chain()
        );
    }
    let mut done = summary(
        id, opts, &plan, &read, &reused, bytes_read, zero_bytes, &stats, start,
    );
    done.converge = converged;
    Ok(done)
}

/// Acknowledgements of durable format 2 snarfs (a slot is its volume's place in the plan).
fn acks_v2(durable: &[v2::Durable]) -> Vec<AckItem> {
    durable
        .iter()
        .map(|d| AckItem {
            vol: d.slot.0 as u32,
            snarf: d.snarf,
            chunk: StoredChunk::V2(d.chunk),
        })
        .collect()
}

/// The transfer of a format 2 job, on the calling thread.
fn transfer_v2(
    session: &dyn Session,
    repo: &v2::Repository,
    writer: &v2::Writer,
    plan: &Plan,
    opts: &BackupOptions,
    start: Instant,
    progress: &mut dyn ProgressSink,
) -> Result<Counts> {
    let mut slots = Vec::with_capacity(plan.volumes.len());
    for (n, v) in plan.volumes.iter().enumerate() {
        let base = match base_of(v, plan, n) {
            Some(id) => {
                let b = repo.backup(id)?;
                let name = base_name(&b.source, v);
                Some((b, name))
            }
            None => None,
        };
        let slot = writer.add_volume(
            &v.name,
            v.size,
            v.snarf_size,
            base.as_ref().map(|(b, name)| (b, name.as_str())),
        )?;
        slots.push(slot);
    }
    let mut prog = Progress {
        total_bytes: plan.volumes.iter().map(|v| v.to_send_bytes).sum(),
        total_snarfs: plan.volumes.iter().map(|v| v.snarfs).sum(),
        ..Progress::default()
    };
    let to_send: u64 = plan.volumes.iter().map(|v| v.to_send).sum();
    let zeros = vec![0u8; plan.volumes.iter().map(|v| v.snarf_size).max().unwrap_or(0) as usize];
    let mut read = vec![0u64; plan.volumes.len()];
    // A converge copy's snarfs sent so far, per volume (bits in proportion to the runs).
    let mut converged: Option<Vec<SnarfSet>> = opts.converge.then(|| {
        plan.volumes
            .iter()
            .map(|v| SnarfSet::new(v.snarfs))
            .collect()
    });
    let (mut bytes_read, mut zero_bytes, mut received) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut pending: Vec<AckItem> = Vec::new();
    let mut last_ack = Instant::now();
    // The next batches are asked for while this thread stores the last one, so the engine
    // side reads (and, with a mount, hashes) snarfs while the writer hashes and compresses:
    // the mount daemon and the job work at once instead of taking turns.
    let stop = AtomicBool::new(false);
    let (reader_result, put_result) = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Batch>(PREFETCH);
        let stop_r = &stop;
        let reader = std::thread::Builder::new()
            .name("snarf-backup-read".into())
            .spawn_scoped(scope, move || -> Result<()> {
                while !stop_r.load(Ordering::Acquire) {
                    crate::repo::fault::slow_batch();
                    match session.next_batch(opts.batch.max(1))? {
                        None => break,
                        Some(b) => {
                            if tx.send(b).is_err() {
                                break;
                            }
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::io("starting the backup reader thread", e));
        let reader = match reader {
            Ok(r) => r,
            Err(e) => return (Ok(()), Err(e)),
        };
        let put = (|| -> Result<()> {
            for batch in rx {
                for d in batch.snarfs() {
                    let slot = *slots.get(d.vol as usize).ok_or_else(|| {
                        Error::Protocol(format!(
                            "a snarf of volume {} of the plan, which has fewer",
                            d.vol
                        ))
                    })?;
                    let bytes: &[u8] = match d.data {
                        Some(b) => b,
                        None => zeros.get(..d.len as usize).ok_or_else(|| {
                            Error::Protocol(format!(
                                "a zero snarf of {} bytes, longer than any snarf of the plan",
                                d.len
                            ))
                        })?,
                    };
                    writer.put(slot, d.snarf, bytes)?;
                    received += 1;
                    bytes_read += u64::from(d.len);
                    if d.data.is_none() {
                        zero_bytes += u64::from(d.len);
                    }
                    // A converge copy sends a snarf again each pass it was written in:
                    // the summary counts it once.
                    let again = converged.as_mut().is_some_and(|sets| {
                        let set = &mut sets[d.vol as usize];
                        let seen = set.contains(d.snarf);
                        set.insert(d.snarf);
                        seen
                    });
                    if !again {
                        read[d.vol as usize] += 1;
                    }
                    prog.done_snarfs += 1;
                    prog.done_bytes += u64::from(d.len);
                    // A converge copy's later passes add to what it sends.
                    prog.total_bytes = prog.total_bytes.max(prog.done_bytes);
                }
                // Acknowledge what became durable: in batches, or whatever is pending
                // after a pause.
                pending.extend(acks_v2(&writer.take_durable()?));
                if pending.len() >= opts.ack_batch
                    || (!pending.is_empty() && last_ack.elapsed() >= Duration::from_millis(200))
                {
                    session.ack(&std::mem::take(&mut pending))?;
                    last_ack = Instant::now();
                }
                if last_progress.elapsed() >= Duration::from_millis(100) {
                    last_progress = Instant::now();
                    prog.elapsed = start.elapsed().as_secs_f64();
                    progress.report(&prog);
                }
            }
            Ok(())
        })();
        // On a failure here the reader stops at its next batch (its send fails once the
        // receiver is gone, and it looks at `stop` before asking again).
        stop.store(true, Ordering::Release);
        // A panic of the reader is the job's, as if this thread had asked for the batch.
        let reader_result = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (reader_result, put)
    });
    // A failure to store is reported first; the reader's failure (the engine side's
    // answer) ended the batches, so it comes before the count of snarfs below.
    put_result?;
    reader_result?;
    // A converge copy sends the snarfs written meanwhile again, each pass.
    if received != to_send && !(opts.converge && received > to_send) {
        return Err(Error::Protocol(format!(
            "the plan promised {to_send} snarfs but {received} came"
        )));
    }
    pending.extend(acks_v2(&writer.take_durable()?));
    session.ack(&pending)?;
    // What was not sent comes from the base's tree, or is a hole.
    let reused: Vec<u64> = plan
        .volumes
        .iter()
        .zip(&read)
        .map(|(v, r)| v.snarfs.saturating_sub(*r))
        .collect();
    prog.done_snarfs += reused.iter().sum::<u64>();
    prog.elapsed = start.elapsed().as_secs_f64();
    progress.report(&prog);
    Ok((read, reused, bytes_read, zero_bytes))
}

fn chosen_volumes(desc: &SnapshotDesc, opts: &BackupOptions) -> Result<Vec<String>> {
    let what = if opts.converge {
        "the store".to_string()
    } else {
        format!("snapshot \"{}\"", desc.name)
    };
    let names: Vec<String> = match &opts.volumes {
        Some(list) => {
            for n in list {
                if !desc.volumes.iter().any(|v| &v.name == n) {
                    return Err(Error::Plan(format!(
                        "{what} has no volume named \"{n}\"; it has: {}",
                        desc.volumes
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            list.clone()
        }
        None => desc.volumes.iter().map(|v| v.name.clone()).collect(),
    };
    if names.is_empty() {
        return Err(Error::Plan(format!(
            "{what} holds no volumes; there is nothing to back up"
        )));
    }
    Ok(names)
}

type Counts = (Vec<u64>, Vec<u64>, u64, u64);

/// The transfer: reader, workers and writer, until every snarf is put or reused.
#[allow(clippy::too_many_arguments)]
fn transfer(
    session: &dyn Session,
    repo: &Repo,
    writer: &crate::repo::BackupWriter,
    plan: &Plan,
    acks: &Mutex<Vec<AckItem>>,
    opts: &BackupOptions,
    start: Instant,
    progress: &mut dyn ProgressSink,
) -> Result<Counts> {
    let mut slots = Vec::new();
    let mut reuse = Vec::new();
    for (n, v) in plan.volumes.iter().enumerate() {
        let slot = writer.add_volume(&v.name, v.size, v.snarf_size)?;
        debug_assert_eq!(slot.0, n);
        slots.push(slot);
        if let Some(set) = &plan.sets[n] {
            let reader = match base_of(v, plan, n) {
                Some(base) => {
                    let name = base_name(&repo.backup(base)?.source, v);
                    Some(repo.volume_reader(base, &name)?)
                }
                None => None,
            };
            reuse.push(Reuse {
                slot,
                vol: n,
                reader,
                sent: set.clone(),
                next: 0,
                count: v.snarfs,
                size: v.size,
                snarf_size: v.snarf_size,
            });
        }
    }
    let total = Progress {
        total_bytes: plan.volumes.iter().map(|v| v.to_send_bytes).sum(),
        total_snarfs: plan.volumes.iter().map(|v| v.snarfs).sum(),
        ..Progress::default()
    };
    let to_send: u64 = plan.volumes.iter().map(|v| v.to_send).sum();
    let workers = opts.workers.max(1);
    let preparer = writer.preparer();
    let failure = Failure::default();
    let bytes_read = AtomicU64::new(0);
    let zero_bytes = AtomicU64::new(0);
    let zeros = vec![0u8; plan.volumes.iter().map(|v| v.snarf_size).max().unwrap_or(0) as usize];

    let mut read = vec![0u64; plan.volumes.len()];
    let mut reused = vec![0u64; plan.volumes.len()];
    std::thread::scope(|scope| -> Result<()> {
        let (work_tx, work_rx) = sync_channel::<SnarfData>(workers * opts.batch.max(4));
        let (done_tx, done_rx) = sync_channel::<Work>(workers * 8);
        let work_rx = Arc::new(Mutex::new(work_rx));

        // Reader: asks the engine side for snarfs in its order.
        let failure_r = &failure;
        let bytes_read_r = &bytes_read;
        let zero_r = &zero_bytes;
        let reader = std::thread::Builder::new()
            .name("snarf-backup-read".into())
            .spawn_scoped(scope, move || {
                let mut received = 0u64;
                while !failure_r.stopped() {
                    crate::repo::fault::slow_batch();
                    match session.next(opts.batch.max(1)) {
                        Ok(None) => break,
                        Ok(Some(batch)) => {
                            for d in batch {
                                bytes_read_r.fetch_add(d.len as u64, Ordering::Relaxed);
                                if d.data.is_none() {
                                    zero_r.fetch_add(d.len as u64, Ordering::Relaxed);
                                }
                                received += 1;
                                if work_tx.send(d).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => return failure_r.set(e),
                    }
                }
                if !failure_r.stopped() && received != to_send {
                    failure_r.set(Error::Protocol(format!(
                        "the plan promised {to_send} snarfs but {received} came"
                    )));
                }
            })
            .map_err(|e| Error::io("starting the backup reader thread", e))?;

        // Workers: hash, and compress what the repository does not have.
        for n in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let p = preparer.clone();
            let failure_w = &failure;
            let zeros = &zeros;
            std::thread::Builder::new()
                .name(format!("snarf-backup-hash-{n}"))
                .spawn_scoped(scope, move || loop {
                    let next = rx.lock().recv();
                    let Ok(d) = next else { return };
                    let bytes: &[u8] = match &d.data {
                        Some(b) => b,
                        None => &zeros[..d.len as usize],
                    };
                    match p.prepare(bytes) {
                        Ok(chunk) => {
                            let w = Work {
                                vol: d.vol,
                                snarf: d.snarf,
                                len: d.len,
                                chunk,
                            };
                            if tx.send(w).is_err() {
                                return;
                            }
                        }
                        Err(e) => return failure_w.set(e.into()),
                    }
                })
                .map_err(|e| Error::io("starting a backup worker thread", e))?;
        }
        drop(done_tx);
        drop(work_rx);

        let r = write_loop(
            session,
            writer,
            &slots,
            &mut reuse,
            done_rx,
            acks,
            &failure,
            opts,
            total,
            start,
            &mut read,
            &mut reused,
            progress,
        );
        if r.is_err() || failure.stopped() {
            // Unblock the reader and workers: they stop at their next send.
            failure.stop.store(true, Ordering::Release);
        }
        if let Err(e) = r {
            failure.set(e);
        }
        let _ = reader.join();
        Ok(())
    })?;
    if let Some(e) = failure.first.lock().take() {
        return Err(e);
    }
    Ok((
        read,
        reused,
        bytes_read.into_inner(),
        zero_bytes.into_inner(),
    ))
}

fn base_of<'a>(v: &'a PlannedVolume, plan: &Plan, n: usize) -> Option<&'a str> {
    plan.sets.get(n)?.as_ref()?;
    v.base()
}

/// The volume's name in its base backup, from the backup's `source` (it may have been
/// renamed since).
fn base_name(source: &serde_json::Value, v: &PlannedVolume) -> String {
    Source::parse(source)
        .and_then(|s| s.volumes.into_iter().find(|sv| sv.id == v.id))
        .map(|sv| sv.name)
        .unwrap_or_else(|| v.name.clone())
}

/// The writer's side of the transfer, on the calling thread.
#[allow(clippy::too_many_arguments)]
fn write_loop(
    session: &dyn Session,
    writer: &crate::repo::BackupWriter,
    slots: &[VolumeSlot],
    reuse: &mut [Reuse],
    done_rx: Receiver<Work>,
    acks: &Mutex<Vec<AckItem>>,
    failure: &Failure,
    opts: &BackupOptions,
    mut prog: Progress,
    start: Instant,
    read: &mut [u64],
    reused: &mut [u64],
    progress: &mut dyn ProgressSink,
) -> Result<()> {
    let mut last_ack = Instant::now();
    let mut last_progress = Instant::now();
    let mut reuse_i = 0usize;
    let mut all_in = false;
    loop {
        if failure.stopped() {
            return Ok(());
        }
        let reuse_left = reuse_i < reuse.len();
        if all_in && !reuse_left {
            break;
        }
        let work = if all_in {
            None
        } else if reuse_left {
            match done_rx.try_recv() {
                Ok(w) => Some(w),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    all_in = true;
                    None
                }
            }
        } else {
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(w) => Some(w),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    all_in = true;
                    None
                }
            }
        };
        if let Some(w) = work {
            let slot = *slots.get(w.vol as usize).ok_or_else(|| {
                Error::Protocol(format!(
                    "a snarf of volume {} of the plan, which has fewer",
                    w.vol
                ))
            })?;
            writer.put(slot, w.snarf, w.chunk)?;
            read[w.vol as usize] += 1;
            prog.done_snarfs += 1;
            prog.done_bytes += w.len as u64;
        } else if reuse_left {
            // Nothing prepared right now: reuse a few unchanged snarfs meanwhile.
            // One read of the base table and one write per run of unchanged snarfs.
            let r = &mut reuse[reuse_i];
            let first = r.next;
            let end = (first + REUSE_WINDOW).min(r.count);
            let refs = match &r.reader {
                Some(reader) => {
                    // Shorter than the window where the base volume was smaller: those
                    // snarfs are new and must all have been sent.
                    let refs = reader.chunk_refs(first, end - first)?;
                    for i in first + refs.len() as u64..end {
                        if !r.sent.contains(i) {
                            reader.chunk_ref(i)?;
                        }
                    }
                    refs
                }
                None => (first..end)
                    .map(|i| ChunkRef::zero(snarf_len(r.size, r.snarf_size as u64, i) as u32))
                    .collect(),
            };
            r.next = end;
            let mut run_start = 0usize;
            for k in 0..=refs.len() {
                let sent = k < refs.len() && r.sent.contains(first + k as u64);
                if k == refs.len() || sent {
                    if run_start < k {
                        writer.reuse_run(r.slot, first + run_start as u64, &refs[run_start..k])?;
                        let n = (k - run_start) as u64;
                        reused[r.vol] += n;
                        prog.done_snarfs += n;
                    }
                    run_start = k + 1;
                }
            }
            if r.next >= r.count {
                reuse_i += 1;
            }
        }
        // Acknowledge what became durable: in batches, or whatever is pending after a pause.
        let due = {
            let a = acks.lock();
            a.len() >= opts.ack_batch
                || (!a.is_empty() && last_ack.elapsed() >= Duration::from_millis(200))
        };
        if due {
            let batch: Vec<AckItem> = std::mem::take(&mut *acks.lock());
            session.ack(&batch)?;
            last_ack = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            last_progress = Instant::now();
            prog.elapsed = start.elapsed().as_secs_f64();
            progress.report(&prog);
        }
    }
    let batch: Vec<AckItem> = std::mem::take(&mut *acks.lock());
    session.ack(&batch)?;
    prog.elapsed = start.elapsed().as_secs_f64();
    progress.report(&prog);
    Ok(())
}
