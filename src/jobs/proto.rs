//! The job protocol: framed messages between a backup job and the engine side (the mount
//! daemon), over any byte stream (`Read` + `Write`): the store's Unix socket today, an ssh
//! pipe later.
//!
//! # Frames
//!
//! ```text
//! 0..4    magic "SNJ1"
//! 4..8    header length H, u32 LE (at most 1 MiB)
//! 8..12   payload length P, u32 LE (at most 64 MiB)
//! 12..    H bytes of header: one JSON message (below)
//!         P bytes of payload: raw bytes the header describes
//! ```
//!
//! # Conversation
//!
//! The job speaks first and the daemon answers each request, except `ack`, which has no
//! answer (so acknowledgements flow while the job waits for data):
//!
//! ```text
//! job                                   daemon
//! hello {version, job, pid}         ->  welcome {version, pid, store_id, store, repo}
//! describe {snapshot}               ->  snapshot {desc}             (volumes, ids, sizes, epoch)
//! plan {request, repo}              ->  planned {volumes}           payload: the incremental volumes' snarf sets
//! next {max}                        ->  batch {items, done}         payload: the non-zero snarfs' bytes
//! ack {count, format}               ->  (nothing)                   payload: count 76-byte records
//! committing                        ->  (nothing)                   the job commits now
//! done {backup}                     ->  bye
//! abort {reason}                    ->  bye
//! any request the daemon refuses    ->  error {message}
//! ```
//!
//! A plan's payload holds, for each incremental volume in order, the set of snarfs that will
//! be sent, one bit per snarf, little-endian (the job reuses the others from the base).
//! A batch item is `{vol, snarf, len, zero}`; a non-zero item's `len` bytes follow in the
//! payload in item order. An ack record is `vol` u32 LE, `snarf` u64 LE, then the 64-byte
//! chunk reference of the repository's format, which the ack names (`format`, 1 when
//! absent): format 1's [`ChunkRef::encode`] (pack, offset, lengths) or format 2's
//! [`v2::chunk::ChunkRef::encode`] (blob id, pack, frame offset and sealed length, offset
//! in the frame, kind, length). `done: true` with no items means every planned
//! snarf was sent. If either side sees the stream end, the job is over: the daemon drops the
//! job's feed (the snapshot stays readable) and the job abandons its backup.
//!
//! # A peer is never trusted
//!
//! The daemon reads a job's frames with [`read_frame_from`] and [`FROM_JOB`] limits: a head
//! that announces more than the message it carries may have (a header over 1 MiB, any
//! payload on a message that has none, an ack payload that is not `count` records, more than
//! [`MAX_ACKS_PER_FRAME`] records) ends the connection before anything is allocated, and
//! what is read is allocated as it arrives, never as announced. What an ack claims is
//! checked by the daemon before it frees anything (see [`super::service`]).
//!
//! # Versions
//!
//! Version 2 added format 2 acknowledgements (the `format` of `ack`). The daemon accepts a
//! hello of version 1 or 2 and welcomes the job with the version it said: a version 1 job
//! sends format 1 acks only (it acknowledges nothing into a format 2 repository), which a
//! version 2 daemon reads as before. A job refuses a daemon of another version than its
//! own, with a message saying to use the same snarf for both.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::converge::ConvergeEnd;
use super::feed::Tier;
use super::plan::{PlanRequest, PlannedVolume, SnapshotDesc};
use crate::repo::chunk::REF_LEN;
use crate::repo::{v2, ChunkRef};

/// Version of this protocol.
pub const VERSION: u32 = 2;
/// Oldest version a daemon still serves.
pub const OLDEST_VERSION: u32 = 1;
/// Magic at the start of every frame.
pub const MAGIC: &[u8; 4] = b"SNJ1";
/// Largest header accepted.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Bytes of one acknowledgement record.
pub const ACK_LEN: usize = 4 + 8 + REF_LEN;
/// Most acknowledgement records in one frame (the job splits longer lists).
pub const MAX_ACKS_PER_FRAME: usize = 4096;
/// Longest a frame may take to arrive once its first byte has, before the peer is cut off.
pub const FRAME_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a reader accepts in a frame, per message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest header.
    pub header: usize,
    /// Largest payload the given message may carry; a frame announcing more is refused
    /// before its payload is read.
    pub payload: fn(&Msg) -> usize,
}

/// What the daemon accepts from a job: small headers, and a payload only on `ack`, of
/// exactly `count` records.
pub const FROM_JOB: Limits = Limits {
    header: MAX_HEADER,
    payload: job_payload,
};

/// What a job accepts from the daemon.
pub const FROM_DAEMON: Limits = Limits {
    header: MAX_HEADER,
    payload: any_payload,
};

fn any_payload(_: &Msg) -> usize {
    MAX_PAYLOAD
}

fn format_1() -> u32 {
    1
}

fn job_payload(msg: &Msg) -> usize {
    match msg {
        Msg::Ack { count, .. } if (*count as usize) <= MAX_ACKS_PER_FRAME => {
            *count as usize * ACK_LEN
        }
        _ => 0,
    }
}

/// What a read of the next frame found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole frame.
    Frame(Msg, Vec<u8>),
    /// The stream ended cleanly between frames.
    End,
    /// The stream's read timeout passed before the first byte of a frame: nothing is lost,
    /// the caller may look around and read again.
    Idle,
}

/// A message: a request from the job or an answer from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Msg {
    /// First request: who is asking.
    Hello {
        /// Protocol version the job speaks.
        version: u32,
        /// Job id or description, for logs and listings.
        job: String,
        /// The job's process id.
        pid: u32,
    },
    /// Answer to `hello`.
    Welcome {
        /// Protocol version the daemon speaks.
        version: u32,
        /// The daemon's process id (the job's idle sweep must never stop it).
        pid: u32,
        /// The store's id.
        store_id: String,
        /// The store's directory.
        store: PathBuf,
        /// The mount's default repository, if it has one (`snarf mount --repo`).
        #[serde(default)]
        repo: Option<PathBuf>,
    },
    /// Asks what a snapshot holds.
    Describe {
        /// The snapshot.
        snapshot: String,
    },
    /// Answer to `describe`.
    Snapshot {
        /// The snapshot.
        desc: SnapshotDesc,
    },
    /// Starts a converge backup; answered with `snapshot`, the planning instant's.
    Converge,
    /// Asks how a converge backup's copy ended, once every snarf was sent.
    Converged,
    /// Answer to `converged`.
    ConvergeEnd {
        /// The freeze and the passes.
        end: ConvergeEnd,
    },
    /// Asks for a plan; starts the job's feed.
    Plan {
        /// What to plan.
        request: PlanRequest,
        /// The repository the backup goes to (where acknowledged snarfs can be read back).
        repo: PathBuf,
    },
    /// Answer to `plan`.
    Planned {
        /// Per volume: full or incremental, and what will be sent.
        volumes: Vec<PlannedVolume>,
    },
    /// Asks for up to `max` more snarfs.
    Next {
        /// Most snarfs wanted in the batch.
        max: u32,
    },
    /// Answer to `next`: snarfs, data in the payload.
    Batch {
        /// The snarfs, in payload order.
        items: Vec<BatchItem>,
        /// Every planned snarf has been sent.
        done: bool,
    },
    /// Stored snarfs; records in the payload. No answer.
    Ack {
        /// Number of records.
        count: u32,
        /// The repository format of the records' chunk references (version 1 jobs send
        /// none: format 1).
        #[serde(default = "format_1")]
        format: u32,
    },
    /// The job is committing its backup (for listings). No answer.
    Committing,
    /// The backup is committed.
    Done {
        /// Its id.
        backup: String,
    },
    /// The job gives up.
    Abort {
        /// Why.
        reason: String,
    },
    /// Answer to `done` and `abort`.
    Bye,
    /// A refused request.
    Error {
        /// Why, for the person running the job.
        message: String,
    },
}

/// One snarf of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Its length in bytes.
    pub len: u32,
    /// All zeros: no bytes in the payload.
    pub zero: bool,
    /// The tier of the feed's order it came from (a daemon that does not say: cold).
    #[serde(default)]
    pub tier: Tier,
}

/// Where a backup stored a snarf, in its repository's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredChunk {
    /// A format 1 chunk: pack, offset and lengths.
    V1(ChunkRef),
    /// A format 2 blob: id, pack, frame and place in the frame.
    V2(v2::chunk::ChunkRef),
}

impl StoredChunk {
    /// The repository format it belongs to.
    pub fn format(&self) -> u32 {
        match self {
            StoredChunk::V1(_) => 1,
            StoredChunk::V2(_) => 2,
        }
    }

    /// The snarf's length.
    pub fn raw_len(&self) -> u32 {
        match self {
            StoredChunk::V1(c) => c.raw_len,
            StoredChunk::V2(c) => c.raw_len,
        }
    }

    /// True for the all-zero marker (nothing stored).
    pub fn is_zero(&self) -> bool {
        match self {
            StoredChunk::V1(c) => c.is_zero(),
            StoredChunk::V2(c) => c.is_zero(),
        }
    }

    /// The blob's id.
    pub fn id(&self) -> crate::repo::ChunkId {
        match self {
            StoredChunk::V1(c) => c.id,
            StoredChunk::V2(c) => c.id,
        }
    }

    /// The pack holding it (all zero for the zero marker).
    pub fn pack(&self) -> crate::repo::PackId {
        match self {
            StoredChunk::V1(c) => c.pack,
            StoredChunk::V2(c) => c.pack,
        }
    }

    /// The 64-byte reference of its format.
    pub fn encode(&self) -> [u8; REF_LEN] {
        match self {
            StoredChunk::V1(c) => c.encode(),
            StoredChunk::V2(c) => c.encode(),
        }
    }

    /// Decodes a 64-byte reference of repository format `format`; `None` for a blank or
    /// impossible record, or a format this build does not know.
    pub fn decode(format: u32, rec: &[u8; REF_LEN]) -> Option<StoredChunk> {
        match format {
            1 => ChunkRef::decode(rec).map(StoredChunk::V1),
            2 => v2::chunk::ChunkRef::decode(rec).map(StoredChunk::V2),
            _ => None,
        }
    }
}

/// One stored snarf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckItem {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Where the backup stored it.
    pub chunk: StoredChunk,
}

/// Encodes acknowledgement records for an `ack` payload (all of one format, which the
/// caller names in the message).
pub fn encode_acks(items: &[AckItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * ACK_LEN);
    for a in items {
        out.extend_from_slice(&a.vol.to_le_bytes());
        out.extend_from_slice(&a.snarf.to_le_bytes());
        out.extend_from_slice(&a.chunk.encode());
    }
    out
}

/// Decodes an `ack` payload of `count` records of repository format `format`.
pub fn decode_acks(count: u32, format: u32, payload: &[u8]) -> std::io::Result<Vec<AckItem>> {
    if !(1..=2).contains(&format) {
        return Err(bad(format!(
            "an ack of repository format {format}; this snarf knows formats 1 and 2"
        )));
    }
    if count as usize > MAX_ACKS_PER_FRAME {
        return Err(bad(format!(
            "an ack of {count} records; one frame carries at most {MAX_ACKS_PER_FRAME}"
        )));
    }
    if payload.len() != count as usize * ACK_LEN {
        return Err(bad(format!(
            "an ack of {count} records carries {} bytes, not {}",
            payload.len(),
            count as usize * ACK_LEN
        )));
    }
    payload
        .chunks_exact(ACK_LEN)
        .map(|r| {
            let vol = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[4..12]);
            let mut rec = [0u8; REF_LEN];
            rec.copy_from_slice(&r[12..]);
            let chunk = StoredChunk::decode(format, &rec).ok_or_else(|| {
                bad(format!(
                    "an ack carries an empty or impossible format {format} chunk reference"
                ))
            })?;
            Ok(AckItem {
                vol,
                snarf: u64::from_le_bytes(s),
                chunk,
            })
        })
        .collect()
}

fn bad(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Writes one frame (header and payload) and flushes.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, msg: &Msg, payload: &[u8]) -> std::io::Result<()> {
    let header = serde_json::to_vec(msg).map_err(|e| bad(e.to_string()))?;
    if header.len() > MAX_HEADER || payload.len() > MAX_PAYLOAD {
        return Err(bad(format!(
            "frame too large: header {} bytes, payload {} bytes",
            header.len(),
            payload.len()
        )));
    }
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(MAGIC);
    head[4..8].copy_from_slice(&(header.len() as u32).to_le_bytes());
    head[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame from the daemon (the job's side). `Ok(None)` when the stream ends
/// cleanly between frames.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> std::io::Result<Option<(Msg, Vec<u8>)>> {
    match read_frame_from(r, &FROM_DAEMON)? {
        Incoming::Frame(m, p) => Ok(Some((m, p))),
        Incoming::End => Ok(None),
        // The job's socket has a read timeout only to notice a hung daemon.
        Incoming::Idle => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the mount daemon did not answer in time",
        )),
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads exactly `buf.len()` bytes of a frame that has begun, retrying reads that time out
/// until [`FRAME_DEADLINE`] after `started`.
fn read_within<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    started: std::time::Instant,
) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) && started.elapsed() < FRAME_DEADLINE => {}
            Err(e) if timed_out(&e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a frame did not arrive whole within {} s",
                        FRAME_DEADLINE.as_secs()
                    ),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `len` bytes of a frame that has begun into a vector that grows as bytes arrive, so
/// an announced length costs nothing until the peer really sends that much.
fn read_vec<R: Read + ?Sized>(
    r: &mut R,
    len: usize,
    started: std::time::Instant,
) -> std::io::Result<Vec<u8>> {
    const STEP: usize = 64 << 10;
    let mut out = Vec::with_capacity(len.min(STEP));
    while out.len() < len {
        let at = out.len();
        let n = (len - at).min(STEP);
        out.resize(at + n, 0);
        read_within(r, &mut out[at..], started)?;
    }
    Ok(out)
}

/// Reads one frame within `limits`; see [`Incoming`]. A head announcing more than the
/// limits allow, a header that is not a message, or a payload longer than that message may
/// carry is an `InvalidData` error, found before the payload is read.
pub fn read_frame_from<R: Read + ?Sized>(r: &mut R, limits: &Limits) -> std::io::Result<Incoming> {
    let mut head = [0u8; 12];
    let started;
    loop {
        match r.read(&mut head) {
            Ok(0) => return Ok(Incoming::End),
            Ok(n) => {
                started = std::time::Instant::now();
                read_within(r, &mut head[n..], started)?;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Ok(Incoming::Idle),
            Err(e) => return Err(e),
        }
    }
    if &head[..4] != MAGIC {
        return Err(bad(format!(
            "not a snarf job frame (starts with {:02x?})",
            &head[..4]
        )));
    }
    let hlen = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let plen = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if hlen > limits.header || plen > MAX_PAYLOAD {
        return Err(bad(format!(
            "frame too large: header {hlen} bytes, payload {plen} bytes"
        )));
    }
    let header = read_vec(r, hlen, started)?;
    let msg: Msg = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let allowed = (limits.payload)(&msg);
    if plen > allowed {
        return Err(bad(format!(
            "a {} frame announces {plen} payload bytes; it may carry at most {allowed}",
            msg.name()
        )));
    }
    let payload = read_vec(r, plen, started)?;
    Ok(Incoming::Frame(msg, payload))
}

impl Msg {
    /// The message's name on the wire (`hello`, `ack`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Describe { .. } => "describe",
            Msg::Snapshot { .. } => "snapshot",
            Msg::Converge => "converge",
            Msg::Converged => "converged",
            Msg::ConvergeEnd { .. } => "converge_end",
            Msg::Plan { .. } => "plan",
            Msg::Planned { .. } => "planned",
            Msg::Next { .. } => "next",
            Msg::Batch { .. } => "batch",
            Msg::Ack { .. } => "ack",
            Msg::Committing => "committing",
            Msg::Done { .. } => "done",
            Msg::Abort { .. } => "abort",
            Msg::Bye => "bye",
            Msg::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{ChunkId, PackId};

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let mut buf = Vec::new();
        let m = Msg::Batch {
            items: vec![
                BatchItem {
                    vol: 0,
                    snarf: 7,
                    len: 3,
                    zero: false,
                    tier: Tier::Cached,
                },
                BatchItem {
                    vol: 1,
                    snarf: 2,
                    len: 4096,
                    zero: true,
                    tier: Tier::Cold,
                },
            ],
            done: false,
        };
        write_frame(&mut buf, &m, b"abc").unwrap();
        let first_len = buf.len();
        write_frame(&mut buf, &Msg::Bye, &[]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some((m, b"abc".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), Some((Msg::Bye, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // Cut anywhere inside a frame: an error, never a message.
        for cut in 1..first_len {
            let mut r = &buf[..cut];
            assert!(read_frame(&mut r).is_err(), "cut at {cut}");
        }
        let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn a_batch_item_without_a_tier_is_cold() {
        // What a daemon from before the cached tier sends.
        let it: BatchItem =
            serde_json::from_str(r#"{"vol":0,"snarf":3,"len":5,"zero":false}"#).unwrap();
        assert_eq!(it.tier, Tier::Cold);
        let it: BatchItem =
            serde_json::from_str(r#"{"vol":0,"snarf":3,"len":5,"zero":false,"tier":"cached"}"#)
                .unwrap();
        assert_eq!(it.tier, Tier::Cached);
    }

    /// A head for a frame of `header` bytes announcing `payload` bytes.
    fn head(header: &[u8], payload: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(&payload.to_le_bytes());
        b.extend_from_slice(header);
        b
    }

    #[test]
    fn a_jobs_frames_may_only_announce_what_their_message_carries() {
        let read = |bytes: &[u8]| read_frame_from(&mut &bytes[..], &FROM_JOB);
        // Any payload on a message that has none, even a small one, before it is read.
        let e = read(&head(br#"{"msg":"next","max":1}"#, 1)).unwrap_err();
        assert!(e.to_string().contains("at most 0"), "{e}");
        // 64 MiB announced by a hello: refused without reading (the stream holds none).
        let e = read(&head(
            br#"{"msg":"hello","version":1,"job":"x","pid":1}"#,
            64 << 20,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("at most 0"), "{e}");
        // An ack announcing more than its records, or too many records.
        let e = read(&head(br#"{"msg":"ack","count":1}"#, ACK_LEN as u32 + 1)).unwrap_err();
        assert!(e.to_string().contains("at most 76"), "{e}");
        let e = read(&head(br#"{"msg":"ack","count":4294967295}"#, 64 << 20)).unwrap_err();
        assert!(e.to_string().contains("at most 0"), "{e}");
        // Over the absolute limits.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        assert!(read(&huge).unwrap_err().to_string().contains("too large"));
        // A header that is not JSON, or is cut short.
        assert!(read(&head(b"\xff\xfe", 0)).is_err());
        let mut cut = head(br#"{"msg":"committing"}"#, 0);
        cut.truncate(cut.len() - 3);
        assert_eq!(
            read(&cut).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        // A good ack passes; an empty stream is the end.
        let acks = encode_acks(&[AckItem {
            vol: 0,
            snarf: 1,
            chunk: StoredChunk::V1(ChunkRef::zero(4096)),
        }]);
        // A version 1 job's ack names no format: format 1.
        let mut ok = head(br#"{"msg":"ack","count":1}"#, acks.len() as u32);
        ok.extend_from_slice(&acks);
        assert!(matches!(
            read(&ok).unwrap(),
            Incoming::Frame(Msg::Ack { count: 1, format: 1 }, p) if p == acks
        ));
        assert_eq!(read(&[]).unwrap(), Incoming::End);
        assert!(decode_acks(MAX_ACKS_PER_FRAME as u32 + 1, 1, &[]).is_err());
    }

    #[test]
    fn acks_round_trip() {
        let items = vec![
            AckItem {
                vol: 3,
                snarf: 1 << 40,
                chunk: StoredChunk::V1(ChunkRef {
                    id: ChunkId([7; 32]),
                    pack: PackId([9; 16]),
                    offset: 12345,
                    stored_len: 100,
                    raw_len: 65536,
                }),
            },
            AckItem {
                vol: 0,
                snarf: 0,
                chunk: StoredChunk::V1(ChunkRef::zero(4096)),
            },
        ];
        let p = encode_acks(&items);
        assert_eq!(decode_acks(2, 1, &p).unwrap(), items);
        assert!(decode_acks(3, 1, &p).is_err());
    }

    #[test]
    fn format_2_acks_round_trip_and_a_format_is_never_guessed() {
        let blob = v2::chunk::ChunkRef {
            id: ChunkId([7; 32]),
            kind: v2::chunk::BlobKind::Data,
            pack: PackId([9; 16]),
            offset: 4096,
            stored_len: 30_000,
            within: 3 * 65536,
            raw_len: 65536,
        };
        let items = vec![
            AckItem {
                vol: 1,
                snarf: 99,
                chunk: StoredChunk::V2(blob),
            },
            AckItem {
                vol: 0,
                snarf: 5,
                chunk: StoredChunk::V2(v2::chunk::ChunkRef::zero(65536)),
            },
        ];
        let p = encode_acks(&items);
        assert_eq!(decode_acks(2, 2, &p).unwrap(), items);
        // The same bytes read as format 1 are other references (or none), never these.
        assert_ne!(decode_acks(2, 1, &p).ok(), Some(items));
        let e = decode_acks(2, 3, &p).unwrap_err();
        assert!(e.to_string().contains("format 3"), "{e}");
        // The message carries its format, and one without it is format 1.
        let m = Msg::Ack {
            count: 2,
            format: 2,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &m, &p).unwrap();
        assert_eq!(
            read_frame_from(&mut &buf[..], &FROM_JOB).unwrap(),
            Incoming::Frame(m, p)
        );
    }
}
