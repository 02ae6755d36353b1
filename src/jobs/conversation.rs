//! The engine side of one job's conversation, over any pair of byte streams: the daemon's
//! socket server runs it per connection, and a later `snarf serve` can run it over the
//! stdin/stdout of an ssh pipe. It answers each request through a [`JobService`] and
//! reports what happens as [`Event`]s (for the job listing).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{self, BatchItem, Incoming, Msg};
use super::released::Released;
use super::service::{JobService, PeerAlive, Session};
use super::{Error, Result};
use crate::chain::ErrorChain;
use crate::snapshot::Engine;

/// Most snarfs one batch carries, whatever the job asks.
pub const MAX_BATCH: usize = 64;
/// How long a peer has, from the start of the conversation, to say hello (the stream's read
/// timeout decides how often this is looked at).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);

/// Who the engine side talks to, as far as it can tell.
#[derive(Clone, Default)]
pub struct Peer {
    /// Whether its process is still alive (a local socket's peer); `None` when unknown.
    pub alive: Option<PeerAlive>,
}

/// Something a job did, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// It said who it is.
    Hello {
        /// Its description.
        job: &'a str,
        /// Its pid.
        pid: u32,
    },
    /// It asked about a snapshot.
    Snapshot(&'a str),
    /// It has a plan: this many bytes to send, into this repository.
    Planned {
        /// The repository.
        repo: &'a Path,
        /// Bytes of snarfs to send.
        total_bytes: u64,
    },
    /// Bytes of snarfs sent in one batch.
    Sent(u64),
    /// It is committing its backup.
    Committing,
    /// It committed this backup.
    Done(&'a str),
    /// It gave up, saying why.
    Aborted(&'a str),
}

/// How a conversation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The stream ended without `done` or `abort` (the job died or lost its connection).
    Closed,
    /// The job committed its backup and said goodbye.
    Done,
    /// The job gave up.
    Aborted,
    /// The job was cancelled (it was told why).
    Cancelled(String),
    /// The job broke the protocol (it was told how).
    ProtocolError(String),
}

/// Runs one conversation until it ends. `cancelled` is asked before each request that
/// moves the job along; when it gives a reason, the job is refused with it and the
/// conversation ends.
#[allow(clippy::too_many_arguments)]
pub fn serve_stream(
    engine: &Arc<Engine>,
    released: Option<&Arc<Released>>,
    default_repo: Option<&Path>,
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    events: &mut dyn FnMut(Event<'_>),
    cancelled: &dyn Fn() -> Option<String>,
    peer: &Peer,
) -> std::io::Result<End> {
    let mut service = JobService::new(engine.clone(), released.cloned());
    if let Some(alive) = &peer.alive {
        service = service.with_peer(alive.clone());
    }
    let began = Instant::now();
    let mut greeted = false;
    let mut payload = Vec::new();
    loop {
        // A malformed or oversized frame ends this conversation, told why when possible.
        let (msg, body) = match proto::read_frame_from(reader, &proto::FROM_JOB) {
            Ok(Incoming::Frame(m, b)) => (m, b),
            Ok(Incoming::End) => return Ok(End::Closed),
            Ok(Incoming::Idle) if !greeted && began.elapsed() >= HELLO_DEADLINE => {
                return Ok(End::ProtocolError(format!(
                    "no hello within {} s",
                    HELLO_DEADLINE.as_secs()
                )))
            }
            Ok(Incoming::Idle) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let why = e.to_string();
                let _ = proto::write_frame(
                    writer,
                    &Msg::Error {
                        message: format!("protocol error: {why}"),
                    },
                    &[],
                );
                return Ok(End::ProtocolError(why));
            }
            Err(e) => return Err(e),
        };
        payload.clear();
        if matches!(
            msg,
            Msg::Next { .. } | Msg::Plan { .. } | Msg::Describe { .. } | Msg::Converge
        ) {
            if let Some(reason) = cancelled() {
                let m = Msg::Error {
                    message: format!("the backup was cancelled: {reason}; nothing was committed"),
                };
                proto::write_frame(writer, &m, &[])?;
                return Ok(End::Cancelled(reason));
            }
        }
        let answer: Result<Option<Msg>> = match msg {
            Msg::Hello { version, job, pid } => {
                if !(proto::OLDEST_VERSION..=proto::VERSION).contains(&version) {
                    Err(Error::Refused(format!(
                        "this mount speaks job protocol versions {} to {}, the job {version}; use the same snarf version for both",
                        proto::OLDEST_VERSION,
                        proto::VERSION
                    )))
                } else {
                    greeted = true;
                    events(Event::Hello { job: &job, pid });
                    // The job's own version: an older job checks it is its own, and
                    // speaks only what it knows (format 1 acks).
                    Ok(Some(Msg::Welcome {
                        version,
                        pid: std::process::id(),
                        store_id: engine.store().store_id(),
                        store: engine.store().root().to_path_buf(),
                        repo: default_repo.map(Path::to_path_buf),
                    }))
                }
            }
            _ if !greeted => Err(Error::Protocol("say hello first".into())),
            Msg::Describe { snapshot } => {
                events(Event::Snapshot(&snapshot));
                service
                    .describe(&snapshot)
                    .map(|desc| Some(Msg::Snapshot { desc }))
            }
            Msg::Converge => {
                events(Event::Snapshot("(converge)"));
                service
                    .begin_converge()
                    .map(|desc| Some(Msg::Snapshot { desc }))
            }
            Msg::Converged => service
                .converged()
                .map(|end| Some(Msg::ConvergeEnd { end })),
            Msg::Plan { request, repo } => service.plan(&request, &repo).map(|plan| {
                events(Event::Planned {
                    repo: &repo,
                    total_bytes: plan.volumes.iter().map(|v| v.to_send_bytes).sum(),
                });
                payload = plan.sets_payload();
                Some(Msg::Planned {
                    volumes: plan.volumes,
                })
            }),
            Msg::Next { max } => {
                let max = (max as usize).clamp(1, MAX_BATCH);
                service.next(max).map(|batch| {
                    let mut items = Vec::new();
                    let done = batch.is_none();
                    let mut sent = 0u64;
                    for d in batch.into_iter().flatten() {
                        sent += d.len as u64;
                        items.push(BatchItem {
                            vol: d.vol,
                            snarf: d.snarf,
                            len: d.len,
                            zero: d.data.is_none(),
                            tier: d.tier,
                        });
                        if let Some(bytes) = d.data {
                            payload.extend_from_slice(&bytes);
                        }
                    }
                    events(Event::Sent(sent));
                    Some(Msg::Batch { items, done })
                })
            }
            Msg::Ack { count, format } => proto::decode_acks(count, format, &body)
                .map_err(|e| Error::Protocol(e.to_string()))
                .and_then(|acks| service.ack(&acks))
                .map(|_| None),
            Msg::Committing => {
                events(Event::Committing);
                Ok(None)
            }
            Msg::Done { backup } => {
                let _ = service.done(&backup);
                events(Event::Done(&backup));
                proto::write_frame(writer, &Msg::Bye, &[])?;
                return Ok(End::Done);
            }
            Msg::Abort { reason } => {
                events(Event::Aborted(&reason));
                proto::write_frame(writer, &Msg::Bye, &[])?;
                return Ok(End::Aborted);
            }
            other => Err(Error::Protocol(format!(
                "a job does not send {}",
                serde_json::to_string(&other).unwrap_or_default()
            ))),
        };
        match answer {
            Ok(Some(m)) => proto::write_frame(writer, &m, &payload)?,
            Ok(None) => {}
            Err(Error::Protocol(why)) => {
                proto::write_frame(
                    writer,
                    &Msg::Error {
                        message: format!("protocol error: {why}"),
                    },
                    &[],
                )?;
                return Ok(End::ProtocolError(why));
            }
            Err(e) => proto::write_frame(
                writer,
                &Msg::Error {
                    message: e.chain().to_string(),
                },
                &[],
            )?,
        }
    }
}
