//! The protocol `snarf serve` speaks on stdin/stdout with the [`ssh`](super::ssh) backend: the
//! operations of [`Backend`](super::Backend), framed, versioned and pipelined.
//!
//! Every frame is a 4-byte big-endian length, then that many bytes of body; a body longer
//! than [`MAX_FRAME`] is refused and the connection dropped, so neither side can be made to
//! allocate without end. A body is a tag byte, a 64-bit request id, then the tag's fields
//! (integers big-endian, strings and byte strings as a 4-byte length and the bytes; a key as
//! its name, `packs/ab/ab01…`, which the receiver parses back with `Key::parse`, so no name
//! from the wire becomes a path unchecked).
//!
//! ```text
//! server → client, once, first:  HELLO   id 0, magic "SNARFSRV", version u16, max frame u32,
//!                                        capabilities (count u32, strings)
//! client → server, once, second: OPEN    id, path, create u8   (answered like any request)
//! client → server, then:         READ    id, key, cap u64
//!                                RANGE   id, key, offset u64, len u64
//!                                SIZE    id, key
//!                                PUT     id, key, mode u8 (0 upload, 1 replace, 2 create-only)
//!                                DATA    id (of a PUT), bytes        (no answer of its own)
//!                                FINISH  id (of a PUT)               (the PUT's answer follows)
//!                                ABORT   id (of a PUT)               (the PUT's answer follows)
//!                                LIST    id, kind u8
//!                                DELETE  id, key
//!                                LOCK    id, holder, wait-ms u64 (u64::MAX: do not wait)
//!                                UNLOCK  id, lock id u64
//!                                SWEEP   id
//! server → client, answers:      PART    id, bytes       (zero or more: object bytes, listing)
//!                                OK      id, flag u8, n u64   (the one final answer)
//!                                ERR     id, code u8, message, detail, n u64  (or this one)
//!                                FATAL   id 0, message   (then the server closes the pipe)
//! ```
//!
//! Every request is answered exactly once by OK or ERR (a PUT by the answer to its FINISH or
//! ABORT, or by an ERR as soon as one of its DATA frames failed), else the connection is
//! dropped with FATAL. Requests are executed in the order they arrive, and the client never
//! waits for an answer before sending the next request: uploads stream DATA without acks,
//! and concurrent callers share the pipe by request id. What OK's flag and number mean is
//! per operation: READ (found), SIZE (found, size), PUT create-only (created), DELETE
//! (existed), LOCK (lock id), SWEEP (count). A listing is PART bytes of (kind-relative name,
//! size) pairs. Errors are typed [`Code`]s, mapped back to `repo::Error` on the client.

use std::io::{Read, Write};

use super::{Key, Kind};

/// The first bytes of the server's hello.
pub const MAGIC: &[u8; 8] = b"SNARFSRV";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Most bytes of object data in one frame (DATA, PART).
pub const PIECE: usize = 1 << 20;
/// Largest frame body accepted: a piece and its header.
pub const MAX_FRAME: usize = PIECE + 64 * 1024;
/// Capabilities this server offers (none optional yet; named so later versions can add).
pub const CAPABILITIES: [&str; 3] = ["pipelined", "streaming-upload", "lock-per-connection"];
/// The `wait` of a LOCK that must not wait.
pub const NO_WAIT: u64 = u64::MAX;

/// Errors of the framing itself.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The pipe failed or closed.
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than the cap.
    #[error("the far side sent a frame of {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLarge(u64),
    /// A frame that does not parse.
    #[error("the far side sent a malformed frame: {0}")]
    Malformed(&'static str),
}

/// What PUT does when it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// A streaming upload (`Backend::upload`).
    Upload,
    /// An atomic replace (`Backend::write`).
    Replace,
    /// A create-only write (`Backend::create`).
    CreateOnly,
}

/// Typed error codes of ERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The object does not exist.
    NotFound = 1,
    /// A new repository's folder is not empty.
    Exists = 2,
    /// The lock is taken; detail names the holder.
    Locked = 3,
    /// The lock stayed taken for the whole wait; detail names the holder, n is milliseconds.
    LockTimeout = 4,
    /// An I/O error; n is the errno (0 if none).
    Io = 5,
    /// The server refuses the request (a path outside `--restrict-to`).
    Refused = 6,
    /// An object is damaged; detail is its path, n the fix (`Fix` as 0, 1, 2).
    Damaged = 7,
    /// A bad argument.
    BadArgument = 8,
    /// The request broke the protocol.
    Protocol = 9,
    /// The folder holds no repository.
    NotARepo = 10,
}

impl Code {
    fn from_u8(b: u8) -> Option<Code> {
        Some(match b {
            1 => Code::NotFound,
            2 => Code::Exists,
            3 => Code::Locked,
            4 => Code::LockTimeout,
            5 => Code::Io,
            6 => Code::Refused,
            7 => Code::Damaged,
            8 => Code::BadArgument,
            9 => Code::Protocol,
            10 => Code::NotARepo,
            _ => return None,
        })
    }
}

/// An error as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// What kind of error.
    pub code: Code,
    /// The far side's message.
    pub message: String,
    /// The holder of a lock, the path of a damaged object.
    pub detail: String,
    /// An errno, milliseconds waited, a fix (see [`Code`]).
    pub n: u64,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// The server's greeting.
    Hello {
        /// Protocol version.
        version: u16,
        /// Largest frame body the server accepts.
        max_frame: u32,
        /// Capabilities.
        caps: Vec<String>,
    },
    /// Opens (or creates) the repository at `path`.
    Open {
        /// Request id.
        id: u64,
        /// The repository's path on the far side.
        path: String,
        /// Create the folder layout of a new repository.
        create: bool,
    },
    /// Reads a whole object of at most `cap` bytes.
    Read {
        /// Request id.
        id: u64,
        /// The object.
        key: Key,
        /// Largest size accepted.
        cap: u64,
    },
    /// Reads a byte range.
    Range {
        /// Request id.
        id: u64,
        /// The object.
        key: Key,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// Asks an object's size.
    Size {
        /// Request id.
        id: u64,
        /// The object.
        key: Key,
    },
    /// Starts writing an object.
    Put {
        /// Request id, also the id of its DATA, FINISH and ABORT.
        id: u64,
        /// The object.
        key: Key,
        /// Upload, replace or create-only.
        mode: PutMode,
    },
    /// Bytes of a PUT.
    Data {
        /// The PUT's id.
        id: u64,
        /// The bytes (at most [`PIECE`]).
        data: Vec<u8>,
    },
    /// Ends a PUT: the object is made durable and visible.
    Finish {
        /// The PUT's id.
        id: u64,
    },
    /// Ends a PUT without making anything visible.
    Abort {
        /// The PUT's id.
        id: u64,
    },
    /// Lists one kind of object.
    List {
        /// Request id.
        id: u64,
        /// The kind.
        kind: Kind,
    },
    /// Deletes an object.
    Delete {
        /// Request id.
        id: u64,
        /// The object.
        key: Key,
    },
    /// Takes the repository lock, held until UNLOCK or the end of the connection.
    Lock {
        /// Request id, which becomes the lock's id.
        id: u64,
        /// Who holds it, for messages.
        holder: String,
        /// Milliseconds to wait, or [`NO_WAIT`].
        wait_ms: u64,
    },
    /// Releases a lock.
    Unlock {
        /// Request id.
        id: u64,
        /// The lock's id.
        lock: u64,
    },
    /// Sweeps leftovers.
    Sweep {
        /// Request id.
        id: u64,
    },
    /// Bytes of an answer.
    Part {
        /// Request id.
        id: u64,
        /// The bytes (at most [`PIECE`]).
        data: Vec<u8>,
    },
    /// A request succeeded.
    Ok {
        /// Request id.
        id: u64,
        /// Per operation (see the module documentation).
        flag: bool,
        /// Per operation.
        n: u64,
    },
    /// A request failed.
    Err {
        /// Request id.
        id: u64,
        /// The error.
        error: RemoteError,
    },
    /// The server gives up on the connection.
    Fatal {
        /// Why.
        message: String,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const READ: u8 = 3;
    pub const RANGE: u8 = 4;
    pub const SIZE: u8 = 5;
    pub const PUT: u8 = 6;
    pub const DATA: u8 = 7;
    pub const FINISH: u8 = 8;
    pub const ABORT: u8 = 9;
    pub const LIST: u8 = 10;
    pub const DELETE: u8 = 11;
    pub const LOCK: u8 = 12;
    pub const UNLOCK: u8 = 13;
    pub const SWEEP: u8 = 14;
    pub const PART: u8 = 32;
    pub const OK: u8 = 33;
    pub const ERR: u8 = 34;
    pub const FATAL: u8 = 35;
}

/// Builds a frame body.
struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8, id: u64) -> Enc {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; 4]);
        v.push(tag);
        v.extend_from_slice(&id.to_be_bytes());
        Enc(v)
    }
    fn u8(mut self, b: u8) -> Enc {
        self.0.push(b);
        self
    }
    fn u16(mut self, n: u16) -> Enc {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn u32(mut self, n: u32) -> Enc {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn u64(mut self, n: u64) -> Enc {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Enc {
        // Callers keep pieces and strings far below 4 GiB; MAX_FRAME refuses larger anyway.
        self.0
            .extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Enc {
        self.bytes(s.as_bytes())
    }
    fn key(self, k: &Key) -> Enc {
        self.str(&k.name())
    }
    /// The frame with its length prefix.
    fn done(mut self) -> Vec<u8> {
        let body = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&body.to_be_bytes());
        self.0
    }
}

/// Reads a frame body.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed(
                "a field runs past the end of its frame",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| WireError::Malformed("a string is not UTF-8"))
    }
    fn key(&mut self) -> Result<Key, WireError> {
        parse_key(&self.str()?).ok_or(WireError::Malformed("not an object name snarf makes"))
    }
    fn kind(&mut self) -> Result<Kind, WireError> {
        kind_of(self.u8()?).ok_or(WireError::Malformed("an unknown kind of object"))
    }
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("bytes after the last field"))
        }
    }
}

/// The wire number of a kind.
fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Config => 0,
        Kind::KeySlot => 1,
        Kind::Pack => 2,
        Kind::Index => 3,
        Kind::Backup => 4,
        Kind::Finishing => 5,
        Kind::Pin => 6,
        Kind::State => 7,
    }
}

fn kind_of(b: u8) -> Option<Kind> {
    Some(match b {
        0 => Kind::Config,
        1 => Kind::KeySlot,
        2 => Kind::Pack,
        3 => Kind::Index,
        4 => Kind::Backup,
        5 => Kind::Finishing,
        6 => Kind::Pin,
        7 => Kind::State,
        _ => return None,
    })
}

/// The key named `name` (as [`Key::name`] writes it), if snarf makes such a name.
pub fn parse_key(name: &str) -> Option<Key> {
    if name == "config" {
        return Some(Key::Config);
    }
    let (folder, rest) = name.split_once('/')?;
    let kind = Kind::FOLDERS.into_iter().find(|k| k.folder() == folder)?;
    Key::parse(kind, rest)
}

impl Msg {
    /// The frame of this message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Hello {
                version,
                max_frame,
                caps,
            } => {
                let mut e = Enc::new(tag::HELLO, 0);
                e.0.extend_from_slice(MAGIC);
                let mut e = e.u16(*version).u32(*max_frame).u32(caps.len() as u32);
                for c in caps {
                    e = e.str(c);
                }
                e.done()
            }
            Msg::Open { id, path, create } => Enc::new(tag::OPEN, *id)
                .str(path)
                .u8(u8::from(*create))
                .done(),
            Msg::Read { id, key, cap } => Enc::new(tag::READ, *id).key(key).u64(*cap).done(),
            Msg::Range {
                id,
                key,
                offset,
                len,
            } => Enc::new(tag::RANGE, *id)
                .key(key)
                .u64(*offset)
                .u64(*len)
                .done(),
            Msg::Size { id, key } => Enc::new(tag::SIZE, *id).key(key).done(),
            Msg::Put { id, key, mode } => {
                let m = match mode {
                    PutMode::Upload => 0,
                    PutMode::Replace => 1,
                    PutMode::CreateOnly => 2,
                };
                Enc::new(tag::PUT, *id).key(key).u8(m).done()
            }
            Msg::Data { id, data } => Enc::new(tag::DATA, *id).bytes(data).done(),
            Msg::Finish { id } => Enc::new(tag::FINISH, *id).done(),
            Msg::Abort { id } => Enc::new(tag::ABORT, *id).done(),
            Msg::List { id, kind } => Enc::new(tag::LIST, *id).u8(kind_byte(*kind)).done(),
            Msg::Delete { id, key } => Enc::new(tag::DELETE, *id).key(key).done(),
            Msg::Lock {
                id,
                holder,
                wait_ms,
            } => Enc::new(tag::LOCK, *id).str(holder).u64(*wait_ms).done(),
            Msg::Unlock { id, lock } => Enc::new(tag::UNLOCK, *id).u64(*lock).done(),
            Msg::Sweep { id } => Enc::new(tag::SWEEP, *id).done(),
            Msg::Part { id, data } => Enc::new(tag::PART, *id).bytes(data).done(),
            Msg::Ok { id, flag, n } => Enc::new(tag::OK, *id).u8(u8::from(*flag)).u64(*n).done(),
            Msg::Err { id, error } => Enc::new(tag::ERR, *id)
                .u8(error.code as u8)
                .str(&error.message)
                .str(&error.detail)
                .u64(error.n)
                .done(),
            Msg::Fatal { message } => Enc::new(tag::FATAL, 0).str(message).done(),
        }
    }

    /// Parses one frame body.
    pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
        let mut d = Dec(body);
        let t = d.u8()?;
        let id = d.u64()?;
        let bool_of = |b: u8| match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed("a flag is neither 0 nor 1")),
        };
        let m = match t {
            tag::HELLO => {
                if d.take(MAGIC.len())? != MAGIC {
                    return Err(WireError::Malformed("the hello lacks snarf's magic"));
                }
                let version = d.u16()?;
                let max_frame = d.u32()?;
                let n = d.u32()?;
                if n > 1024 {
                    return Err(WireError::Malformed("too many capabilities"));
                }
                let mut caps = Vec::new();
                for _ in 0..n {
                    caps.push(d.str()?);
                }
                Msg::Hello {
                    version,
                    max_frame,
                    caps,
                }
            }
            tag::OPEN => Msg::Open {
                id,
                path: d.str()?,
                create: bool_of(d.u8()?)?,
            },
            tag::READ => Msg::Read {
                id,
                key: d.key()?,
                cap: d.u64()?,
            },
            tag::RANGE => Msg::Range {
                id,
                key: d.key()?,
                offset: d.u64()?,
                len: d.u64()?,
            },
            tag::SIZE => Msg::Size { id, key: d.key()? },
            tag::PUT => Msg::Put {
                id,
                key: d.key()?,
                mode: match d.u8()? {
                    0 => PutMode::Upload,
                    1 => PutMode::Replace,
                    2 => PutMode::CreateOnly,
                    _ => return Err(WireError::Malformed("an unknown write mode")),
                },
            },
            tag::DATA => Msg::Data {
                id,
                data: d.bytes()?.to_vec(),
            },
            tag::FINISH => Msg::Finish { id },
            tag::ABORT => Msg::Abort { id },
            tag::LIST => Msg::List {
                id,
                kind: d.kind()?,
            },
            tag::DELETE => Msg::Delete { id, key: d.key()? },
            tag::LOCK => Msg::Lock {
                id,
                holder: d.str()?,
                wait_ms: d.u64()?,
            },
            tag::UNLOCK => Msg::Unlock { id, lock: d.u64()? },
            tag::SWEEP => Msg::Sweep { id },
            tag::PART => Msg::Part {
                id,
                data: d.bytes()?.to_vec(),
            },
            tag::OK => Msg::Ok {
                id,
                flag: bool_of(d.u8()?)?,
                n: d.u64()?,
            },
            tag::ERR => Msg::Err {
                id,
                error: RemoteError {
                    code: Code::from_u8(d.u8()?)
                        .ok_or(WireError::Malformed("an unknown error code"))?,
                    message: d.str()?,
                    detail: d.str()?,
                    n: d.u64()?,
                },
            },
            tag::FATAL => Msg::Fatal { message: d.str()? },
            _ => return Err(WireError::Malformed("an unknown frame type")),
        };
        d.end()?;
        Ok(m)
    }
}

/// Writes one frame.
pub fn send(out: &mut impl Write, msg: &Msg) -> Result<(), WireError> {
    out.write_all(&msg.encode())?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of the stream (between frames).
pub fn recv(input: &mut impl Read) -> Result<Option<Msg>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Malformed("the stream ends inside a frame")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n as u64));
    }
    let torn = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Malformed("the stream ends inside a frame")
        } else {
            e.into()
        }
    };
    if n < PIECE_HEAD {
        let mut body = vec![0u8; n];
        input.read_exact(&mut body).map_err(torn)?;
        return Msg::decode(&body).map(Some);
    }
    // The bytes of DATA and PART (nearly all of the traffic) are read straight into their
    // own buffer, not into a frame buffer and copied out of it.
    let mut head = [0u8; PIECE_HEAD];
    input.read_exact(&mut head).map_err(torn)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(&head[9..13]);
    let bytes_len = u32::from_be_bytes(b) as usize;
    if matches!(head[0], tag::DATA | tag::PART) && bytes_len == n - PIECE_HEAD {
        let mut data = vec![0u8; bytes_len];
        input.read_exact(&mut data).map_err(torn)?;
        let mut i = [0u8; 8];
        i.copy_from_slice(&head[1..9]);
        let id = u64::from_be_bytes(i);
        return Ok(Some(if head[0] == tag::DATA {
            Msg::Data { id, data }
        } else {
            Msg::Part { id, data }
        }));
    }
    let mut body = vec![0u8; n];
    body[..PIECE_HEAD].copy_from_slice(&head);
    input.read_exact(&mut body[PIECE_HEAD..]).map_err(torn)?;
    Msg::decode(&body).map(Some)
}

/// Bytes of a DATA or PART body before its bytes: tag, id, length.
const PIECE_HEAD: usize = 1 + 8 + 4;

/// Writes a DATA frame (or a PART frame, if `part`) of `data` for request `id` from where
/// the bytes lie, without building the frame in a buffer of its own.
pub fn send_piece(out: &mut impl Write, part: bool, id: u64, data: &[u8]) -> Result<(), WireError> {
    let mut head = [0u8; 4 + PIECE_HEAD];
    let body = u32::try_from(PIECE_HEAD + data.len())
        .ok()
        .filter(|&b| b as usize <= MAX_FRAME)
        .ok_or(WireError::TooLarge((PIECE_HEAD + data.len()) as u64))?;
    head[..4].copy_from_slice(&body.to_be_bytes());
    head[4] = if part { tag::PART } else { tag::DATA };
    head[5..13].copy_from_slice(&id.to_be_bytes());
    head[13..].copy_from_slice(&(data.len() as u32).to_be_bytes());
    out.write_all(&head)?;
    out.write_all(data)?;
    Ok(())
}

/// Bytes a pipe of the connection is asked to hold: a whole piece, so a writer hands a
/// piece over in one write instead of sixteen of the default 64 KiB (each a wakeup of the
/// process on the other end: ssh, or `snarf serve`).
pub const PIPE_BYTES: usize = PIECE;

/// Grows the pipe `fd` (if it is one) to [`PIPE_BYTES`]; a failure (not a pipe, or the
/// system's pipe-max-size is lower) only leaves it as it was.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES) {
        log::debug!("the connection's pipe stays at its size: {e}");
    }
}

/// Encodes a listing as the bytes of PART frames.
pub fn encode_listing(entries: &[(Key, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 48);
    for (k, n) in entries {
        let name = k.name();
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// Decodes a listing of `kind`; a name that is not a key of that kind is an error.
pub fn decode_listing(kind: Kind, bytes: &[u8]) -> Result<Vec<(Key, u64)>, WireError> {
    let mut d = Dec(bytes);
    let mut out = Vec::new();
    while !d.0.is_empty() {
        let key = d.key()?;
        if key.kind() != kind {
            return Err(WireError::Malformed(
                "a listing names an object of another kind",
            ));
        }
        out.push((key, d.u64()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::PackId;

    #[test]
    fn every_frame_round_trips_and_garbage_is_refused_not_trusted() {
        let key = Key::Pack(PackId::generate());
        let msgs = vec![
            Msg::Hello {
                version: VERSION,
                max_frame: MAX_FRAME as u32,
                caps: vec!["a".into()],
            },
            Msg::Open {
                id: 1,
                path: "/srv/r; rm -rf /\n'x'".into(),
                create: true,
            },
            Msg::Read {
                id: 2,
                key: Key::Config,
                cap: 9,
            },
            Msg::Range {
                id: 3,
                key: key.clone(),
                offset: 5,
                len: 7,
            },
            Msg::Put {
                id: 4,
                key: key.clone(),
                mode: PutMode::CreateOnly,
            },
            Msg::Data {
                id: 4,
                data: vec![1, 2, 3],
            },
            Msg::Finish { id: 4 },
            Msg::List {
                id: 5,
                kind: Kind::Pack,
            },
            Msg::Lock {
                id: 6,
                holder: "snarf backup".into(),
                wait_ms: NO_WAIT,
            },
            Msg::Err {
                id: 7,
                error: RemoteError {
                    code: Code::Locked,
                    message: "m".into(),
                    detail: "d".into(),
                    n: 3,
                },
            },
            Msg::Fatal {
                message: "bye".into(),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            send(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &msgs {
            assert_eq!(recv(&mut r).unwrap().as_ref(), Some(m));
        }
        assert!(recv(&mut r).unwrap().is_none(), "a clean end");

        // A key that is not a name snarf makes never decodes.
        let bad = Enc::new(tag::SIZE, 1).str("packs/../../etc/passwd").done();
        assert!(recv(&mut &bad[..]).is_err());
        // An absurd length is refused before anything is allocated.
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(recv(&mut &huge[..]), Err(WireError::TooLarge(_))));
        // A torn frame is an error, not a clean end.
        let torn = &buf[..buf.len() - 1];
        let mut r = torn;
        let mut last = Ok(None);
        for _ in 0..msgs.len() {
            last = recv(&mut r);
        }
        assert!(last.is_err());
        // A listing with a name of another kind is refused.
        let l = encode_listing(&[(Key::Config, 1)]);
        assert!(decode_listing(Kind::Pack, &l).is_err());
        let l = encode_listing(&[(key.clone(), 10)]);
        assert_eq!(decode_listing(Kind::Pack, &l).unwrap(), vec![(key, 10)]);
    }

    #[test]
    fn pieces_sent_in_place_are_the_frames_encode_makes_and_bad_ones_are_refused() {
        for (part, data) in [
            (false, vec![]),
            (false, vec![9u8; 5]),
            (true, vec![1u8; 13]),
            (false, (0..PIECE).map(|i| i as u8).collect::<Vec<u8>>()),
        ] {
            let mut mine = Vec::new();
            send_piece(&mut mine, part, 77, &data).unwrap();
            let m = if part {
                Msg::Part { id: 77, data }
            } else {
                Msg::Data { id: 77, data }
            };
            assert_eq!(mine, m.encode());
            assert_eq!(recv(&mut &mine[..]).unwrap(), Some(m));
        }
        let mut big = Vec::new();
        assert!(matches!(
            send_piece(&mut big, false, 1, &vec![0u8; MAX_FRAME]),
            Err(WireError::TooLarge(_))
        ));
        assert!(big.is_empty(), "a refused piece wrote something");
        // A DATA frame whose inner length disagrees with the frame's is malformed, however
        // it is read.
        let mut f = Vec::new();
        send_piece(&mut f, false, 3, &[5u8; 100]).unwrap();
        f[13..17].copy_from_slice(&99u32.to_be_bytes());
        assert!(matches!(recv(&mut &f[..]), Err(WireError::Malformed(_))));
        f[13..17].copy_from_slice(&101u32.to_be_bytes());
        assert!(matches!(recv(&mut &f[..]), Err(WireError::Malformed(_))));
        // Torn inside the bytes of a piece.
        let mut t = Vec::new();
        send_piece(&mut t, true, 3, &[5u8; 100]).unwrap();
        assert!(matches!(recv(&mut &t[..50]), Err(WireError::Malformed(_))));
    }
}
