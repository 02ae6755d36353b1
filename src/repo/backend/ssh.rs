//! [`SshBackend`]: a repository on another host, `ssh://[user@]host[:port]/path`, reached by
//! running `snarf serve` there through the system `ssh` client and speaking the [`wire`]
//! protocol over its pipe.
//!
//! ssh is started with an argv, never a shell string built from input:
//! `SNARF_RSH… -o BatchMode=yes [-p PORT] [-l USER] -- HOST REMOTE_PATH serve --repo=PATH`.
//! `SNARF_RSH` (default `ssh`) is split into words with POSIX shell rules, as `BORG_RSH` is,
//! and never given to a shell here. ssh itself hands the remote command to the far user's
//! shell, so each remote word is shell-quoted (single quotes) and reaches `snarf serve` as
//! inert data, whatever quotes, `;`, `$(…)` or newlines it holds. `BatchMode=yes` makes ssh
//! fail instead of asking for a password, and the error says so.
//!
//! Many requests are in flight at once: every call registers its request id and sends
//! without waiting for earlier answers, a reader thread hands each answer to its caller, and
//! uploads stream their DATA without acks (an error comes back as soon as the far side has
//! one, and at the latest with FINISH). So latency costs one round trip per call that needs
//! an answer, not one per chunk.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::wire::{self, Code, Msg, PutMode, RemoteError, WireError};
use super::{Backend, Created, Finishing, Key, Kind, LockGuard, Upload};
use crate::repo::error::{Error, Fix, Result};

/// Largest listing accepted from the far side.
const MAX_LISTING: u64 = 1 << 30;
/// Lines of ssh's standard error kept for messages.
const STDERR_LINES: usize = 20;
/// How long a closed connection's ssh may take to exit before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Where a repository over ssh is: `ssh://[user@]host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The login name, if given.
    pub user: Option<String>,
    /// The host name or address.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// The repository's path on the far side, as given (absolute).
    pub path: String,
}

impl SshTarget {
    /// Parses `ssh://[user@]host[:port]/path` (`[v6 address]` for IPv6). The path is taken
    /// as it is written, without percent-decoding; user and host may not start with `-`
    /// (they are ssh arguments) and hold only the characters such names have.
    pub fn parse(url: &str) -> Result<SshTarget> {
        let bad = |why: &str| {
            Error::BadArgument(format!(
                "{url:?} is not a repository URL snarf reads: {why}; write ssh://[user@]host[:port]/path"
            ))
        };
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it does not start with ssh://"))?;
        let slash = rest
            .find('/')
            .ok_or_else(|| bad("it has no /path after the host"))?;
        let (auth, path) = rest.split_at(slash);
        let h = SshHost::parse_with(auth, &bad)?;
        if path.len() < 2 || path.contains('\0') {
            return Err(bad("the path is empty or holds a NUL byte"));
        }
        Ok(SshTarget {
            user: h.user,
            host: h.host,
            port: h.port,
            path: path.to_string(),
        })
    }

    /// The host part: `[user@]host[:port]`.
    pub fn ssh_host(&self) -> SshHost {
        SshHost {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The URL, for messages.
    pub fn url(&self) -> String {
        format!("ssh://{}{}", self.ssh_host().spec(), self.path)
    }
}

/// A host reached over ssh, `[user@]host[:port]`: where `snarf backup --host` runs a job,
/// and the host part of an `ssh://` repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// The login name, if given.
    pub user: Option<String>,
    /// The host name or address.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
}

impl SshHost {
    /// Parses `[user@]host[:port]` (`[v6 address]` for IPv6); user and host may not start
    /// with `-` (they are ssh arguments) and hold only the characters such names have.
    pub fn parse(spec: &str) -> Result<SshHost> {
        SshHost::parse_with(spec, &|why: &str| {
            Error::BadArgument(format!(
                "{spec:?} is not a host snarf reaches over ssh: {why}; write [user@]host[:port]"
            ))
        })
    }

    fn parse_with(spec: &str, bad: &dyn Fn(&str) -> Error) -> Result<SshHost> {
        let (user, hostport) = match spec.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, spec),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address lacks its closing ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("junk after the IPv6 address"))?,
                ),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            ),
        };
        let name_ok = |s: &str, extra: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
        };
        if !name_ok(host, ":") {
            return Err(bad(
                "the host is empty, starts with -, or holds characters no host name has",
            ));
        }
        if let Some(u) = user {
            if !name_ok(u, "") {
                return Err(bad(
                    "the user is empty, starts with -, or holds characters no login name has",
                ));
            }
        }
        Ok(SshHost {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        })
    }

    /// `[user@]host[:port]` as it is written (`[v6]` for IPv6), for messages and tables.
    pub fn spec(&self) -> String {
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{user}{host}{port}")
    }
}

/// The far snarf named on this process's command line (`--remote-path`), if any.
static REMOTE_PATH: OnceLock<String> = OnceLock::new();

/// Names the far snarf for every ssh connection of this process (the `--remote-path` flag);
/// it takes precedence over `SNARF_REMOTE_PATH`.
pub fn set_remote_path(path: &str) {
    let _ = REMOTE_PATH.set(path.to_string());
}

/// The far snarf [`set_remote_path`] named, if it did (passed on to the processes this one
/// starts, which read `SNARF_REMOTE_PATH`).
pub fn remote_path() -> Option<&'static str> {
    REMOTE_PATH.get().map(String::as_str)
}

/// How to reach the far side: the ssh command and the far snarf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// The ssh command and its options (`SNARF_RSH`, default `ssh`), one word each.
    pub rsh: Vec<String>,
    /// The far side's snarf (`--remote-path`, `SNARF_REMOTE_PATH`, default `snarf`).
    pub remote_path: String,
}

impl SshOptions {
    /// From `SNARF_RSH` and `SNARF_REMOTE_PATH`, with `remote_path` (or else the one
    /// [`set_remote_path`] set) taking precedence over the latter.
    pub fn from_env(remote_path: Option<&str>) -> Result<SshOptions> {
        let remote_path = remote_path.or(REMOTE_PATH.get().map(String::as_str));
        let rsh = match std::env::var("SNARF_RSH") {
            Ok(s) if !s.trim().is_empty() => split_rsh(&s)?,
            _ => vec!["ssh".to_string()],
        };
        let remote_path = match remote_path {
            Some(p) => p.to_string(),
            None => std::env::var("SNARF_REMOTE_PATH")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "snarf".into()),
        };
        Ok(SshOptions { rsh, remote_path })
    }
}

/// Splits `SNARF_RSH` into words (shell-words rules; no expansion, no shell).
pub fn split_rsh(s: &str) -> Result<Vec<String>> {
    match shlex::split(s) {
        Some(w) if !w.is_empty() => Ok(w),
        _ => Err(Error::BadArgument(format!(
            "SNARF_RSH={s:?} cannot be split into words (an unbalanced quote?); write it as a command line, e.g. SNARF_RSH='ssh -i /root/.ssh/backup_key'"
        ))),
    }
}

/// The argv that reaches `snarf serve` for `t`.
pub fn command_line(t: &SshTarget, o: &SshOptions) -> Result<Vec<String>> {
    let repo = format!("--repo={}", t.path);
    remote_argv(&t.ssh_host(), o, &["serve", &repo])
}

/// The ssh argv that runs the far snarf on `h` with arguments `args`:
/// `RSH… -o BatchMode=yes … [-p PORT] [-l USER] -- HOST 'REMOTE_PATH' 'ARG'…`. Every far
/// word is shell-quoted, since ssh hands them to the far user's shell as one line; a word
/// that cannot be quoted (a NUL byte) is refused.
pub fn remote_argv(h: &SshHost, o: &SshOptions, args: &[&str]) -> Result<Vec<String>> {
    if o.rsh.is_empty() || o.remote_path.is_empty() {
        return Err(Error::BadArgument(
            "the ssh command and the remote snarf path may not be empty".into(),
        ));
    }
    let mut argv = o.rsh.clone();
    // No password prompt ever; a connect that hangs (a host gone from the network) and a
    // connection that goes silent both end within bounded times, so a long-lived mount
    // daemon reports the repository unreachable instead of hanging its readers.
    for opt in [
        "BatchMode=yes",
        "ConnectTimeout=10",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        argv.push("-o".into());
        argv.push(opt.into());
    }
    if let Some(p) = h.port {
        argv.push("-p".into());
        argv.push(p.to_string());
    }
    if let Some(u) = &h.user {
        argv.push("-l".into());
        argv.push(u.clone());
    }
    argv.push("--".into());
    argv.push(h.host.clone());
    for word in std::iter::once(o.remote_path.as_str()).chain(args.iter().copied()) {
        let q = shlex::try_quote(word).map_err(|e| {
            Error::BadArgument(format!("{word:?} cannot be passed to the far side: {e}"))
        })?;
        argv.push(q.into_owned());
    }
    Ok(argv)
}

/// An answer: OK's flag and number with the PART bytes, or the error.
type Reply = Result<(bool, u64, Vec<u8>)>;

/// A caller waiting for its answer.
struct Waiter {
    parts: Vec<u8>,
    limit: u64,
    tx: Sender<Reply>,
}

/// The shared half of a connection: the pipe to write to and the callers waiting.
struct Conn {
    url: String,
    out: Mutex<Option<ChildStdin>>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
    dead: Mutex<Option<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The local ssh process, until it is reaped: by the reader once the pipe ends (so a
    /// long-lived daemon whose connection dropped keeps no zombie), or by the drop.
    child: Mutex<Option<Child>>,
}

impl Conn {
    /// The error of a lost connection.
    fn lost(&self, why: &str) -> Error {
        let said = self.stderr.lock().join(" / ");
        let why = if said.is_empty() {
            why.to_string()
        } else {
            format!("{why} (ssh said: {said})")
        };
        Error::Connection {
            repo: self.url.clone(),
            why,
            fix: "check the network and the far host; the far repository is left consistent (an unfinished backup is abandoned, and the next one sweeps what it left)".into(),
        }
    }

    /// Registers a new request; its answer comes on the receiver.
    fn start(&self, limit: u64) -> Result<(u64, Receiver<Reply>)> {
        if let Some(why) = self.dead.lock().clone() {
            return Err(self.lost(&why));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        self.pending.lock().insert(
            id,
            Waiter {
                parts: Vec::new(),
                limit,
                tx,
            },
        );
        Ok((id, rx))
    }

    /// Writes one frame.
    fn send(&self, msg: &Msg) -> Result<()> {
        let frame = msg.encode();
        let mut out = self.out.lock();
        let res = match out.as_mut() {
            Some(o) => o.write_all(&frame),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        drop(out);
        self.sent(res)
    }

    /// Writes `data` as DATA frames of upload `id`, from where the bytes lie.
    fn send_data(&self, id: u64, data: &[u8]) -> Result<()> {
        let mut out = self.out.lock();
        let res = match out.as_mut() {
            Some(o) => data
                .chunks(wire::PIECE)
                .try_for_each(|piece| wire::send_piece(o, false, id, piece))
                .map_err(|e| match e {
                    WireError::Io(e) => e,
                    other => std::io::Error::other(other),
                }),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        drop(out);
        self.sent(res)
    }

    /// The error of a failed write to ssh.
    fn sent(&self, res: std::io::Result<()>) -> Result<()> {
        res.map_err(|e| {
            let why = self
                .dead
                .lock()
                .clone()
                .unwrap_or_else(|| format!("writing to ssh failed: {e}"));
            self.lost(&why)
        })
    }

    /// Waits for the answer on `rx`.
    fn wait(&self, rx: Receiver<Reply>) -> Reply {
        match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(self.lost(
                self.dead
                    .lock()
                    .as_deref()
                    .unwrap_or("the connection ended"),
            )),
        }
    }

    /// Sends a request and waits for its answer (up to `limit` bytes of PART).
    fn call(&self, limit: u64, build: impl FnOnce(u64) -> Msg) -> Reply {
        let (id, rx) = self.start(limit)?;
        if let Err(e) = self.send(&build(id)) {
            self.pending.lock().remove(&id);
            return Err(e);
        }
        self.wait(rx)
    }

    /// Sends a request whose answer nobody waits for.
    fn post(&self, build: impl FnOnce(u64) -> Msg) {
        if let Ok((id, rx)) = self.start(0) {
            drop(rx);
            let _ = self.send(&build(id));
        }
    }

    /// Marks the connection dead and fails every waiting caller.
    fn die(&self, why: String) {
        log::debug!("{}: {why}", self.url);
        self.dead.lock().get_or_insert(why.clone());
        // Closing our end makes ssh, and so the far side, end too.
        self.out.lock().take();
        let waiters: Vec<Waiter> = self.pending.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.tx.send(Err(self.lost(&why)));
        }
    }

    /// Reaps the ssh process (killing it if it does not exit within [`EXIT_WAIT`] of its
    /// pipe closing); a no-op once done.
    fn reap(&self) {
        let child = self.child.lock().take();
        if let Some(mut child) = child {
            let _ = wait_briefly(&mut child);
        }
    }

    /// Hands each answer to its caller until the pipe ends, then reaps ssh.
    fn read_loop(&self, input: impl std::io::Read) {
        self.read_frames(input);
        self.reap();
    }

    fn read_frames(&self, mut input: impl std::io::Read) {
        loop {
            let why = match wire::recv(&mut input) {
                Ok(Some(Msg::Part { id, data })) => {
                    let mut p = self.pending.lock();
                    match p.get_mut(&id) {
                        Some(w) if w.parts.len() as u64 + data.len() as u64 <= w.limit => {
                            w.parts.extend_from_slice(&data);
                            continue;
                        }
                        Some(_) => format!(
                            "the far side sent more bytes for request {id} than were asked for"
                        ),
                        None => format!("the far side answered request {id}, which nobody asked"),
                    }
                }
                Ok(Some(Msg::Ok { id, flag, n })) => match self.pending.lock().remove(&id) {
                    Some(w) => {
                        let _ = w.tx.send(Ok((flag, n, w.parts)));
                        continue;
                    }
                    None => format!("the far side answered request {id}, which nobody asked"),
                },
                Ok(Some(Msg::Err { id, error })) => match self.pending.lock().remove(&id) {
                    Some(w) => {
                        let _ = w.tx.send(Err(from_remote(&self.url, error)));
                        continue;
                    }
                    None => format!("the far side answered request {id}, which nobody asked"),
                },
                Ok(Some(Msg::Fatal { message })) => {
                    format!("the far snarf serve ended the connection: {message}")
                }
                Ok(Some(other)) => format!("the far side sent {other:?}, which is no answer"),
                Ok(None) => "the connection ended".into(),
                Err(e) => format!("the connection failed: {}", crate::chain::Chain::new(&e)),
            };
            self.die(why);
            return;
        }
    }
}

/// The repository error an ERR frame stands for.
fn from_remote(url: &str, e: RemoteError) -> Error {
    let far = |kind: std::io::ErrorKind, errno: u64| {
        let source = if errno > 0 && errno < i32::MAX as u64 {
            std::io::Error::from_raw_os_error(errno as i32)
        } else {
            std::io::Error::new(kind, "reported by the far snarf serve")
        };
        Error::io(format!("{url}: {}", e.message), source)
    };
    match e.code {
        Code::NotFound => far(std::io::ErrorKind::NotFound, 0),
        Code::Exists => Error::NotEmpty { path: url.into() },
        Code::Io => far(std::io::ErrorKind::Other, e.n),
        Code::Locked => Error::Locked {
            path: url.into(),
            holder: e.detail,
        },
        Code::LockTimeout => Error::LockTimeout {
            path: url.into(),
            holder: e.detail,
            secs: e.n as f64 / 1000.0,
        },
        Code::Refused => Error::Refused {
            repo: url.into(),
            why: e.message,
        },
        Code::Damaged => Error::Damaged {
            repo: url.into(),
            path: format!("{url} ({})", e.detail).into(),
            why: e.message,
            fix: match e.n {
                0 => Fix::RepairIndex,
                1 => Fix::Check,
                _ => Fix::Copy,
            },
        },
        Code::BadArgument => Error::BadArgument(e.message),
        Code::NotARepo => Error::NotARepo { path: url.into() },
        Code::Protocol => Error::Connection {
            repo: url.into(),
            why: format!(
                "the far side says this client broke the protocol: {}",
                e.message
            ),
            fix: "install the same snarf release on both hosts".into(),
        },
    }
}

/// A repository on another host, through `snarf serve` over ssh (see the module docs).
pub struct SshBackend {
    conn: Arc<Conn>,
    /// The ssh pid, kept for the registry and tests after the process is reaped.
    pid: u32,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SshBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshBackend({})", self.conn.url)
    }
}

impl SshBackend {
    /// Starts ssh and `snarf serve` for `t` and opens the repository (creating the folder
    /// layout of a new one if `create`).
    pub fn connect(t: &SshTarget, o: &SshOptions, create: bool) -> Result<SshBackend> {
        let url = t.url();
        let argv = command_line(t, o)?;
        log::debug!("{url}: running {argv:?}");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Connection {
                repo: url.clone(),
                why: format!("cannot run {:?}: {e}", argv[0]),
                fix: "install the OpenSSH client, or name the ssh command in SNARF_RSH".into(),
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Connection {
                repo: url,
                why: "ssh was started without its pipes".into(),
                fix: "report this as a bug".into(),
            });
        };
        wire::widen_pipe(&stdin);
        wire::widen_pipe(&stdout);
        let tail = Arc::new(Mutex::new(Vec::new()));
        let err_thread = {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name("snarf-ssh-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        log::debug!("ssh: {line}");
                        let mut t = tail.lock();
                        if t.len() >= STDERR_LINES {
                            t.remove(0);
                        }
                        t.push(line);
                    }
                })
                .ok()
        };
        let mut stdout = BufReader::with_capacity(wire::MAX_FRAME, stdout);
        let hello = wire::recv(&mut stdout);
        let refused = |child: &mut Child, got: &str| {
            let status = wait_briefly(child);
            if let Some(h) = &err_thread {
                let until = Instant::now() + Duration::from_secs(1);
                while !h.is_finished() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let said = tail.lock().join(" / ");
            let (why, fix) = classify(t, o, status, &said, got);
            Error::Connection {
                repo: url.clone(),
                why,
                fix,
            }
        };
        match hello {
            Ok(Some(Msg::Hello { version, .. })) if version == wire::VERSION => {}
            Ok(Some(Msg::Hello { version, .. })) => {
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Connection {
                    repo: url,
                    why: format!(
                        "the far snarf speaks protocol version {version}, this one {}",
                        wire::VERSION
                    ),
                    fix: "install the same snarf release on both hosts".into(),
                });
            }
            Ok(None) => {
                drop(stdin);
                return Err(refused(&mut child, ""));
            }
            Ok(Some(other)) => {
                drop(stdin);
                let _ = child.kill();
                return Err(refused(&mut child, &format!("{other:?}")));
            }
            Err(e) => {
                drop(stdin);
                let _ = child.kill();
                return Err(refused(
                    &mut child,
                    &crate::chain::Chain::new(&e).to_string(),
                ));
            }
        }
        let conn = Arc::new(Conn {
            url,
            out: Mutex::new(Some(stdin)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            dead: Mutex::new(None),
            stderr: tail,
            child: Mutex::new(None),
        });
        let pid = child.id();
        *conn.child.lock() = Some(child);
        let reader = {
            let conn = conn.clone();
            std::thread::Builder::new()
                .name("snarf-ssh-reader".into())
                .spawn(move || conn.read_loop(stdout))
        };
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                conn.out.lock().take();
                conn.reap();
                return Err(Error::io("starting the ssh reader thread", e));
            }
        };
        let b = SshBackend {
            conn,
            pid,
            reader: Some(reader),
        };
        let path = t.path.clone();
        b.conn.call(0, |id| Msg::Open { id, path, create })?;
        Ok(b)
    }

    /// The pid of the local ssh process (for the process registry and for tests).
    pub fn ssh_pid(&self) -> u32 {
        self.pid
    }

    /// Streams `data` as a PUT of `key` and waits for its answer.
    fn put_whole(&self, key: &Key, mode: PutMode, data: &[u8]) -> Result<bool> {
        let c = &self.conn;
        let (id, rx) = c.start(0)?;
        let sent = (|| {
            c.send(&Msg::Put {
                id,
                key: key.clone(),
                mode,
            })?;
            c.send_data(id, data)?;
            c.send(&Msg::Finish { id })
        })();
        if let Err(e) = sent {
            c.pending.lock().remove(&id);
            return Err(e);
        }
        c.wait(rx).map(|(flag, _, _)| flag)
    }
}

/// Waits a little for `child` to exit (it does once its pipe closed), killing it if not.
fn wait_briefly(child: &mut Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + EXIT_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// Why ssh gave no greeting, and what to do about it.
fn classify(
    t: &SshTarget,
    o: &SshOptions,
    status: Option<std::process::ExitStatus>,
    said: &str,
    got: &str,
) -> (String, String) {
    let host = &t.host;
    let code = status.and_then(|s| s.code());
    let rsh = format!("SNARF_RSH (now {:?})", o.rsh.join(" "));
    let lower = said.to_ascii_lowercase();
    if !got.is_empty() {
        return (
            format!("what came back from {host} is not snarf serve's greeting ({got})"),
            "a login script on the far side that prints to standard output breaks the pipe: make it quiet for non-interactive shells".into(),
        );
    }
    if lower.contains("permission denied")
        || lower.contains("password")
        || lower.contains("no more authentication methods")
        || lower.contains("too many authentication failures")
    {
        return (
            format!("ssh could not log in to {host} without a password or passphrase (snarf runs ssh with BatchMode=yes, so it never asks for one): {said}"),
            format!("install a key for it (ssh-copy-id {}{host}) or name one in {rsh}, e.g. SNARF_RSH='ssh -i /root/.ssh/backup_key'", t.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default()),
        );
    }
    if lower.contains("host key verification failed") {
        return (
            format!("ssh does not know {host}'s host key: {said}"),
            format!("connect once with `ssh {host}` to check and record its key, or name a known_hosts file in {rsh}"),
        );
    }
    if code == Some(127) || lower.contains("not found") || lower.contains("no such file") {
        return (
            format!("the far side has no snarf at {:?}: {said}", o.remote_path),
            "install snarf on the far host, or name its path with --remote-path or SNARF_REMOTE_PATH".into(),
        );
    }
    if code == Some(255) {
        return (
            format!("ssh could not connect to {host}: {said}"),
            format!("check the host name, the port and the network; the ssh command and its options come from {rsh}"),
        );
    }
    (
        format!(
            "the far snarf serve ended before its greeting (exit status {}): {said}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".into())
        ),
        "check that the far snarf has `snarf serve` (the same release as this one)".into(),
    )
}

impl Drop for SshBackend {
    fn drop(&mut self) {
        // Closing stdin ends `snarf serve` (releasing its lock), then ssh.
        self.conn.out.lock().take();
        // The reader reaps ssh when its pipe ends; if ssh hangs (a dead network), this
        // kills it after EXIT_WAIT, which ends the reader's read.
        self.conn.reap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The repository lock, held by the far `snarf serve` until this is dropped.
struct SshLock {
    conn: Arc<Conn>,
    id: u64,
}

impl std::fmt::Debug for SshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshLock({}, {})", self.conn.url, self.id)
    }
}

impl LockGuard for SshLock {}

impl Drop for SshLock {
    fn drop(&mut self) {
        let lock = self.id;
        self.conn.post(|id| Msg::Unlock { id, lock });
    }
}

/// An upload streamed to the far side.
struct SshUpload {
    conn: Arc<Conn>,
    id: u64,
    rx: Option<Receiver<Reply>>,
    buf: Vec<u8>,
    len: u64,
    /// FINISH was sent.
    done: bool,
}

impl SshUpload {
    /// Fails if the far side has already answered (only an error comes before FINISH).
    fn early_answer(&mut self) -> Result<()> {
        let Some(rx) = self.rx.as_ref() else {
            return Err(Error::BadArgument(format!(
                "upload {} to {} is finished",
                self.id, self.conn.url
            )));
        };
        match rx.try_recv() {
            Ok(r) => {
                self.rx = None;
                match r {
                    Err(e) => Err(e),
                    Ok(_) => Err(self.conn.lost("the far side finished an upload early")),
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.rx = None;
                Err(self.conn.lost("the connection ended"))
            }
        }
    }

    fn flush_piece(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.conn.send_data(self.id, &self.buf);
        self.buf.clear();
        res
    }
}

/// Writes of at least this many bytes go into the pipe as they are, not through the
/// upload's buffer (which gathers small ones into pieces).
const DIRECT: usize = 64 << 10;

impl Upload for SshUpload {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.early_answer()?;
        if data.len() >= DIRECT {
            self.flush_piece()?;
            self.len += data.len() as u64;
            return self.conn.send_data(self.id, data);
        }
        while !data.is_empty() {
            let room = wire::PIECE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.len += n as u64;
            if self.buf.len() == wire::PIECE {
                self.flush_piece()?;
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.finish_later()?.wait()
    }

    fn finish_later(mut self: Box<Self>) -> Result<Box<dyn Finishing>> {
        self.early_answer()?;
        self.flush_piece()?;
        self.done = true;
        self.conn.send(&Msg::Finish { id: self.id })?;
        Ok(Box::new(SshFinishing {
            conn: self.conn.clone(),
            rx: self.rx.take(),
            got: None,
        }))
    }
}

/// The far side's answer to an upload's FINISH, awaited: it comes once the object is
/// fsynced and renamed there.
struct SshFinishing {
    conn: Arc<Conn>,
    rx: Option<Receiver<Reply>>,
    /// The answer, once [`Finishing::ready`] saw it.
    got: Option<Reply>,
}

impl Finishing for SshFinishing {
    fn ready(&mut self) -> bool {
        if self.got.is_some() {
            return true;
        }
        let Some(rx) = self.rx.as_ref() else {
            return true;
        };
        match rx.try_recv() {
            Ok(r) => self.got = Some(r),
            Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.got = Some(Err(self.conn.lost(
                    self.conn
                        .dead
                        .lock()
                        .as_deref()
                        .unwrap_or("the connection ended"),
                )))
            }
        }
        self.rx = None;
        true
    }

    fn wait(mut self: Box<Self>) -> Result<()> {
        if let Some(r) = self.got.take() {
            return r.map(|_| ());
        }
        match self.rx.take() {
            Some(rx) => self.conn.wait(rx).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for SshUpload {
    fn drop(&mut self) {
        if !self.done {
            // Unfinished (or failed): the far side removes its part file and forgets the
            // upload. The answer is not awaited.
            let _ = self.conn.send(&Msg::Abort { id: self.id });
        }
    }
}

impl Backend for SshBackend {
    fn location(&self) -> String {
        self.conn.url.clone()
    }

    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
        let key = key.clone();
        let (found, n, data) = self.conn.call(cap, |id| Msg::Read { id, key, cap })?;
        if !found {
            return Ok(None);
        }
        if n != data.len() as u64 {
            return Err(self.conn.lost("the far side sent a short object"));
        }
        Ok(Some(data))
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = key.clone();
        let (_, _, data) = self.conn.call(len, |id| Msg::Range {
            id,
            key,
            offset,
            len,
        })?;
        if data.len() as u64 != len {
            return Err(self.conn.lost("the far side sent a short range"));
        }
        Ok(data)
    }

    fn size(&self, key: &Key) -> Result<Option<u64>> {
        let key = key.clone();
        let (found, n, _) = self.conn.call(0, |id| Msg::Size { id, key })?;
        Ok(found.then_some(n))
    }

    fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
        self.put_whole(key, PutMode::Replace, data).map(|_| ())
    }

    fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
        Ok(if self.put_whole(key, PutMode::CreateOnly, data)? {
            Created::Created
        } else {
            Created::AlreadyExists
        })
    }

    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
        let c = &self.conn;
        let (id, rx) = c.start(0)?;
        if let Err(e) = c.send(&Msg::Put {
            id,
            key: key.clone(),
            mode: PutMode::Upload,
        }) {
            c.pending.lock().remove(&id);
            return Err(e);
        }
        Ok(Box::new(SshUpload {
            conn: c.clone(),
            id,
            rx: Some(rx),
            buf: Vec::with_capacity(wire::PIECE),
            len: 0,
            done: false,
        }))
    }

    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
        let (_, _, data) = self.conn.call(MAX_LISTING, |id| Msg::List { id, kind })?;
        wire::decode_listing(kind, &data).map_err(|e: WireError| {
            self.conn
                .lost(&format!("the far side sent a bad listing: {e}"))
        })
    }

    fn delete(&self, key: &Key) -> Result<bool> {
        let key = key.clone();
        let (existed, _, _) = self.conn.call(0, |id| Msg::Delete { id, key })?;
        Ok(existed)
    }

    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
        let holder = holder.to_string();
        let wait_ms = wait.map_or(wire::NO_WAIT, |w| {
            u64::try_from(w.as_millis()).unwrap_or(wire::NO_WAIT - 1)
        });
        let (_, lock, _) = self.conn.call(0, |id| Msg::Lock {
            id,
            holder,
            wait_ms,
        })?;
        Ok(Box::new(SshLock {
            conn: self.conn.clone(),
            id: lock,
        }))
    }

    fn sweep_leftovers(&self) -> Result<u64> {
        let (_, n, _) = self.conn.call(0, |id| Msg::Sweep { id })?;
        Ok(n)
    }

    fn connection_lost(&self) -> Option<Error> {
        let why = self.conn.dead.lock().clone()?;
        Some(self.conn.lost(&why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_hostile_hosts_and_users_are_refused() {
        let t = SshTarget::parse("ssh://bk@vault.example:2222/srv/repo").unwrap();
        assert_eq!(t.user.as_deref(), Some("bk"));
        assert_eq!(t.host, "vault.example");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.path, "/srv/repo");
        assert_eq!(t.url(), "ssh://bk@vault.example:2222/srv/repo");
        let t = SshTarget::parse("ssh://[::1]:22/r").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(22)));
        assert_eq!(t.url(), "ssh://[::1]:22/r");
        let t = SshTarget::parse("ssh://h/a b;c'd\"$(x)\n-e").unwrap();
        assert_eq!(t.path, "/a b;c'd\"$(x)\n-e");
        for bad in [
            "ssh://-oProxyCommand=touch%20x/r",
            "ssh://-oProxyCommand=x@h/r",
            "ssh://h;id/r",
            "ssh://h:0/r",
            "ssh://h:99999/r",
            "ssh://h:x/r",
            "ssh://h",
            "ssh://h/",
            "ssh:///r",
            "ssh://a b/r",
            "ssh://u@/r",
            "ssh://h/r\0x",
            "sftp://h/r",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_specs_parse_and_hostile_ones_are_refused() {
        let h = SshHost::parse("bk@vault.example:2222").unwrap();
        assert_eq!(
            (h.user.as_deref(), h.host.as_str(), h.port),
            (Some("bk"), "vault.example", Some(2222))
        );
        assert_eq!(h.spec(), "bk@vault.example:2222");
        let h = SshHost::parse("[::1]").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.spec()),
            ("::1", None, "[::1]".into())
        );
        assert_eq!(SshHost::parse("vault").unwrap().spec(), "vault");
        for bad in [
            "-oProxyCommand=touch /tmp/x",
            "-oProxyCommand=x@h",
            "u@-h",
            "h;touch x",
            "h$(id)",
            "h'q",
            "h\ntouch",
            "h:0",
            "h:x",
            "",
            "u@",
            "a b",
            "h/path",
        ] {
            let e = SshHost::parse(bad).unwrap_err().to_string();
            assert!(e.contains("[user@]host[:port]"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_argv_is_built_with_the_remote_words_quoted_and_rsh_split_without_a_shell() {
        let t = SshTarget::parse("ssh://bk@h:2222/srv/a b;touch /tmp/x'$(id)\n").unwrap();
        let o = SshOptions {
            rsh: split_rsh("ssh -F '/etc/snarf/ssh config' -i $HOME/k").unwrap(),
            remote_path: "/opt/snarf bin/snarf".into(),
        };
        assert_eq!(o.rsh[2], "/etc/snarf/ssh config");
        assert_eq!(
            o.rsh[4], "$HOME/k",
            "no expansion: SNARF_RSH is never given to a shell"
        );
        let argv = command_line(&t, &o).unwrap();
        let dash = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[dash + 1], "h");
        assert!(argv[..dash].windows(2).any(|w| w == ["-p", "2222"]));
        assert!(argv[..dash].windows(2).any(|w| w == ["-l", "bk"]));
        assert!(argv[..dash]
            .windows(2)
            .any(|w| w == ["-o", "BatchMode=yes"]));
        // What the far shell makes of the remote words is exactly the words.
        let remote = argv[dash + 2..].join(" ");
        assert_eq!(
            shlex::split(&remote).unwrap(),
            vec![
                "/opt/snarf bin/snarf".to_string(),
                "serve".into(),
                format!("--repo={}", t.path)
            ]
        );
        assert!(split_rsh("ssh -o 'unbalanced").is_err());
        assert!(split_rsh("").is_err());
    }
}
