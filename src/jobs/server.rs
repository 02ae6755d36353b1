//! The daemon's job server: a Unix socket `STORE/run/daemon.sock` (mode 0600; the run folder
//! is 0700) on which backup jobs, separate `snarf backup` processes, ask for their
//! snapshot's snarfs. One thread accepts; each connection gets a thread that answers its
//! requests through a [`JobService`]. When a connection ends, however it ends, its feed is
//! dropped; what it acknowledged stays readable through the [`Released`] tables. A janitor
//! drops those tables (and their repository pins) once their snapshot is released.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::proto::{self, BatchItem, Msg};
use super::released::Released;
use super::service::{JobService, Session};
use super::{Error, Result};
use crate::snapshot::Engine;

/// Name of the socket in the store's run folder.
pub const SOCKET: &str = "daemon.sock";
/// Most snarfs one batch carries, whatever the job asks.
const MAX_BATCH: usize = 64;

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

/// A job connected right now, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Connection number.
    pub conn: u64,
    /// What the job called itself.
    pub job: String,
    /// Its pid.
    pub pid: u32,
    /// The snapshot, once it asked.
    pub snapshot: String,
}

struct Shared {
    engine: Arc<Engine>,
    released: Arc<Released>,
    stopping: AtomicBool,
    conns: Mutex<HashMap<u64, (UnixStream, JobInfo)>>,
    next_conn: AtomicU64,
    janitor_wake: (Mutex<bool>, Condvar),
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
        let released = Arc::new(Released::open(run_dir, &engine.store().store_id())?);
        let shared = Arc::new(Shared {
            engine,
            released,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            janitor_wake: (Mutex::new(false), Condvar::new()),
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

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// The released-snarf tables (for reads of snapshots after acknowledgements).
    pub fn released(&self) -> &Arc<Released> {
        &self.shared.released
    }

    /// Jobs connected now.
    pub fn jobs(&self) -> Vec<JobInfo> {
        let mut v: Vec<JobInfo> = self
            .shared
            .conns
            .lock()
            .values()
            .map(|(_, i)| i.clone())
            .collect();
        v.sort_by_key(|i| i.conn);
        v
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
        for (s, _) in self.shared.conns.lock().values() {
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
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(copy) = stream.try_clone() else {
            continue;
        };
        shared.conns.lock().insert(
            conn,
            (
                copy,
                JobInfo {
                    conn,
                    job: String::new(),
                    pid: 0,
                    snapshot: String::new(),
                },
            ),
        );
        let s2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snarf-job-{conn}"))
            .spawn(move || {
                if let Err(e) = serve(&s2, conn, stream) {
                    log::warn!("backup job connection {conn}: {e}");
                }
                s2.conns.lock().remove(&conn);
            });
        match spawned {
            Ok(h) => {
                let mut w = workers.lock();
                w.retain(|h| !h.is_finished());
                w.push(h);
            }
            Err(e) => {
                log::warn!("cannot start a thread for a backup job: {e}");
                shared.conns.lock().remove(&conn);
            }
        }
    }
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

/// Serves one connection until it ends.
fn serve(shared: &Shared, conn: u64, stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(1 << 20, stream);
    let service = JobService::new(shared.engine.clone(), Some(shared.released.clone()));
    let mut greeted = false;
    let mut items = Vec::new();
    let mut payload = Vec::new();
    loop {
        let Some((msg, body)) = proto::read_frame(&mut reader)? else {
            log::info!("backup job connection {conn} closed");
            return Ok(());
        };
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let answer: Result<Option<Msg>> = (|| match msg {
            Msg::Hello { version, job, pid } => {
                if version != proto::VERSION {
                    return Err(Error::Refused(format!(
                        "this mount speaks job protocol version {}, the job {version}; use the same snarf version for both",
                        proto::VERSION
                    )));
                }
                greeted = true;
                if let Some((_, info)) = shared.conns.lock().get_mut(&conn) {
                    info.job = job;
                    info.pid = pid;
                }
                Ok(Some(Msg::Welcome {
                    version: proto::VERSION,
                    pid: std::process::id(),
                    store_id: shared.engine.store().store_id(),
                    store: shared.engine.store().root().to_path_buf(),
                }))
            }
            _ if !greeted => Err(Error::Protocol("say hello first".into())),
            Msg::Describe { snapshot } => {
                if let Some((_, info)) = shared.conns.lock().get_mut(&conn) {
                    info.snapshot = snapshot.clone();
                }
                Ok(Some(Msg::Snapshot {
                    desc: service.describe(&snapshot)?,
                }))
            }
            Msg::Plan { request, repo } => {
                let plan = service.plan(&request, &repo)?;
                payload = plan.sets_payload();
                Ok(Some(Msg::Planned {
                    volumes: plan.volumes,
                }))
            }
            Msg::Next { max } => {
                items.clear();
                payload.clear();
                let max = (max as usize).clamp(1, MAX_BATCH);
                let done = match service.next(max)? {
                    None => true,
                    Some(batch) => {
                        for d in batch {
                            items.push(BatchItem {
                                vol: d.vol,
                                snarf: d.snarf,
                                len: d.len,
                                zero: d.data.is_none(),
                            });
                            if let Some(bytes) = d.data {
                                payload.extend_from_slice(&bytes);
                            }
                        }
                        false
                    }
                };
                Ok(Some(Msg::Batch {
                    items: std::mem::take(&mut items),
                    done,
                }))
            }
            Msg::Ack { count } => {
                let acks =
                    proto::decode_acks(count, &body).map_err(|e| Error::Protocol(e.to_string()))?;
                service.ack(&acks)?;
                Ok(None)
            }
            Msg::Done { backup } => {
                log::info!("backup job connection {conn} committed backup {backup}");
                service.done(&backup)?;
                Ok(Some(Msg::Bye))
            }
            Msg::Abort { reason } => {
                log::info!("backup job connection {conn} gave up: {reason}");
                service.abort(&reason);
                Ok(Some(Msg::Bye))
            }
            other => Err(Error::Protocol(format!(
                "a job does not send {}",
                serde_json::to_string(&other).unwrap_or_default()
            ))),
        })();
        let (reply, fatal) = match answer {
            Ok(Some(m)) => (Some(m), false),
            Ok(None) => (None, false),
            Err(e) => {
                let fatal = matches!(e, Error::Protocol(_));
                (
                    Some(Msg::Error {
                        message: e.to_string(),
                    }),
                    fatal,
                )
            }
        };
        if let Some(m) = reply {
            let bye = matches!(m, Msg::Bye);
            let body: &[u8] = if matches!(m, Msg::Batch { .. } | Msg::Planned { .. }) {
                &payload
            } else {
                &[]
            };
            proto::write_frame(&mut writer, &m, body)?;
            writer.flush()?;
            if bye || fatal {
                return Ok(());
            }
        }
    }
}
