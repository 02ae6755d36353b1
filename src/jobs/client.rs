//! The job's end of the protocol: a [`Session`] over any byte stream to the engine side
//! (the mount daemon's socket, or later an ssh pipe). Requests and acknowledgements share
//! the write half under a lock; answers are read by whichever request is waiting for one
//! (acknowledgements have none, so they never interleave with answers).

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;

use super::converge::ConvergeEnd;
use super::plan::{Plan, PlanRequest, SnapshotDesc};
use super::proto::{self, AckItem, Msg};
use super::service::{Batch, Session, SnarfData};
use super::{Error, Result};

/// What the daemon said about itself in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Its pid.
    pub pid: u32,
    /// The store's id.
    pub store_id: String,
    /// The store's directory.
    pub store: std::path::PathBuf,
    /// The mount's default repository, if it has one.
    pub repo: Option<std::path::PathBuf>,
}

/// A session with the engine side over a stream.
pub struct Client {
    reader: Mutex<Box<dyn Read + Send>>,
    writer: Mutex<Box<dyn Write + Send>>,
    welcome: Welcome,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

fn gone(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Error::Protocol(e.to_string())
    } else {
        Error::DaemonGone(e.to_string())
    }
}

impl Client {
    /// Connects to the daemon's socket and says hello.
    pub fn connect(socket: &Path, job: &str) -> Result<Client> {
        let stream = match (socket.parent(), socket.file_name()) {
            (Some(dir), Some(name)) => super::server::addressable(dir, &name.to_string_lossy())
                .and_then(|(addr, _dir)| UnixStream::connect(addr)),
            _ => UnixStream::connect(socket),
        }
        .map_err(|e| {
            Error::io(
                format!("connecting to the mount daemon at {}", socket.display()),
                e,
            )
        })?;
        // A daemon that hangs must not hang the job forever.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
        let r = stream
            .try_clone()
            .map_err(|e| Error::io("duplicating the daemon socket", e))?;
        Client::over(
            Box::new(BufReader::with_capacity(1 << 20, r)),
            Box::new(BufWriter::with_capacity(1 << 16, stream)),
            job,
        )
    }

    /// Says hello over an already open stream.
    pub fn over(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        job: &str,
    ) -> Result<Client> {
        let mut c = Client {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            welcome: Welcome {
                pid: 0,
                store_id: String::new(),
                store: Default::default(),
                repo: None,
            },
        };
        let answer = c.call(
            &Msg::Hello {
                version: proto::VERSION,
                job: job.to_string(),
                pid: std::process::id(),
            },
            &[],
        )?;
        match answer.0 {
            Msg::Welcome {
                version,
                pid,
                store_id,
                store,
                repo,
            } => {
                if version != proto::VERSION {
                    return Err(Error::Protocol(format!(
                        "the mount daemon speaks job protocol version {version}, this snarf {}; use the same snarf version for both",
                        proto::VERSION
                    )));
                }
                c.welcome = Welcome {
                    pid,
                    store_id,
                    store,
                    repo,
                };
                Ok(c)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// What the daemon said in `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    fn send(&self, msg: &Msg, payload: &[u8]) -> Result<()> {
        proto::write_frame(&mut *self.writer.lock(), msg, payload).map_err(gone)
    }

    fn receive(&self) -> Result<(Msg, Vec<u8>)> {
        match proto::read_frame(&mut *self.reader.lock()).map_err(gone)? {
            Some((Msg::Error { message }, _)) => Err(Error::Refused(message)),
            Some(m) => Ok(m),
            None => Err(Error::DaemonGone("it closed the connection".into())),
        }
    }

    fn call(&self, msg: &Msg, payload: &[u8]) -> Result<(Msg, Vec<u8>)> {
        self.send(msg, payload)?;
        self.receive()
    }
}

fn unexpected(m: &Msg) -> Error {
    let text = serde_json::to_string(m).unwrap_or_default();
    let short: String = text.chars().take(200).collect();
    Error::Protocol(format!("unexpected answer {short}"))
}

impl Session for Client {
    fn describe(&self, snapshot: &str) -> Result<SnapshotDesc> {
        match self
            .call(
                &Msg::Describe {
                    snapshot: snapshot.to_string(),
                },
                &[],
            )?
            .0
        {
            Msg::Snapshot { desc } => Ok(desc),
            other => Err(unexpected(&other)),
        }
    }

    fn begin_converge(&self) -> Result<SnapshotDesc> {
        match self.call(&Msg::Converge, &[])?.0 {
            Msg::Snapshot { desc } => Ok(desc),
            other => Err(unexpected(&other)),
        }
    }

    fn converged(&self) -> Result<ConvergeEnd> {
        match self.call(&Msg::Converged, &[])?.0 {
            Msg::ConvergeEnd { end } => Ok(end),
            other => Err(unexpected(&other)),
        }
    }

    fn plan(&self, req: &PlanRequest, repo: &Path) -> Result<Plan> {
        match self.call(
            &Msg::Plan {
                request: req.clone(),
                repo: repo.to_path_buf(),
            },
            &[],
        )? {
            (Msg::Planned { volumes }, payload) => Plan::from_payload(volumes, &payload)
                .ok_or_else(|| {
                    Error::Protocol("a plan's snarf sets do not match its volumes".into())
                }),
            (other, _) => Err(unexpected(&other)),
        }
    }

    fn next(&self, max: usize) -> Result<Option<Vec<SnarfData>>> {
        Ok(self.next_batch(max)?.map(Batch::into_snarfs))
    }

    fn next_batch(&self, max: usize) -> Result<Option<Batch>> {
        let (msg, payload) = self.call(&Msg::Next { max: max as u32 }, &[])?;
        let Msg::Batch { items, done } = msg else {
            return Err(unexpected(&msg));
        };
        if items.is_empty() {
            return if done {
                Ok(None)
            } else {
                Err(Error::Protocol(
                    "an empty batch that is not the last".into(),
                ))
            };
        }
        Batch::joined(items, payload).map(Some)
    }

    fn ack(&self, items: &[AckItem]) -> Result<()> {
        // One frame names one format; a job writes one repository, so there is one run.
        for run in items.chunk_by(|a, b| a.chunk.format() == b.chunk.format()) {
            for part in run.chunks(proto::MAX_ACKS_PER_FRAME) {
                self.send(
                    &Msg::Ack {
                        count: part.len() as u32,
                        format: part[0].chunk.format(),
                    },
                    &proto::encode_acks(part),
                )?;
            }
        }
        Ok(())
    }

    fn committing(&self) {
        let _ = self.send(&Msg::Committing, &[]);
    }

    fn done(&self, backup: &str) -> Result<()> {
        match self
            .call(
                &Msg::Done {
                    backup: backup.to_string(),
                },
                &[],
            )?
            .0
        {
            Msg::Bye => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn abort(&self, reason: &str) {
        let _ = self.send(
            &Msg::Abort {
                reason: reason.to_string(),
            },
            &[],
        );
    }

    fn daemon_pid(&self) -> Option<u32> {
        Some(self.welcome.pid)
    }
}
