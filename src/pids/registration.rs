//! A process's own registration: [`Registry::register`] adds this process, the returned
//! [`Registration`] lets the owner change its state and job, and removes the entry (and any
//! dead ones) when dropped or when SIGTERM/SIGINT arrives (see [`exit_on_signals`]).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::entry::{Entry, ProcState, ProcType};
use super::procfs;
use super::registry::Registry;
use super::{Error, Result};
use crate::chain::ErrorChain;

/// What a process says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Who started the process.
    pub kind: ProcType,
    /// Initial state.
    pub state: ProcState,
    /// Job id or description; may be empty.
    pub job: String,
    /// Repository path; may be empty.
    pub repo: String,
    /// The other host of a job over ssh (see [`Entry::host`]); may be empty.
    pub host: String,
}

impl NewEntry {
    /// An idle process of type `kind`, with no job and no repository yet.
    pub fn new(kind: ProcType) -> NewEntry {
        NewEntry {
            kind,
            state: ProcState::Idle,
            job: String::new(),
            repo: String::new(),
            host: String::new(),
        }
    }

    /// The same, with `host` as the other end of its ssh connection.
    pub fn host(mut self, host: impl Into<String>) -> NewEntry {
        self.host = host.into();
        self
    }

    /// The same, working on repository `repo`.
    pub fn repo(mut self, repo: impl Into<String>) -> NewEntry {
        self.repo = repo.into();
        self
    }

    /// The same, running job `job`.
    pub fn job(mut self, job: impl Into<String>) -> NewEntry {
        self.job = job.into();
        self
    }

    /// The same, in state `state`.
    pub fn state(mut self, state: ProcState) -> NewEntry {
        self.state = state;
        self
    }
}

/// This process's entry in a registry; dropping it removes the entry and any dead ones.
#[derive(Debug)]
pub struct Registration {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    /// The entry as this process last wrote it; `None` once removed, so an update racing
    /// with the signal thread cannot put the entry back after it was removed.
    entry: Mutex<Option<Entry>>,
}

/// Registrations of this process that a SIGTERM/SIGINT must remove.
static LIVE: Mutex<Vec<Weak<Inner>>> = parking_lot::const_mutex(Vec::new());
/// Whether the signal thread runs already.
static SIGNALS_WATCHED: Mutex<bool> = parking_lot::const_mutex(false);

impl Registry {
    /// Registers this process, cleaning out dead entries on the way. If this process is
    /// registered already, its entry is replaced in place.
    pub fn register(&self, new: NewEntry) -> Result<Registration> {
        let (pid, start_time) =
            procfs::self_identity().map_err(|e| Error::proc("reading /proc/self/stat", e))?;
        let boot_id = procfs::boot_id().map_err(|e| Error::proc("reading the boot id", e))?;
        let registered = crate::sys::clock::now_secs();
        let entry = Entry {
            pid,
            start_time,
            boot_id,
            kind: new.kind,
            state: new.state,
            job: new.job,
            repo: new.repo,
            registered,
            cmdline: procfs::self_cmdline(),
            pid_ns: procfs::self_pid_namespace(),
            host: new.host,
        };
        self.update(|entries| put(entries, &entry))?;
        let inner = Arc::new(Inner {
            registry: self.clone(),
            entry: Mutex::new(Some(entry)),
        });
        let mut live = LIVE.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        Ok(Registration { inner })
    }
}

/// Replaces the entry for the same process, or appends it (registration order is file
/// order, which the idle policy uses to tell older jobs from newer ones).
fn put(entries: &mut Vec<Entry>, entry: &Entry) {
    match entries.iter_mut().find(|e| e.same_process(entry)) {
        Some(slot) => *slot = entry.clone(),
        None => entries.push(entry.clone()),
    }
}

impl Registration {
    /// The registry this entry is in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The entry as this process last wrote it; `None` after a signal removed it.
    pub fn entry(&self) -> Option<Entry> {
        self.inner.entry.lock().clone()
    }

    /// Records a new state (idle, running, finishing).
    pub fn set_state(&self, state: ProcState) -> Result<()> {
        self.inner.modify(|e| e.state = state)
    }

    /// Records a new job id or description.
    pub fn set_job(&self, job: &str) -> Result<()> {
        self.inner.modify(|e| e.job = job.to_string())
    }

    /// Records the repository the job works on.
    pub fn set_repo(&self, repo: &str) -> Result<()> {
        self.inner.modify(|e| e.repo = repo.to_string())
    }

    /// Removes the entry (and dead ones) now, reporting failure, instead of on drop.
    pub fn unregister(self) -> Result<()> {
        self.inner.remove()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = self.inner.remove() {
            log::warn!(
                "could not remove this process from the registry: {}",
                e.chain()
            );
        }
    }
}

impl Inner {
    fn modify(&self, change: impl FnOnce(&mut Entry)) -> Result<()> {
        let mut slot = self.entry.lock();
        let Some(entry) = slot.as_mut() else {
            // Removed by the signal thread: the process is about to exit.
            return Ok(());
        };
        change(entry);
        let entry = entry.clone();
        self.registry.update(|entries| {
            if !entries.iter().any(|e| e.same_process(&entry)) {
                log::warn!(
                    "this process's entry was missing from {}; adding it again",
                    self.registry.path().display()
                );
            }
            put(entries, &entry)
        })
    }

    fn remove(&self) -> Result<()> {
        let mut slot = self.entry.lock();
        let Some(entry) = slot.take() else {
            return Ok(());
        };
        let result = self
            .registry
            .update(|entries| entries.retain(|e| !e.same_process(&entry)));
        if result.is_err() {
            // Leave it to be retried by drop or by the signal thread.
            *slot = Some(entry);
        }
        result
    }
}

/// Makes SIGTERM and SIGINT remove every registration of this process and then end the
/// process as the signal would have (so a parent sees "killed by SIGTERM"). A dedicated
/// thread waits for the signals; nothing runs inside a signal handler but signal-hook's
/// async-signal-safe wake-up. Calling it again does nothing.
pub fn exit_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut watched = SIGNALS_WATCHED.lock();
    if *watched {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|source| Error::Signals { source })?;
    std::thread::Builder::new()
        .name("snarf-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                remove_all_registrations();
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                // Only reached if the default action could not be restored.
                std::process::exit(128 + sig);
            }
        })
        .map_err(|source| Error::Signals { source })?;
    *watched = true;
    Ok(())
}

/// Removes every registration this process still holds (used on the way out).
fn remove_all_registrations() {
    let live: Vec<Arc<Inner>> = LIVE.lock().iter().filter_map(Weak::upgrade).collect();
    for inner in live {
        if let Err(e) = inner.remove() {
            log::warn!(
                "could not remove this process from the registry: {}",
                e.chain()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_update_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let r = reg
            .register(NewEntry::new(ProcType::Cron).repo("/srv/r").job("nightly"))
            .unwrap();
        let listed = reg.list().unwrap();
        assert_eq!(listed.len(), 1);
        let e = &listed[0];
        assert_eq!(e.pid, std::process::id());
        assert_eq!((e.kind, e.state), (ProcType::Cron, ProcState::Idle));
        assert_eq!((e.job.as_str(), e.repo.as_str()), ("nightly", "/srv/r"));
        assert!(!e.cmdline.is_empty() && e.registered > 0);

        r.set_state(ProcState::Finishing).unwrap();
        r.set_job("b-42").unwrap();
        let e = &reg.list().unwrap()[0];
        assert_eq!((e.state, e.job.as_str()), (ProcState::Finishing, "b-42"));
        assert_eq!(r.entry().unwrap(), *e);

        drop(r);
        assert!(!reg.path().exists());
        assert!(!reg.lock_path().exists());
    }

    #[test]
    fn update_restores_an_entry_deleted_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let r = reg.register(NewEntry::new(ProcType::User)).unwrap();
        std::fs::remove_file(reg.path()).unwrap();
        r.set_state(ProcState::Running).unwrap();
        assert_eq!(reg.list().unwrap()[0].state, ProcState::Running);
        r.unregister().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn registering_twice_keeps_one_entry_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let a = reg.register(NewEntry::new(ProcType::User)).unwrap();
        let b = reg.register(NewEntry::new(ProcType::Remote)).unwrap();
        let listed = reg.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, ProcType::Remote);
        drop(b);
        drop(a);
        assert!(!reg.path().exists());
    }
}
