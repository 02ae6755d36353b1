//! The lock of an S3 repository: a lease object `<prefix>/lock` (no filesystem, so no flock).
//!
//! The protocol (DESIGN.md, "The S3 backend"):
//! - **take**: PutObject `lock` with `If-None-Match: *`, holding who holds it (the
//!   holder's description, host and pid), a random token and an expiry ([`TTL`] ahead). One
//!   taker wins; the others read the lease.
//! - **stale**: a lease is stale when its expiry has passed, or when its pid can be judged
//!   here and the holder is gone: the lease names this host, this boot and this pid
//!   namespace (a pid means nothing across namespaces or reboots, nor on another machine
//!   that happens to share the host name), and that pid does not run, or it is this very
//!   process and the lease is none it holds (a guard dropped while the server was
//!   unreachable could not delete its lease). A stale lease is taken over by replacing it
//!   with `If-Match: <its ETag>`, so of two takers only one wins.
//! - **renew**: a thread of the holder replaces the lease every [`RENEW`] with a new expiry,
//!   `If-Match` the ETag of its own last write. If that fails because the object changed
//!   (someone took it over) or it could not be renewed before it expired, the lease is
//!   lost: the backend refuses every write from then on, so a holder that stalled past its
//!   expiry never writes beside the one that took over.
//! - **release**: the renewal stops, and the lease is deleted if it still holds our token.
//!
//! Expiry uses the hosts' clocks: hosts sharing a repository must keep them within a small
//! fraction of [`TTL`] (NTP does).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStore, PutMode};
use serde::{Deserialize, Serialize};

use super::super::super::error::{Error, Result};
use super::super::{LockGuard, ObjectId};
use super::{update_of, Inner};

/// How long a lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(60);
/// How often the holder renews it.
pub const RENEW: Duration = Duration::from_secs(15);
/// How often a waiting taker looks again.
const POLL: Duration = Duration::from_millis(500);
/// Largest lease object read.
const MAX_LEASE: usize = 64 << 10;
/// The lease object's name under the prefix.
const NAME: &str = "lock";

/// The lease object's contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Doc {
    holder: String,
    host: String,
    pid: u32,
    token: String,
    /// Seconds since the epoch after which the lease is stale.
    expires: u64,
    /// The holder's boot and pid namespace ([`pid_scope`]): its pid is judged only where
    /// this matches. Absent in leases of older snarfs, which are then judged by expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Tokens of the leases this process holds (a lease naming this process with another token
/// is one it dropped).
fn held() -> &'static Mutex<HashSet<String>> {
    static HELD: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

fn holds(token: &str) -> bool {
    held().lock().map_or(true, |h| h.contains(token))
}

fn set_held(token: &str, on: bool) {
    if let Ok(mut h) = held().lock() {
        if on {
            h.insert(token.to_string());
        } else {
            h.remove(token);
        }
    }
}

/// This process's boot id and pid namespace, e.g. `4f0c…/pid:[4026531836]`: where two
/// leases share it, their pids are pids of one kernel's one namespace.
fn pid_scope() -> Option<String> {
    static SCOPE: OnceLock<Option<String>> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(format!("{}/{}", boot.trim(), ns.to_string_lossy()))
        })
        .clone()
}

impl Doc {
    fn describe(&self) -> String {
        let until =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.expires));
        format!(
            "{} on host {} (pid {}, lease until {until})",
            self.holder, self.host, self.pid
        )
    }

    /// Whether the lease may be taken over: expired, or its holder is a process of this
    /// host, boot and pid namespace that is gone (see the module doc).
    fn stale(&self, host: &str) -> bool {
        if now_secs() > self.expires {
            return true;
        }
        let judged_here = self.host == host && self.scope.is_some() && self.scope == pid_scope();
        if !judged_here {
            return false;
        }
        if self.pid == std::process::id() {
            return !holds(&self.token);
        }
        !pid_running(self.pid)
    }

    fn bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Whether process `pid` of this host is running (a process we may not signal is).
fn pid_running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// A held lease; renewed by its thread until dropped.
pub(super) struct Lease {
    inner: Arc<Inner>,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({}/{NAME})", self.inner.url())
    }
}

impl LockGuard for Lease {}

/// Takes the lease for `holder`, waiting up to `wait` for a live holder to release it.
pub(super) fn take(inner: Arc<Inner>, holder: &str, wait: Option<Duration>) -> Result<Lease> {
    // Held from before its lease is written, so another thread of this process that reads
    // the lease meanwhile never takes it for a dropped one.
    let token = ObjectId::generate().to_string();
    set_held(&token, true);
    let taken = take_as(inner, holder, wait, token.clone());
    if taken.is_err() {
        set_held(&token, false);
    }
    taken
}

fn take_as(
    inner: Arc<Inner>,
    holder: &str,
    wait: Option<Duration>,
    token: String,
) -> Result<Lease> {
    let started = Instant::now();
    let path = inner.path(NAME);
    let mine = Doc {
        holder: holder.to_string(),
        host: host_name(),
        pid: std::process::id(),
        token,
        expires: 0,
        scope: pid_scope(),
    };
    let fresh = || Doc {
        expires: now_secs() + TTL.as_secs(),
        ..mine.clone()
    };
    loop {
        match inner.put(&path, fresh().bytes(), PutMode::Create) {
            Ok(r) => return start(inner, mine, r.e_tag),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(inner.error("taking the lock", &path, e)),
        }
        let got = match inner.run(inner.store.get(&path)) {
            Ok(g) => g,
            // Released meanwhile: try again.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(inner.error("reading the lock", &path, e)),
        };
        let e_tag = got.meta.e_tag.clone();
        let body = inner
            .run(got.bytes())
            .map_err(|e| inner.error("reading the lock", &path, e))?;
        let theirs = (body.len() <= MAX_LEASE)
            .then(|| serde_json::from_slice::<Doc>(&body).ok())
            .flatten();
        let Some(theirs) = theirs else {
            return Err(Error::Locked {
                path: inner.url().into(),
                holder: format!(
                    "an object s3://{}/{path} that is not a lease snarf writes (if no snarf uses the repository, delete it)",
                    inner.target.bucket
                ),
            });
        };
        if theirs.stale(&mine.host) {
            match inner.put(&path, fresh().bytes(), update_of(e_tag)) {
                Ok(r) => {
                    log::warn!(
                        "{}: took over the stale lock lease of {}",
                        inner.url(),
                        theirs.describe()
                    );
                    return start(inner, mine, r.e_tag);
                }
                // Another taker was first, or it was released: look again.
                Err(
                    object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
                ) => continue,
                Err(e) => return Err(inner.error("taking over the lock", &path, e)),
            }
        }
        match wait {
            None => {
                return Err(Error::Locked {
                    path: inner.url().into(),
                    holder: theirs.describe(),
                })
            }
            Some(w) if started.elapsed() >= w => {
                return Err(Error::LockTimeout {
                    path: inner.url().into(),
                    holder: theirs.describe(),
                    secs: started.elapsed().as_secs_f64(),
                })
            }
            Some(_) => std::thread::sleep(POLL),
        }
    }
}

/// Starts renewing a lease just written with `e_tag`.
fn start(inner: Arc<Inner>, mine: Doc, e_tag: Option<String>) -> Result<Lease> {
    if e_tag.is_none() {
        let _ = inner.run(inner.store.delete(&inner.path(NAME)));
        return Err(Error::NoConditionalWrites { repo: inner.url() });
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let renewer = inner.clone();
    let token = mine.token.clone();
    let thread = std::thread::Builder::new()
        .name("snarf-s3-lease".into())
        .spawn(move || renew(&renewer, mine, e_tag, &stopped))
        .map_err(|e| Error::io("starting the S3 lock's renewal thread", e))?;
    Ok(Lease {
        inner,
        token,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The renewal loop: until told to stop, or the lease is lost.
fn renew(inner: &Inner, mine: Doc, mut e_tag: Option<String>, stopped: &mpsc::Receiver<()>) {
    let path = inner.path(NAME);
    let mut held_until = Instant::now() + TTL;
    loop {
        match stopped.recv_timeout(RENEW) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let doc = Doc {
            expires: now_secs() + TTL.as_secs(),
            ..mine.clone()
        };
        let asked = Instant::now();
        match inner.put(&path, doc.bytes(), update_of(e_tag.clone())) {
            Ok(r) if r.e_tag.is_some() => {
                e_tag = r.e_tag;
                held_until = asked + TTL;
            }
            Ok(_)
            | Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                inner.lease_lost.store(true, Ordering::SeqCst);
                log::error!(
                    "{}: the lock lease was taken over by another process; writing stops",
                    inner.url()
                );
                return;
            }
            Err(e) => {
                log::warn!(
                    "{}: could not renew the lock lease ({e}); retrying",
                    inner.url()
                );
                // Others may take it over once it expires: stop writing a margin before.
                if Instant::now() + RENEW / 3 >= held_until {
                    inner.lease_lost.store(true, Ordering::SeqCst);
                    log::error!(
                        "{}: the lock lease expired before it could be renewed; writing stops",
                        inner.url()
                    );
                    return;
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        set_held(&self.token, false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.inner.lease_lost.load(Ordering::SeqCst) {
            return;
        }
        let path = self.inner.path(NAME);
        // Delete it only if it is still ours.
        let ours = match self.inner.run(self.inner.store.get(&path)) {
            Ok(got) => self
                .inner
                .run(got.bytes())
                .ok()
                .and_then(|b| serde_json::from_slice::<Doc>(&b).ok())
                .is_some_and(|d| d.token == self.token),
            Err(_) => false,
        };
        if ours {
            if let Err(e) = self.inner.run(self.inner.store.delete(&path)) {
                log::warn!(
                    "{}: could not release the lock lease ({e}); it expires by itself within {} s",
                    self.inner.url(),
                    TTL.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_stale_when_expired_or_their_process_is_gone() {
        let host = host_name();
        set_held("t", true);
        let live = Doc {
            holder: "snarf backup".into(),
            host: host.clone(),
            pid: std::process::id(),
            token: "t".into(),
            expires: now_secs() + 60,
            scope: pid_scope(),
        };
        assert!(
            live.scope.is_some(),
            "/proc gives the boot id and pid namespace"
        );
        assert!(!live.stale(&host));
        assert!(Doc {
            expires: now_secs() - 1,
            ..live.clone()
        }
        .stale(&host));
        // A pid beyond pid_max runs nowhere.
        assert!(Doc {
            pid: 1 << 30,
            ..live.clone()
        }
        .stale(&host));
        // This process, but a lease it no longer holds (dropped while the server was away).
        assert!(Doc {
            token: "dropped".into(),
            ..live.clone()
        }
        .stale(&host));
        // Another host's live lease is not ours to judge by pid, nor one of another pid
        // namespace or boot of this host name (its pid numbers are not ours), nor one of a
        // snarf that did not record its namespace.
        for other in [
            Doc {
                host: "elsewhere".into(),
                ..live.clone()
            },
            Doc {
                scope: Some("another-boot/pid:[4026531836]".into()),
                ..live.clone()
            },
            Doc {
                scope: None,
                ..live.clone()
            },
        ] {
            assert!(!Doc {
                pid: 1 << 30,
                ..other.clone()
            }
            .stale(&host));
            assert!(!Doc {
                token: "dropped".into(),
                ..other
            }
            .stale(&host));
        }
        let d = live.describe();
        assert!(d.contains("snarf backup") && d.contains(&host), "{d}");
        set_held("t", false);
    }
}
