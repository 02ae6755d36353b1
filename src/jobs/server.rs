//! The daemon's job server: a Unix socket `STORE/run/daemon.sock` (mode 0600; the run folder
//! is 0700) on which backup jobs, separate `snarf backup` processes, ask for their
//! snapshot's snarfs. One thread accepts; each connection gets a thread that runs the
//! [`conversation`](super::conversation) with it. When a connection ends, however it ends,
//! its feed is dropped; what it acknowledged stays readable through the [`Released`]
//! tables. A janitor drops those tables (and their repository pins) once their snapshot is
//! released. The server also keeps the job listing: every connected job, and the last few
//! that ended, with their progress.
//!
//! A peer is never trusted: at most [`MAX_CONNECTIONS`] are served at once (the rest are
//! told so and closed at once, without a thread), a connection must say hello within
//! [`HELLO_DEADLINE`](super::conversation::HELLO_DEADLINE) and send each frame whole within
//! [`FRAME_DEADLINE`](super::proto::FRAME_DEADLINE), frames are bounded by what their message
//! may carry, and a panic while serving one connection ends that connection only.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conversation::{serve_stream, End, Event, Peer};
use super::released::Released;
use super::{Error, Result};
use crate::snapshot::Engine;

/// Name of the socket in the store's run folder.
pub const SOCKET: &str = "daemon.sock";
/// Ended jobs kept in the listing.
const HISTORY: usize = 32;
/// Most job connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How often a waiting connection looks at its deadlines (the socket's read timeout).
const POLL: Duration = Duration::from_secs(1);

/// Longest socket path bind(2) and connect(2) take (sun_path is 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// A path under which the socket `name` in `dir` can be bound or reached: the real one when
/// it fits in a socket address, else the same file through `/proc/self/fd/N` of the open
/// folder (kept open by the returned `File` for as long as the path is used).
pub fn addressable(dir: &Path, name: &str) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    let real = dir.join(name);
    if real.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((real, None));
    }
    let folder = std::fs::File::open(dir)?;
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&folder);
    Ok((
        PathBuf::from(format!("/proc/self/fd/{fd}/{name}")),
        Some(folder),
    ))
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobPhase {
    /// Connected, not planned yet.
    Starting,
    /// Transferring.
    Running,
    /// Committing its backup.
    Committing,
    /// Committed this backup.
    Done(String),
    /// Ended without committing, for this reason.
    Failed(String),
    /// Cancelled through the daemon, for this reason.
    Cancelled(String),
}

impl JobPhase {
    /// Whether the job has ended.
    pub fn ended(&self) -> bool {
        matches!(
            self,
            JobPhase::Done(_) | JobPhase::Failed(_) | JobPhase::Cancelled(_)
        )
    }
}

/// One job in the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// Its id in the listing (`J` and a number), as `cancel` takes it.
    pub id: String,
    /// What it called itself.
    pub job: String,
    /// Its pid (0 until it said hello).
    pub pid: u32,
    /// The snapshot.
    pub snapshot: String,
    /// The repository, once planned.
    pub repo: String,
    /// Where it is.
    pub phase: JobPhase,
    /// Bytes of snarfs sent to it.
    pub sent_bytes: u64,
    /// Bytes of snarfs to send, once planned.
    pub total_bytes: Option<u64>,
    /// Start, seconds since the Unix epoch.
    pub started: u64,
    /// Average send rate while it ran, bytes per second.
    pub rate: Option<u64>,
}

struct Tracked {
    status: JobStatus,
    since: Instant,
    /// Set by `cancel`: the reason given to the job at its next request.
    cancel: Option<String>,
    ended_at: Option<Instant>,
}

struct Shared {
    engine: Arc<Engine>,
    released: Arc<Released>,
    stopping: AtomicBool,
    streams: Mutex<HashMap<u64, UnixStream>>,
    jobs: Mutex<BTreeMap<u64, Tracked>>,
    next_conn: AtomicU64,
    janitor_wake: (Mutex<bool>, Condvar),
    default_repo: Mutex<Option<PathBuf>>,
    /// Connections being served now.
    connections: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn update(&self, conn: u64, f: impl FnOnce(&mut Tracked)) {
        if let Some(t) = self.jobs.lock().get_mut(&conn) {
            f(t);
        }
    }

    /// Records a job's end: `phase` unless its events already ended it (a job that
    /// committed is `Done` whatever its connection did afterwards), and logs the phase kept.
    fn end(&self, conn: u64, phase: JobPhase) {
        let mut jobs = self.jobs.lock();
        if let Some(t) = jobs.get_mut(&conn) {
            if !t.status.phase.ended() {
                t.status.phase = phase;
            }
            t.ended_at = Some(Instant::now());
            log::info!("backup job connection {conn} ended: {:?}", t.status.phase);
        }
        let mut ended: Vec<u64> = jobs
            .iter()
            .filter(|(_, t)| t.ended_at.is_some())
            .map(|(k, _)| *k)
            .collect();
        while ended.len() > HISTORY {
            jobs.remove(&ended.remove(0));
        }
    }
}

/// The running server; stop it with [`JobServer::stop`] (or drop it).
pub struct JobServer {
    shared: Arc<Shared>,
    path: PathBuf,
    accept: Option<JoinHandle<()>>,
    janitor: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for JobServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobServer")
            .field("socket", &self.path)
            .finish_non_exhaustive()
    }
}

impl JobServer {
    /// Starts serving jobs of `engine`'s store on `run_dir/daemon.sock`, replacing a stale
    /// socket a crashed daemon left (the store lock proves no other daemon serves it).
    pub fn start(engine: Arc<Engine>, run_dir: &Path) -> Result<JobServer> {
        let path = run_dir.join(SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed a stale job socket {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
        let listener = addressable(run_dir, SOCKET)
            .and_then(|(addr, _dir)| UnixListener::bind(addr))
            .map_err(|e| Error::io(format!("creating the job socket {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
        let released = Arc::new(Released::open(
            run_dir,
            &engine.store().store_id(),
            &engine,
        )?);
        let shared = Arc::new(Shared {
            engine,
            released,
            stopping: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            janitor_wake: (Mutex::new(false), Condvar::new()),
            default_repo: Mutex::new(None),
            connections: std::sync::atomic::AtomicUsize::new(0),
        });
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let shared = shared.clone();
            let workers = workers.clone();
            std::thread::Builder::new()
                .name("snarf-jobs-accept".into())
                .spawn(move || accept_loop(listener, shared, workers))
                .map_err(|e| Error::io("starting the job server thread", e))?
        };
        let janitor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("snarf-jobs-janitor".into())
                .spawn(move || janitor_loop(shared))
                .map_err(|e| Error::io("starting the job server thread", e))?
        };
        log::info!("serving backup jobs on {}", path.display());
        Ok(JobServer {
            shared,
            path,
            accept: Some(accept),
            janitor: Some(janitor),
            workers,
        })
    }

    /// Tells jobs that name no repository to use this one (the mount's `--repo`).
    pub fn set_default_repo(&self, repo: Option<PathBuf>) {
        *self.shared.default_repo.lock() = repo;
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// The released-snarf tables (for reads of snapshots after acknowledgements).
    pub fn released(&self) -> &Arc<Released> {
        &self.shared.released
    }

    /// Jobs connected now, and the last few that ended, oldest first.
    pub fn jobs(&self) -> Vec<JobStatus> {
        self.shared
            .jobs
            .lock()
            .values()
            .map(|t| {
                let mut s = t.status.clone();
                let secs = t
                    .ended_at
                    .unwrap_or_else(Instant::now)
                    .duration_since(t.since);
                if s.sent_bytes > 0 && secs > Duration::from_millis(10) {
                    s.rate = Some((s.sent_bytes as f64 / secs.as_secs_f64()) as u64);
                }
                s
            })
            .collect()
    }

    /// Jobs connected and not ended.
    pub fn running(&self) -> usize {
        self.shared
            .jobs
            .lock()
            .values()
            .filter(|t| !t.status.phase.ended())
            .count()
    }

    /// Cancels a running job by its id (`J3`) or pid: it is refused at its next request and
    /// commits nothing. A job already committing is not stopped (finishing goes forward).
    pub fn cancel(&self, id: &str, reason: &str) -> Result<String> {
        let mut jobs = self.shared.jobs.lock();
        let found = jobs
            .values_mut()
            .find(|t| t.status.id.eq_ignore_ascii_case(id) || t.status.pid.to_string() == id);
        match found {
            None => Err(Error::NoSuchJob(id.to_string())),
            Some(t) if t.status.phase.ended() => Err(Error::JobEnded(t.status.id.clone())),
            Some(t) if t.status.phase == JobPhase::Committing => {
                Err(Error::Committing(t.status.id.clone()))
            }
            Some(t) => {
                t.cancel = Some(reason.to_string());
                Ok(format!("cancelling job {}\n", t.status.id))
            }
        }
    }

    /// Records a job that ended before it connected (a spawned `snarf backup` that failed
    /// at once), or fills in the reason of one that ended, from its process.
    pub fn note_exit(&self, pid: u32, snapshot: &str, failure: Option<String>) {
        let mut jobs = self.shared.jobs.lock();
        if let Some(t) = jobs.values_mut().find(|t| t.status.pid == pid) {
            if let (Some(reason), JobPhase::Failed(_)) = (&failure, &t.status.phase) {
                t.status.phase = JobPhase::Failed(reason.clone());
            }
            return;
        }
        let Some(reason) = failure else { return };
        drop(jobs);
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        self.shared.jobs.lock().insert(
            conn,
            Tracked {
                status: JobStatus {
                    id: format!("J{conn}"),
                    job: format!("backup {snapshot}"),
                    pid,
                    snapshot: snapshot.to_string(),
                    repo: String::new(),
                    phase: JobPhase::Failed(reason),
                    sent_bytes: 0,
                    total_bytes: None,
                    started: crate::sys::clock::now_secs(),
                    rate: None,
                },
                since: Instant::now(),
                cancel: None,
                ended_at: Some(Instant::now()),
            },
        );
        self.shared.end(conn, JobPhase::Failed(String::new()));
    }

    /// Drops released-snarf tables of snapshots released since (the janitor does this every
    /// second; this does it now).
    pub fn sweep(&self) {
        self.shared.released.sweep();
    }

    /// Stops accepting, cuts every job's connection (those jobs fail and commit nothing),
    /// waits for the threads, and removes the socket, the tables and their pins.
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the accept loop with a connection of our own.
        if let Some(dir) = self.path.parent() {
            let _ = addressable(dir, SOCKET).and_then(|(addr, _dir)| UnixStream::connect(addr));
        }
        for s in self.shared.streams.lock().values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        {
            let (m, c) = &self.shared.janitor_wake;
            *m.lock() = true;
            c.notify_all();
        }
        for h in [self.accept.take(), self.janitor.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
        let workers: Vec<JoinHandle<()>> = self.workers.lock().drain(..).collect();
        for h in workers {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
        self.shared.released.clear();
    }
}

impl Drop for JobServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accepting a job connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.connections.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            refuse(stream);
            continue;
        }
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(copy) = stream.try_clone() else {
            continue;
        };
        shared.streams.lock().insert(conn, copy);
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let s2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snarf-job-{conn}"))
            .spawn(move || {
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve(&s2, conn, stream)
                }));
                if let Err(p) = served {
                    let why = crate::chain::panic_message(p.as_ref());
                    log::error!("serving backup job connection {conn} panicked: {why}; that connection is closed");
                    s2.end(conn, JobPhase::Failed(format!("the daemon failed serving it: {why}")));
                }
                s2.streams.lock().remove(&conn);
                s2.connections.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(h) => {
                let mut w = workers.lock();
                w.retain(|h| !h.is_finished());
                w.push(h);
            }
            Err(e) => {
                log::warn!("cannot start a thread for a backup job: {e}");
                shared.streams.lock().remove(&conn);
                shared.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Tells a connection over the limit why it is not served, without blocking on it.
fn refuse(stream: UnixStream) {
    log::warn!("refused a backup job connection: {MAX_CONNECTIONS} are connected already");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let mut w = &stream;
    let _ = super::proto::write_frame(
        &mut w,
        &super::proto::Msg::Error {
            message: format!(
                "the mount serves at most {MAX_CONNECTIONS} backup jobs at once; try again when one has ended"
            ),
        },
        &[],
    );
}

/// The process at the other end of a local socket, by pid and start time, so whether it is
/// still alive can be asked later (pid reuse is told apart by the start time).
fn peer_of(stream: &UnixStream) -> Option<(u32, u64)> {
    let cred = rustix::net::sockopt::socket_peercred(stream).ok()?;
    let pid = u32::try_from(cred.pid.as_raw_pid()).ok()?;
    let stat = crate::pids::procfs::read_stat(pid).ok()??;
    Some((pid, stat.start_time))
}

fn janitor_loop(shared: Arc<Shared>) {
    let (m, c) = &shared.janitor_wake;
    let mut woken = m.lock();
    while !*woken {
        c.wait_for(&mut woken, Duration::from_secs(1));
        let n = shared.released.sweep();
        if n > 0 {
            log::info!("dropped the released-snarf tables of {n} released snapshot(s)");
        }
    }
}

/// Serves one connection until it ends, keeping its line of the listing.
fn serve(shared: &Shared, conn: u64, stream: UnixStream) {
    shared.jobs.lock().insert(
        conn,
        Tracked {
            status: JobStatus {
                id: format!("J{conn}"),
                job: String::new(),
                pid: 0,
                snapshot: String::new(),
                repo: String::new(),
                phase: JobPhase::Starting,
                sent_bytes: 0,
                total_bytes: None,
                started: crate::sys::clock::now_secs(),
                rate: None,
            },
            since: Instant::now(),
            cancel: None,
            ended_at: None,
        },
    );
    // Whether the job's process still runs is asked before its acknowledgements free
    // anything; a peer whose process cannot be identified has none of them trusted.
    let peer = Peer {
        alive: Some(match peer_of(&stream) {
            Some((pid, start)) => Arc::new(move || {
                matches!(crate::pids::procfs::read_stat(pid),
                    Ok(Some(s)) if !s.exited() && s.start_time == start)
            }),
            None => Arc::new(|| false),
        }),
    };
    // Answers are written only to a job waiting for one; a peer that stops reading is cut
    // off instead of holding this thread forever.
    let timeouts = stream
        .set_read_timeout(Some(POLL))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(60))));
    let result = timeouts.and_then(|()| stream.try_clone()).and_then(|r| {
        let mut reader = BufReader::with_capacity(1 << 16, r);
        let mut writer = BufWriter::with_capacity(1 << 20, stream);
        let mut events = |e: Event<'_>| {
            shared.update(conn, |t| match e {
                Event::Hello { job, pid } => {
                    t.status.job = job.to_string();
                    t.status.pid = pid;
                }
                Event::Snapshot(s) => t.status.snapshot = s.to_string(),
                Event::Planned { repo, total_bytes } => {
                    t.status.repo = repo.display().to_string();
                    t.status.total_bytes = Some(total_bytes);
                    t.status.phase = JobPhase::Running;
                }
                Event::Sent(n) => t.status.sent_bytes += n,
                Event::Committing => t.status.phase = JobPhase::Committing,
                Event::Done(id) => t.status.phase = JobPhase::Done(id.to_string()),
                Event::Aborted(why) => t.status.phase = JobPhase::Failed(why.to_string()),
            })
        };
        let cancelled = || {
            if shared.stopping.load(Ordering::Acquire) {
                return Some("the mount is stopping".to_string());
            }
            shared.jobs.lock().get(&conn).and_then(|t| t.cancel.clone())
        };
        let default_repo = shared.default_repo.lock().clone();
        serve_stream(
            &shared.engine,
            Some(&shared.released),
            default_repo.as_deref(),
            &mut reader,
            &mut writer,
            &mut events,
            &cancelled,
            &peer,
        )
    });
    let phase = match result {
        Ok(End::Done) | Ok(End::Aborted) => JobPhase::Failed(String::new()),
        Ok(End::Cancelled(why)) => JobPhase::Cancelled(why),
        Ok(End::ProtocolError(why)) => JobPhase::Failed(format!("protocol error: {why}")),
        Ok(End::Closed) => JobPhase::Failed(
            "the job ended without committing (killed, or it lost its connection)".into(),
        ),
        Err(e) => JobPhase::Failed(format!("its connection failed: {e}")),
    };
    shared.end(conn, phase);
}
