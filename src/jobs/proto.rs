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
//! ack {count}                       ->  (nothing)                   payload: count 76-byte records
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
//! chunk reference ([`ChunkRef::encode`]). `done: true` with no items means every planned
//! snarf was sent. If either side sees the stream end, the job is over: the daemon drops the
//! job's feed (the snapshot stays readable) and the job abandons its backup.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::plan::{PlanRequest, PlannedVolume, SnapshotDesc};
use crate::repo::chunk::REF_LEN;
use crate::repo::ChunkRef;

/// Version of this protocol.
pub const VERSION: u32 = 1;
/// Magic at the start of every frame.
pub const MAGIC: &[u8; 4] = b"SNJ1";
/// Largest header accepted.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Bytes of one acknowledgement record.
pub const ACK_LEN: usize = 4 + 8 + REF_LEN;

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
}

/// One stored snarf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckItem {
    /// Volume position in the plan.
    pub vol: u32,
    /// Snarf index.
    pub snarf: u64,
    /// Where the backup stored it.
    pub chunk: ChunkRef,
}

/// Encodes acknowledgement records for an `ack` payload.
pub fn encode_acks(items: &[AckItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * ACK_LEN);
    for a in items {
        out.extend_from_slice(&a.vol.to_le_bytes());
        out.extend_from_slice(&a.snarf.to_le_bytes());
        out.extend_from_slice(&a.chunk.encode());
    }
    out
}

/// Decodes an `ack` payload of `count` records.
pub fn decode_acks(count: u32, payload: &[u8]) -> std::io::Result<Vec<AckItem>> {
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
            let chunk = ChunkRef::decode(&rec)
                .ok_or_else(|| bad("an ack carries an empty chunk reference".into()))?;
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

/// Reads one frame. `Ok(None)` when the stream ends cleanly between frames.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> std::io::Result<Option<(Msg, Vec<u8>)>> {
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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
    if hlen > MAX_HEADER || plen > MAX_PAYLOAD {
        return Err(bad(format!(
            "frame too large: header {hlen} bytes, payload {plen} bytes"
        )));
    }
    let mut header = vec![0u8; hlen];
    r.read_exact(&mut header)?;
    let msg: Msg = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let mut payload = vec![0u8; plen];
    r.read_exact(&mut payload)?;
    Ok(Some((msg, payload)))
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
                },
                BatchItem {
                    vol: 1,
                    snarf: 2,
                    len: 4096,
                    zero: true,
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
    fn acks_round_trip() {
        let items = vec![
            AckItem {
                vol: 3,
                snarf: 1 << 40,
                chunk: ChunkRef {
                    id: ChunkId([7; 32]),
                    pack: PackId([9; 16]),
                    offset: 12345,
                    stored_len: 100,
                    raw_len: 65536,
                },
            },
            AckItem {
                vol: 0,
                snarf: 0,
                chunk: ChunkRef::zero(4096),
            },
        ];
        let p = encode_acks(&items);
        assert_eq!(decode_acks(2, &p).unwrap(), items);
        assert!(decode_acks(3, &p).is_err());
    }
}
