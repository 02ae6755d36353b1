//! The far side of a repository over ssh (`snarf serve`): executes the [`wire`] protocol's
//! requests against a [`LocalDir`] here, so the repository work that must be local (taking
//! the lock, the create-only commit, writing packs) happens on the host that holds it.
//!
//! One connection is one process: the lock it takes lives as long as the connection (the
//! serve process holds the flock, so a dropped connection, a killed ssh, EOF or SIGHUP
//! releases it with the process), and an unfinished upload is aborted with it (its part file
//! is removed, or swept by the next lock holder if the process was killed). Requests are
//! executed in the order they arrive; the client pipelines them. The one exception is an
//! upload's FINISH: its fsync and rename run on a thread of their own (answered from there)
//! while the next upload's frames are read, and every request that is not part of an upload
//! waits for the finishes before it, so it sees them done.
//!
//! `--restrict-to DIR` (repeatable) refuses every repository path that is not inside one of
//! the folders after canonicalisation (symlinks resolved, `..` refused below a folder that
//! does not exist yet), as `borg serve --restrict-to-path` does, so a key in
//! `authorized_keys` with `command="snarf serve --restrict-to /srv/repos"` reaches only those
//! repositories whatever the client asks.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::thread::ScopedJoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::wire::{self, Code, Msg, PutMode, RemoteError, WireError};
use super::{Backend, Created, Key, LocalDir, LockGuard, Upload};
use crate::chain::{self, ErrorChain};
use crate::repo::error::{Error, Fix};

/// Most bytes buffered for replace and create-only PUTs of one connection together (they are
/// buffered whole until FINISH; packs stream as uploads instead).
const MAX_BUFFERED: usize = 256 << 20;
/// Most PUTs open at once on one connection (a writer keeps a handful).
const MAX_OPEN_PUTS: usize = 256;

/// What `snarf serve` was started with.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The repository the client must open (`--repo`); `None` under a forced command, where
    /// the client's OPEN names it and `restrict_to` bounds it.
    pub repo: Option<String>,
    /// Folders the repository must be inside (`--restrict-to`); empty for no restriction.
    pub restrict_to: Vec<PathBuf>,
}

/// Why a serve session ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The pipe or a frame failed.
    #[error("snarf serve: the connection failed")]
    Wire(#[from] WireError),
    /// The client broke the protocol; it was told with a FATAL frame.
    #[error("snarf serve: {0}")]
    Protocol(String),
}

/// A PUT in progress.
enum Put {
    /// A streaming upload.
    Upload(Box<dyn Upload>),
    /// A replace or create-only write, buffered until FINISH.
    Whole(Key, PutMode, Vec<u8>),
    /// Failed already and answered; its remaining DATA is dropped.
    Failed,
}

/// The state of one connection.
struct Session {
    opts: ServeOptions,
    restrict: Vec<PathBuf>,
    backend: Option<LocalDir>,
    puts: HashMap<u64, Put>,
    /// Bytes held by the buffered PUTs.
    buffered: usize,
    locks: HashMap<u64, Box<dyn LockGuard>>,
}

/// Serves one connection on `input`/`output` until the client closes it.
pub fn serve<W: Write + Send>(
    input: &mut impl Read,
    output: &mut W,
    opts: &ServeOptions,
) -> Result<(), ServeError> {
    wire::send(
        output,
        &Msg::Hello {
            version: wire::VERSION,
            max_frame: wire::MAX_FRAME as u32,
            caps: wire::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        },
    )?;
    output.flush().map_err(WireError::from)?;
    let mut restrict = Vec::new();
    for dir in &opts.restrict_to {
        match std::fs::canonicalize(dir) {
            Ok(d) => restrict.push(d),
            Err(e) => {
                let message = format!(
                    "--restrict-to {}: {}; name an existing folder",
                    dir.display(),
                    e
                );
                return fatal(output, message);
            }
        }
    }
    let mut s = Session {
        opts: opts.clone(),
        restrict,
        backend: None,
        puts: HashMap::new(),
        buffered: 0,
        locks: HashMap::new(),
    };
    let out = Mutex::new(output);
    let ended = std::thread::scope(|scope| {
        // Uploads being finished (fsynced, renamed) by threads of their own, oldest first,
        // while the next pack's frames are read.
        let mut finishing: VecDeque<ScopedJoinHandle<'_, Result<(), Step>>> = VecDeque::new();
        loop {
            let msg = match wire::recv(input) {
                Ok(Some(m)) => m,
                // The client is gone: locks and unfinished uploads go with this session
                // (finishes it asked for complete first).
                Ok(None) => return join_all(&mut finishing),
                Err(WireError::Io(e)) => return Err(Step::Wire(WireError::Io(e))),
                Err(e) => return Err(Step::Fatal(e.to_string())),
            };
            if let Msg::Finish { id } = &msg {
                if let Some(Put::Upload(_)) = s.puts.get(id) {
                    if let Some(Put::Upload(u)) = s.puts.remove(id) {
                        if finishing.len() >= MAX_FINISHING {
                            join_one(finishing.pop_front())?;
                        }
                        let (id, out) = (*id, &out);
                        finishing.push_back(scope.spawn(move || {
                            let a = u.finish().map(|()| (true, 0));
                            reply(&mut **out.lock(), id, a)
                        }));
                    }
                    continue;
                }
            }
            let upload_frame = match &msg {
                Msg::Data { .. } | Msg::Abort { .. } => true,
                Msg::Put { mode, .. } => *mode == PutMode::Upload,
                _ => false,
            };
            if !upload_frame {
                // Every other request sees the uploads finished that came before it.
                join_all(&mut finishing)?;
            }
            s.handle(msg, &mut **out.lock())?;
        }
    });
    let output = out.into_inner();
    match ended {
        Ok(()) => Ok(()),
        Err(Step::Fatal(message)) => fatal(output, message),
        Err(Step::Wire(e)) => Err(e.into()),
    }
}

/// Uploads one connection finishes at once, at most (each holds a thread during its fsync).
const MAX_FINISHING: usize = 4;

/// Waits for one finishing thread (its answer was sent by it).
fn join_one(t: Option<ScopedJoinHandle<'_, Result<(), Step>>>) -> Result<(), Step> {
    match t {
        Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        None => Ok(()),
    }
}

/// Waits for every finishing thread, oldest first.
fn join_all(ts: &mut VecDeque<ScopedJoinHandle<'_, Result<(), Step>>>) -> Result<(), Step> {
    while let Some(t) = ts.pop_front() {
        join_one(Some(t))?;
    }
    Ok(())
}

/// Tells the client why the connection ends, and ends it.
fn fatal(output: &mut impl Write, message: String) -> Result<(), ServeError> {
    log::error!("snarf serve: {message}");
    let _ = wire::send(
        output,
        &Msg::Fatal {
            message: message.clone(),
        },
    );
    let _ = output.flush();
    Err(ServeError::Protocol(message))
}

/// How handling one frame can end the session.
enum Step {
    /// The client broke the protocol.
    Fatal(String),
    /// The pipe failed.
    Wire(WireError),
}

impl From<WireError> for Step {
    fn from(e: WireError) -> Step {
        Step::Wire(e)
    }
}

impl From<std::io::Error> for Step {
    fn from(e: std::io::Error) -> Step {
        Step::Wire(e.into())
    }
}

/// The answer of one finished request: OK's flag and number, or the error.
type Answer = crate::repo::error::Result<(bool, u64)>;

impl Session {
    fn handle(&mut self, msg: Msg, out: &mut impl Write) -> Result<(), Step> {
        if let Msg::Open { id, path, create } = &msg {
            if self.backend.is_some() {
                return Err(Step::Fatal("a second OPEN on one connection".into()));
            }
            let a = self.open(path, *create);
            return reply(out, *id, a);
        }
        let Some(b) = self.backend.as_ref() else {
            return Err(Step::Fatal(format!(
                "the first request must be OPEN, not {msg:?}"
            )));
        };
        match msg {
            Msg::Read { id, key, cap } => match b.read(&key, cap) {
                Ok(Some(data)) => {
                    parts(out, id, &data)?;
                    reply(out, id, Ok((true, data.len() as u64)))
                }
                Ok(None) => reply(out, id, Ok((false, 0))),
                Err(e) => reply(out, id, Err(e)),
            },
            Msg::Range {
                id,
                key,
                offset,
                len,
            } => {
                // Large ranges are read and sent a piece at a time, never held whole.
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(wire::PIECE as u64);
                    match b.read_range(&key, offset + at, n) {
                        Ok(data) => parts(out, id, &data)?,
                        Err(e) => return reply(out, id, Err(e)),
                    }
                    at += n;
                }
                reply(out, id, Ok((true, len)))
            }
            Msg::Size { id, key } => {
                let a = b.size(&key).map(|s| (s.is_some(), s.unwrap_or(0)));
                reply(out, id, a)
            }
            Msg::Put { id, key, mode } => {
                if self.puts.contains_key(&id) {
                    return Err(Step::Fatal(format!("PUT {id} is already open")));
                }
                if self.puts.len() >= MAX_OPEN_PUTS {
                    return Err(Step::Fatal(format!(
                        "more than {MAX_OPEN_PUTS} PUTs open at once"
                    )));
                }
                let put = match mode {
                    PutMode::Upload => match b.upload(&key) {
                        Ok(u) => Put::Upload(u),
                        Err(e) => {
                            reply(out, id, Err(e))?;
                            Put::Failed
                        }
                    },
                    m => Put::Whole(key, m, Vec::new()),
                };
                self.puts.insert(id, put);
                Ok(())
            }
            Msg::Data { id, data } => {
                let Some(put) = self.puts.get_mut(&id) else {
                    return Err(Step::Fatal(format!("DATA for PUT {id}, which is not open")));
                };
                let failed = match put {
                    Put::Upload(u) => u.write(&data).err(),
                    Put::Whole(key, _, buf) => {
                        if self.buffered + data.len() > MAX_BUFFERED {
                            self.buffered -= buf.len();
                            Some(Error::BadArgument(format!(
                                "{key} would take the whole-object writes in flight past {MAX_BUFFERED} bytes"
                            )))
                        } else {
                            self.buffered += data.len();
                            buf.extend_from_slice(&data);
                            None
                        }
                    }
                    Put::Failed => None,
                };
                if let Some(e) = failed {
                    // Answered now, so the client stops streaming; the upload is dropped
                    // (its part file removed).
                    *put = Put::Failed;
                    reply(out, id, Err(e))?;
                }
                Ok(())
            }
            Msg::Finish { id } => {
                let Some(put) = self.puts.remove(&id) else {
                    return Err(Step::Fatal(format!(
                        "FINISH of PUT {id}, which is not open"
                    )));
                };
                let a = match put {
                    Put::Upload(u) => u.finish().map(|()| (true, 0)),
                    Put::Whole(key, PutMode::CreateOnly, data) => {
                        b.create(&key, &data).map(|c| (c == Created::Created, 0))
                    }
                    Put::Whole(key, _, data) => b.write(&key, &data).map(|()| (true, 0)),
                    Put::Failed => return Ok(()),
                };
                reply(out, id, a)
            }
            Msg::Abort { id } => match self.puts.remove(&id) {
                Some(Put::Failed) => Ok(()),
                Some(Put::Whole(_, _, data)) => {
                    self.buffered -= data.len();
                    reply(out, id, Ok((false, 0)))
                }
                Some(Put::Upload(_)) => reply(out, id, Ok((false, 0))),
                None => Err(Step::Fatal(format!("ABORT of PUT {id}, which is not open"))),
            },
            Msg::List { id, kind } => match b.list(kind) {
                Ok(entries) => {
                    let bytes = wire::encode_listing(&entries);
                    parts(out, id, &bytes)?;
                    reply(out, id, Ok((true, entries.len() as u64)))
                }
                Err(e) => reply(out, id, Err(e)),
            },
            Msg::Delete { id, key } => {
                let a = b.delete(&key).map(|d| (d, 0));
                reply(out, id, a)
            }
            Msg::Lock {
                id,
                holder,
                wait_ms,
            } => {
                let wait = (wait_ms != wire::NO_WAIT).then(|| Duration::from_millis(wait_ms));
                match b.lock(&holder, wait) {
                    Ok(guard) => {
                        self.locks.insert(id, guard);
                        reply(out, id, Ok((true, id)))
                    }
                    Err(e) => reply(out, id, Err(e)),
                }
            }
            Msg::Unlock { id, lock } => {
                let had = self.locks.remove(&lock).is_some();
                reply(out, id, Ok((had, 0)))
            }
            Msg::Sweep { id } => {
                let a = b.sweep_leftovers().map(|n| (true, n));
                reply(out, id, a)
            }
            other => Err(Step::Fatal(format!(
                "{other:?} is not a request a client sends"
            ))),
        }
    }

    /// Resolves, checks and opens the repository folder.
    fn open(&mut self, path: &str, create: bool) -> Answer {
        if let Some(fixed) = &self.opts.repo {
            if fixed != path {
                return Err(Error::Refused {
                    repo: path.to_string(),
                    why: format!("this snarf serve was started for the repository {fixed}"),
                });
            }
        }
        let root = resolve(path, &self.restrict).map_err(|why| Error::Refused {
            repo: path.to_string(),
            why,
        })?;
        let b = LocalDir::new(&root);
        if create {
            // A new repository goes into a missing or empty folder only: its layout would
            // mix with whatever is there (a format 1 repository, other files).
            if let Ok(mut entries) = std::fs::read_dir(&root) {
                if entries.next().is_some() {
                    return Err(Error::NotEmpty { path: root });
                }
            }
            b.create_layout()?;
        }
        self.backend = Some(b);
        Ok((true, 0))
    }
}

/// The canonical folder of `path`, if it is inside one of `restrict` (any folder when
/// `restrict` is empty). The part of the path that does not exist yet (a repository to be
/// created) is appended to the canonical form of the part that does, and may hold no `..`.
pub fn resolve(path: &str, restrict: &[PathBuf]) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("the repository path is empty".into());
    }
    let p = Path::new(path);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("the current folder: {e}"))?
            .join(p)
    };
    let mut missing = Vec::new();
    let mut base = p.as_path();
    let canonical = loop {
        match std::fs::canonicalize(base) {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(last)) = (base.parent(), base.components().next_back())
                else {
                    return Err(format!("{path}: {e}"));
                };
                missing.push(last);
                base = parent;
            }
            Err(e) => return Err(format!("{path}: {e}")),
        }
    };
    let mut full = canonical;
    for c in missing.into_iter().rev() {
        match c {
            Component::Normal(n) => full.push(n),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{path} has `..` below a folder that does not exist; name the repository without it"
                ))
            }
        }
    }
    if !restrict.is_empty() && !restrict.iter().any(|d| full.starts_with(d)) {
        let dirs: Vec<String> = restrict.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "{path} (which is {}) is outside the folders this snarf serve may use ({}); use a repository inside them",
            full.display(),
            dirs.join(", ")
        ));
    }
    Ok(full)
}

/// Sends `data` as PART frames.
fn parts(out: &mut impl Write, id: u64, data: &[u8]) -> Result<(), Step> {
    for piece in data.chunks(wire::PIECE) {
        wire::send_piece(out, true, id, piece)?;
    }
    Ok(())
}

/// Sends the final answer of request `id`.
fn reply(out: &mut impl Write, id: u64, a: Answer) -> Result<(), Step> {
    let msg = match a {
        Ok((flag, n)) => Msg::Ok { id, flag, n },
        Err(e) => Msg::Err {
            id,
            error: to_remote(&e),
        },
    };
    wire::send(out, &msg)?;
    out.flush()?;
    Ok(())
}

/// The wire form of a repository error.
pub fn to_remote(e: &Error) -> RemoteError {
    let plain = |code: Code, n: u64| RemoteError {
        code,
        message: e.chain().to_string(),
        detail: String::new(),
        n,
    };
    match e {
        Error::Locked { holder, .. } => RemoteError {
            code: Code::Locked,
            message: e.to_string(),
            detail: holder.clone(),
            n: 0,
        },
        Error::LockTimeout { holder, secs, .. } => RemoteError {
            code: Code::LockTimeout,
            message: e.to_string(),
            detail: holder.clone(),
            n: (secs * 1000.0) as u64,
        },
        Error::Damaged { path, why, fix, .. } => RemoteError {
            code: Code::Damaged,
            message: why.clone(),
            detail: path.display().to_string(),
            n: match fix {
                Fix::RepairIndex => 0,
                Fix::Check => 1,
                Fix::Copy => 2,
            },
        },
        Error::NotARepo { .. } => plain(Code::NotARepo, 0),
        Error::NotEmpty { path } => RemoteError {
            code: Code::Exists,
            message: e.to_string(),
            detail: path.display().to_string(),
            n: 0,
        },
        Error::Refused { why, .. } => RemoteError {
            code: Code::Refused,
            message: why.clone(),
            detail: String::new(),
            n: 0,
        },
        Error::BadArgument(m) => RemoteError {
            code: Code::BadArgument,
            message: m.clone(),
            detail: String::new(),
            n: 0,
        },
        _ => {
            let io = chain::io_errors(e).next();
            match io.map(|i| i.kind()) {
                Some(std::io::ErrorKind::NotFound) => plain(Code::NotFound, 0),
                _ => plain(
                    Code::Io,
                    io.and_then(|i| i.raw_os_error()).unwrap_or(0) as u64,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::PackId;

    /// Runs a session on `requests` (then EOF) and returns the frames it answered.
    fn session(requests: &[Msg]) -> Vec<Msg> {
        let mut input = Vec::new();
        for m in requests {
            wire::send(&mut input, m).unwrap();
        }
        let mut output = Vec::new();
        serve(&mut &input[..], &mut output, &ServeOptions::default()).unwrap();
        let mut r = &output[..];
        let mut got = Vec::new();
        while let Some(m) = wire::recv(&mut r).unwrap() {
            got.push(m);
        }
        got
    }

    #[test]
    fn uploads_finish_beside_the_next_and_later_requests_see_them_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r").to_str().unwrap().to_string();
        let keys: Vec<Key> = (0..6).map(|_| Key::Pack(PackId::generate())).collect();
        let mut reqs = vec![Msg::Open {
            id: 1,
            path,
            create: true,
        }];
        for (i, k) in keys.iter().enumerate() {
            let id = 10 + i as u64;
            reqs.push(Msg::Put {
                id,
                key: k.clone(),
                mode: PutMode::Upload,
            });
            reqs.push(Msg::Data {
                id,
                data: vec![i as u8; 1000 * (i + 1)],
            });
            reqs.push(Msg::Finish { id });
        }
        // Asked right after the last FINISH: it must see every upload done.
        for (i, k) in keys.iter().enumerate() {
            reqs.push(Msg::Size {
                id: 100 + i as u64,
                key: k.clone(),
            });
        }
        let got = session(&reqs);
        let oks: Vec<u64> = got
            .iter()
            .filter_map(|m| match m {
                Msg::Ok { id, .. } if (10..16).contains(id) => Some(*id),
                _ => None,
            })
            .collect();
        let mut sorted = oks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (10..16).collect::<Vec<_>>(), "{got:?}");
        let first_size = got
            .iter()
            .position(|m| matches!(m, Msg::Ok { id, .. } if *id >= 100))
            .unwrap();
        let last_finish = got
            .iter()
            .rposition(|m| matches!(m, Msg::Ok { id, .. } if (10..16).contains(id)))
            .unwrap();
        assert!(
            last_finish < first_size,
            "a SIZE was answered before a FINISH"
        );
        for (i, m) in got
            .iter()
            .filter(|m| matches!(m, Msg::Ok { id, .. } if *id >= 100))
            .enumerate()
        {
            assert_eq!(
                m,
                &Msg::Ok {
                    id: 100 + i as u64,
                    flag: true,
                    n: 1000 * (i as u64 + 1)
                }
            );
        }
        let b = LocalDir::new(&dir.path().join("r"));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                b.read(k, 1 << 20).unwrap().unwrap(),
                vec![i as u8; 1000 * (i + 1)]
            );
        }
    }

    #[test]
    fn restrict_to_resolves_symlinks_and_dotdot_before_deciding() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&ok).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, ok.join("link")).unwrap();
        let restrict = vec![std::fs::canonicalize(&ok).unwrap()];
        let p = |s: &Path| s.to_str().unwrap().to_string();
        assert!(resolve(&p(&ok.join("repo")), &restrict).is_ok());
        assert!(resolve(&p(&ok.join("a/b/new")), &restrict).is_ok());
        for bad in [
            other.join("repo"),
            ok.join("link/repo"),
            ok.join("../other/repo"),
            ok.join("missing/../../other"),
            PathBuf::from("/"),
        ] {
            let e = resolve(&p(&bad), &restrict).unwrap_err();
            assert!(
                e.contains("outside") || e.contains(".."),
                "{} was let through: {e}",
                bad.display()
            );
        }
        // A folder named like the allowed one plus a suffix is not inside it.
        let sibling = PathBuf::from(format!("{}-evil", ok.display()));
        std::fs::create_dir_all(&sibling).unwrap();
        assert!(resolve(&p(&sibling), &restrict).is_err());
        assert!(resolve("", &restrict).is_err());
    }
}
