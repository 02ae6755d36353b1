//! Live restores the mount runs (`restore BACKUP volume=NAME live [as=NEWNAME]` on
//! `control/jobs`, `snarf restore --live`): the new volume is served at once, its missing
//! snarfs are read from the backup on demand ([`RepoSource`], the same volume reader
//! `backups/` uses), and a thread of the daemon copies the rest in ascending order. A mount
//! that finds a volume whose restore was cut short resumes it ([`Restores::resume`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::chain::ErrorChain;
use crate::control::{JobRow, LiveRestoreStatus};
use crate::jobs::JobState;
use crate::repo::handle::VolumeReader;
use crate::repo::{Handle, Location};
use crate::snapshot::Engine;
use crate::store::restored::{FetchError, Origin, Source};
use crate::store::Volume;

/// Snarfs the background copy fetches between two syncs: 16 MiB of 64 KiB snarfs, so the
/// syncs cost little next to the copy (a bit that did not reach the file costs a refetch).
const BATCH: usize = 256;
/// How long the copy waits before it tries a repository that failed again.
pub const RETRY: Duration = Duration::from_secs(2);
/// With `fault-injection` only: milliseconds the copy pauses after each batch, so a mount
/// test can act while a copy is under way (a release build never reads it).
#[cfg(feature = "fault-injection")]
pub const PAUSE_ENV: &str = "SNARF_TEST_RESTORE_PAUSE_MS";

/// With `fault-injection` only: a path; while a file is there, every fetch fails as if the
/// repository were unreachable. A local repository moved away keeps answering through the
/// pack files it holds open, so a mount test needs this to take it away for sure.
#[cfg(feature = "fault-injection")]
pub const DOWN_ENV: &str = "SNARF_TEST_REPO_DOWN_FILE";

/// The pause after each batch of the copy ([`PAUSE_ENV`]; none outside test builds).
fn batch_pause() -> Duration {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::ZERO
}

/// A backup's volume read from its repository, opened on first use and again after a
/// failure (a repository that went away and came back).
pub struct RepoSource {
    origin: Origin,
    reader: Mutex<Option<Arc<VolumeReader>>>,
}

impl RepoSource {
    /// The source of `origin`'s snarfs.
    pub fn new(origin: Origin) -> RepoSource {
        RepoSource {
            origin,
            reader: Mutex::new(None),
        }
    }

    fn reader(&self) -> Result<Arc<VolumeReader>, crate::repo::Error> {
        let mut slot = self.reader.lock();
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let location = Location::of_arg(&PathBuf::from(&self.origin.repository))?;
        let handle = Handle::open_quiet(&location)?;
        let reader = Arc::new(handle.volume_reader(&self.origin.backup, &self.origin.volume)?);
        *slot = Some(reader.clone());
        Ok(reader)
    }
}

impl Source for RepoSource {
    fn fetch(&self, index: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        #[cfg(feature = "fault-injection")]
        if std::env::var_os(DOWN_ENV).is_some_and(|p| std::path::Path::new(&p).exists()) {
            return Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!(
                    "repository {} is unreachable ({DOWN_ENV} is set)",
                    self.origin.repository
                ),
            )));
        }
        let reader = self.reader()?;
        let at = index * buf.len() as u64;
        let mut done = 0;
        while done < buf.len() {
            match reader.read_at(at + done as u64, &mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    // The next fetch opens the repository again.
                    *self.reader.lock() = None;
                    return Err(Box::new(e));
                }
            }
        }
        buf[done..].fill(0);
        Ok(())
    }
}

/// One live restore the daemon runs.
struct Running {
    id: String,
    /// The volume's name when the restore started or resumed.
    name: String,
    origin: Origin,
    volume: Arc<Volume>,
    started: u64,
    /// When it started or resumed, and the snarfs local then (for the rate).
    since: std::time::Instant,
    local_then: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The live restores of a mount.
#[derive(Default)]
pub struct Restores {
    running: Mutex<Vec<Running>>,
}

impl std::fmt::Debug for Restores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restores").finish_non_exhaustive()
    }
}

/// The job id of the live restore of volume `vol`.
fn job_id(vol: &Volume) -> String {
    format!("restore-{:016x}", vol.id())
}

impl Restores {
    /// Creates volume `name` as the live restore of `origin` and starts its copy; returns
    /// the job id.
    pub fn start(
        &self,
        engine: &Engine,
        name: &str,
        origin: Origin,
    ) -> Result<String, super::Error> {
        // The backup is looked up first, so a wrong id or volume name fails the command.
        let source = Arc::new(RepoSource::new(origin.clone()));
        source.reader()?;
        let vol = engine.create_restoring(name, origin)?;
        if let Some(r) = vol.restore() {
            r.set_source(source);
        }
        log::info!("live restore of volume \"{name}\" started");
        Ok(self.spawn(name, vol))
    }

    /// Resumes every restore an earlier mount left unfinished.
    pub fn resume(&self, engine: &Engine) {
        for (name, vol) in engine.store().volumes() {
            let Some(r) = vol.restore() else { continue };
            r.set_source(Arc::new(RepoSource::new(r.origin().clone())));
            log::info!(
                "live restore of volume \"{name}\" from backup {} resumes: {} of {} snarfs to go",
                r.origin().backup,
                r.missing(),
                r.progress().total
            );
            self.spawn(&name, vol);
        }
    }

    fn spawn(&self, name: &str, vol: Arc<Volume>) -> String {
        let id = job_id(&vol);
        let origin = vol
            .restore()
            .map(|r| r.origin().clone())
            .unwrap_or_default();
        let local_then = vol.restore().map_or(0, |r| r.progress().local);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::Builder::new()
                .name("restore".into())
                .spawn(move || copy(&vol, &stop))
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("cannot start the live restore's copy thread: {e}; snarfs are fetched only as they are read");
                None
            }
        };
        self.running.lock().push(Running {
            id: id.clone(),
            name: name.to_string(),
            origin,
            volume: vol,
            started: crate::sys::clock::now_ns().max(0) as u64 / 1_000_000_000,
            since: std::time::Instant::now(),
            local_then,
            stop,
            thread,
        });
        id
    }

    /// Stops every copy (at unmount) and waits for them; the next mount resumes.
    pub fn stop_all(&self) {
        let mut running = self.running.lock();
        for r in running.iter() {
            r.stop.store(true, Ordering::Release);
        }
        for r in running.iter_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// The rows of `control/jobs` for the live restores.
    pub fn rows(&self) -> Vec<JobRow> {
        self.running
            .lock()
            .iter()
            .map(|r| {
                let snarf = r.volume.snarf_size();
                let (state, reason, done, total) = match r.volume.restore() {
                    Some(live) => {
                        let p = live.progress();
                        let state = if r.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                            JobState::Running
                        } else {
                            JobState::Cancelled
                        };
                        (state, p.failure.unwrap_or_default(), p.local, p.total)
                    }
                    None => {
                        let n = r.origin.size.div_ceil(snarf);
                        (JobState::Done, String::new(), n, n)
                    }
                };
                let origin = r.origin.clone();
                let secs = r.since.elapsed().as_secs_f64();
                let rate = (state == JobState::Running && secs >= 1.0)
                    .then(|| (done.saturating_sub(r.local_then) * snarf) as f64 / secs)
                    .map(|b| b as u64);
                JobRow {
                    id: r.id.clone(),
                    kind: "restore".into(),
                    pid: Some(std::process::id()),
                    state,
                    reason,
                    done_bytes: done * snarf,
                    total_bytes: Some(total * snarf),
                    rate_bytes_per_sec: rate,
                    started: Some(r.started),
                    snapshot: origin.backup,
                    repository: origin.repository,
                }
            })
            .collect()
    }

    /// The volumes under live restore (and those this mount finished), for
    /// `control/status`, and the volumes not served because their restore's bitmap is
    /// damaged.
    pub fn status(&self, engine: &Engine) -> Vec<LiveRestoreStatus> {
        let mut rows: Vec<LiveRestoreStatus> = self
            .running
            .lock()
            .iter()
            .filter_map(|r| {
                let live = r.volume.live_restore()?;
                let p = live.progress();
                let snarf = r.volume.snarf_size();
                let state = if live.is_done() {
                    "done"
                } else if p.failure.is_some() {
                    "unreachable"
                } else {
                    "ok"
                };
                Some(LiveRestoreStatus {
                    volume: r.name.clone(),
                    backup: p.origin.backup,
                    local_bytes: p.local * snarf,
                    total_bytes: p.total * snarf,
                    fetched: p.fetched,
                    state: state.into(),
                    reason: p.failure.unwrap_or_default(),
                })
            })
            .collect();
        for (name, vol) in engine.store().volumes() {
            if let Some(why) = vol.blocked() {
                rows.push(LiveRestoreStatus {
                    volume: name,
                    state: "damaged".into(),
                    reason: why.chain().to_string(),
                    ..LiveRestoreStatus::default()
                });
            }
        }
        rows
    }
}

/// The background copy of one volume: every missing snarf in ascending order, waiting and
/// trying again while the repository does not answer, until all are local.
fn copy(vol: &Volume, stop: &AtomicBool) {
    let pause = batch_pause();
    let mut at = Some(0);
    while !stop.load(Ordering::Acquire) && !vol.is_deleted() {
        let Some(r) = vol.restore() else { return };
        match at {
            Some(from) => match r.copy_next(vol, from, BATCH) {
                Ok(next) => {
                    at = next;
                    if !pause.is_zero() {
                        wait(stop, pause);
                    }
                }
                Err(e) => {
                    log::warn!(
                        "live restore of volume {:016x}: {}; trying again in {} s",
                        vol.id(),
                        e.chain(),
                        RETRY.as_secs()
                    );
                    wait(stop, RETRY);
                }
            },
            None => match r.finish() {
                Ok(true) => {
                    log::info!(
                        "live restore of volume {:016x} from backup {} finished",
                        vol.id(),
                        r.origin().backup
                    );
                    return;
                }
                // A reader was still fetching one: look again from the start.
                Ok(false) => {
                    wait(stop, Duration::from_millis(50));
                    at = Some(0);
                }
                Err(e) => {
                    log::warn!(
                        "live restore of volume {:016x} cannot end yet: {}",
                        vol.id(),
                        e.chain()
                    );
                    wait(stop, RETRY);
                }
            },
        }
    }
}

fn wait(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Acquire) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}
