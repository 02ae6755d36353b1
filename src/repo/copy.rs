//! `snarf copy SRC DST`: copies committed backups with their chunks from one repository
//! into another (any backend, encrypted or not; a format 1 source is read, the destination
//! is format 2). Each backup is written into DST as a new backup that keeps its identity
//! (id, creation time, snapshot name, host, caller data and counts), through DST's own
//! writer under DST's lock, so its trees and index pages are rebuilt for DST and its
//! commit is DST's ordinary create-only commit point.
//!
//! What is sent: when both repositories name chunks alike (both plain, or encrypted with
//! the same id key), a chunk DST has is recognised by its id from SRC's tree and never
//! read; otherwise each chunk is read, hashed under DST's key and only stored if DST lacks
//! it. DST's writer re-encrypts (or not) what it stores.
//!
//! Why it resumes: a backup whose id DST has already is skipped (copying twice copies
//! nothing), and a copy killed part way leaves only whole packs, which the next writer
//! adopts into DST's index (see `v2::gc`), so the next run finds their chunks there and
//! sends only the rest: at most the unsealed pack's worth is redone.

use std::time::Instant;

use super::error::{Error, Result};
use super::handle::{BackupInfo, Handle, VolumeReader};
use super::ids::BackupId;
use super::v2;

/// Bytes whose chunk id tells whether two repositories name chunks alike: equal ids of
/// the same bytes mean the same id function (keyed blake3 under one key, or plain blake3).
const ID_PROBE: &[u8] = b"snarf copy: do these repositories name chunks alike?";

/// Which backups to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// These backups (ids as `snarf backups` lists them); all if empty and no `latest`.
    pub backups: Vec<String>,
    /// Only the newest N of SRC's backups.
    pub latest: Option<usize>,
    /// Wait this long for DST's lock; fail at once if `None`.
    pub lock_wait: Option<std::time::Duration>,
    /// The command recorded in DST's lock, e.g. "snarf copy /srv/backups".
    pub command: String,
}

/// Where a copy is, for a progress display.
#[derive(Debug, Clone)]
pub struct CopyProgress {
    /// The backup being copied (empty when there is none to copy).
    pub backup: String,
    /// Bytes of volumes (holes included) gone through, over all backups to copy.
    pub done_bytes: u64,
    /// Bytes of volumes of all backups to copy.
    pub total_bytes: u64,
    /// Snarfs gone through so far.
    pub done_snarfs: u64,
    /// Snarfs of all backups to copy.
    pub total_snarfs: u64,
    /// Seconds since the copy started.
    pub elapsed: f64,
}

/// What copying one backup sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    /// The backup.
    pub id: BackupId,
    /// Data chunks stored in DST (DST lacked them).
    pub sent_chunks: u64,
    /// Their uncompressed bytes.
    pub sent_raw_bytes: u64,
    /// Bytes of pack data stored in DST (those chunks, and the tree pages built for DST).
    pub sent_stored_bytes: u64,
    /// Snarfs DST had already (by id, or by hashing their data under DST's key).
    pub present_snarfs: u64,
    /// Snarfs read from SRC (the rest were found by id without reading or are zeros).
    pub read_snarfs: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// The backups copied, oldest first.
    pub copied: Vec<Copied>,
    /// The backups selected that DST had already.
    pub present: Vec<BackupId>,
    /// Whether chunks were matched by id (both repositories name chunks alike).
    pub by_id: bool,
}

impl CopyReport {
    /// Chunks sent in all.
    pub fn sent_chunks(&self) -> u64 {
        self.copied.iter().map(|c| c.sent_chunks).sum()
    }

    /// Pack bytes sent in all.
    pub fn sent_stored_bytes(&self) -> u64 {
        self.copied.iter().map(|c| c.sent_stored_bytes).sum()
    }
}

/// The backups of `src` that `opts` selects, oldest first.
fn select(src: &Handle, opts: &CopyOptions) -> Result<Vec<BackupInfo>> {
    let all = src.list_backups()?;
    let mut chosen = if opts.backups.is_empty() {
        all
    } else {
        let mut out = Vec::new();
        for want in &opts.backups {
            match all.iter().find(|b| b.id.as_str() == want.as_str()) {
                Some(b) => {
                    if !out.iter().any(|o: &BackupInfo| o.id == b.id) {
                        out.push(b.clone())
                    }
                }
                None => {
                    return Err(Error::NoSuchBackup {
                        repo: src.location().into(),
                        id: want.clone(),
                    })
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    };
    if let Some(n) = opts.latest {
        let skip = chosen.len().saturating_sub(n);
        chosen.drain(..skip);
    }
    Ok(chosen)
}

/// Copies the backups `opts` selects from `src` into `dst` (see the module documentation).
pub fn copy(
    src: &Handle,
    dst: &Handle,
    opts: &CopyOptions,
    progress: &mut dyn FnMut(&CopyProgress),
) -> Result<CopyReport> {
    let Handle::V2(to) = dst else {
        return Err(Error::BadArgument(format!(
            "{} is a format 1 repository, and copy writes only format 2: upgrade it with `snarf repo upgrade {}`, or copy into a new repository made with `snarf repo init`",
            dst.location(),
            dst.location()
        )));
    };
    let chosen = select(src, opts)?;
    let mut report = CopyReport {
        by_id: match src {
            Handle::V2(from) => from.seal().blob_id(ID_PROBE) == to.seal().blob_id(ID_PROBE),
            Handle::V1(_) => false,
        },
        ..CopyReport::default()
    };
    let have = to.backup_ids()?;
    let mut todo = Vec::new();
    for b in chosen {
        if have.contains(&b.id) {
            let there = to.backup(b.id.as_str())?;
            if there.created != b.created || there.snapshot != b.snapshot {
                return Err(Error::BadArgument(format!(
                    "backup {} of {} (snapshot \"{}\", made {}) is not the backup {} of {} has under that id (snapshot \"{}\", made {}): the two repositories were not filled from one source; copy the other backups by naming each with --backup ID",
                    b.id,
                    src.location(),
                    b.snapshot,
                    b.created_utc,
                    b.id,
                    to.location(),
                    there.snapshot,
                    there.created_utc
                )));
            }
            report.present.push(b.id);
        } else {
            todo.push(b);
        }
    }
    let mut at = CopyProgress {
        backup: todo.first().map(|b| b.id.to_string()).unwrap_or_default(),
        done_bytes: 0,
        total_bytes: todo.iter().map(BackupInfo::total_size).sum(),
        done_snarfs: 0,
        total_snarfs: todo
            .iter()
            .flat_map(|b| &b.volumes)
            .map(|v| v.size.div_ceil(u64::from(v.snarf_size.max(1))))
            .sum(),
        elapsed: 0.0,
    };
    let start = Instant::now();
    for b in &todo {
        at.backup = b.id.to_string();
        let c = copy_one(
            src,
            to,
            b,
            opts,
            report.by_id,
            &mut |done_bytes, done_snarfs| {
                let mut p = at.clone();
                p.done_bytes += done_bytes;
                p.done_snarfs += done_snarfs;
                p.elapsed = start.elapsed().as_secs_f64();
                progress(&p);
            },
        )?;
        at.done_bytes += b.total_size();
        at.done_snarfs += b
            .volumes
            .iter()
            .map(|v| v.size.div_ceil(u64::from(v.snarf_size.max(1))))
            .sum::<u64>();
        report.copied.push(c);
    }
    at.elapsed = start.elapsed().as_secs_f64();
    progress(&at);
    Ok(report)
}

/// Copies backup `b` into `to`; `step` hears the bytes and snarfs of `b` gone through.
fn copy_one(
    src: &Handle,
    to: &v2::Repository,
    b: &BackupInfo,
    opts: &CopyOptions,
    by_id: bool,
    step: &mut dyn FnMut(u64, u64),
) -> Result<Copied> {
    let new = v2::NewBackup {
        snapshot: b.snapshot.clone(),
        source: b.source.clone(),
        host: Some(b.host.clone()),
        lock_wait: opts.lock_wait,
        command: opts.command.clone(),
        compression: None,
        kept: Some(v2::Kept {
            id: b.id.clone(),
            created: b.created,
            stats: b.stats.clone(),
        }),
        report_durable: false,
    };
    let w = to.begin_backup(new)?;
    let mut read_snarfs = 0u64;
    let mut before_bytes = 0u64;
    let mut before_snarfs = 0u64;
    for v in &b.volumes {
        let slot = w.add_volume(&v.name, v.size, v.snarf_size, None)?;
        let reader = src.volume_reader(b.id.as_str(), &v.name)?;
        let ss = u64::from(v.snarf_size);
        let count = v.size.div_ceil(ss);
        let mut buf = vec![0u8; v.snarf_size as usize];
        let mut snarf = 0u64;
        while snarf < count {
            // Holes are never read: DST's tree has zeros wherever nothing is put.
            let Some(data_at) = reader.seek_data(snarf * ss)? else {
                break;
            };
            snarf = data_at / ss;
            if snarf >= count {
                break;
            }
            let len = (v.size - snarf * ss).min(ss) as usize;
            let known = match (&reader, by_id) {
                (VolumeReader::V2(r), true) => match r.entry(snarf)? {
                    v2::tree::Entry::Zero => true,
                    v2::tree::Entry::Chunk(c) => w.put_known(slot, snarf, c.id)?,
                },
                _ => false,
            };
            if !known {
                let data = &mut buf[..len];
                let mut got = 0;
                while got < len {
                    let n = reader.read_at(snarf * ss + got as u64, &mut data[got..])?;
                    if n == 0 {
                        return Err(Error::BadArgument(format!(
                            "volume \"{}\" of backup {} in {} ended at {} bytes, not at its size of {} bytes",
                            v.name,
                            b.id,
                            src.location(),
                            snarf * ss + got as u64,
                            v.size
                        )));
                    }
                    got += n;
                }
                w.put(slot, snarf, data)?;
                read_snarfs += 1;
            }
            snarf += 1;
            step(
                before_bytes + (snarf * ss).min(v.size),
                before_snarfs + snarf,
            );
        }
        before_bytes += v.size;
        before_snarfs += count;
        step(before_bytes, before_snarfs);
    }
    let (id, _, written) = w.commit_counted()?;
    Ok(Copied {
        id,
        sent_chunks: written.new_chunks,
        sent_raw_bytes: written.new_raw_bytes,
        sent_stored_bytes: written.new_stored_bytes,
        present_snarfs: written.dedup_snarfs,
        read_snarfs,
    })
}
