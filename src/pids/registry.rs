//! The registry file itself: `run/pids`, read and rewritten only while holding an flock on
//! `run/pids.lock`, replaced atomically, cleaned of dead entries at every change, and
//! deleted (with its lock file) when it becomes empty.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::entry::{format_registry, parse_registry, Entry};
use super::procfs::{self, Stat};
use super::{Error, Result};
use crate::sys::{durable, lock};

/// File name of the registry inside the run folder.
pub const REGISTRY_FILE: &str = "pids";
/// File name of the lock that serialises changes to the registry.
pub const LOCK_FILE: &str = "pids.lock";
/// The fixed temporary name older versions wrote the registry to; removed if one is left.
/// New registries are written under a hidden name of their own ([`durable::replace`]).
const TEMP_FILE: &str = "pids.tmp";

/// Whether `entry` describes a live process: same boot, a process with that pid exists and
/// has not exited, and its start time matches (so a reused pid does not count).
pub fn is_alive(entry: &Entry, boot_id: &str, stat: Option<Stat>) -> bool {
    entry.boot_id == boot_id
        && stat.is_some_and(|s| !s.exited() && s.start_time == entry.start_time)
}

/// Whether the process of an entry written in another PID namespace still runs: `Some` when
/// that can be told (a process of that namespace with that pid there and that start time is
/// visible here, or no process of that namespace is left and this process sees them all),
/// `None` when it cannot (the namespace is not visible from here, e.g. it is an ancestor).
fn alive_elsewhere(entry: &Entry) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let ns = entry.pid_ns?;
    let mut namespace_seen = false;
    for dirent in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = dirent.path();
        if dirent
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        if std::fs::metadata(dir.join("ns/pid")).map(|m| m.ino()).ok() != Some(ns) {
            continue;
        }
        namespace_seen = true;
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        if procfs::parse_nspid(&status).last() != Some(&entry.pid) {
            continue;
        }
        let Some(pid) = dirent.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        return Some(is_alive(
            entry,
            &entry.boot_id,
            procfs::read_stat(pid).ok().flatten(),
        ));
    }
    if namespace_seen || procfs::in_initial_pid_namespace() {
        Some(false)
    } else {
        None
    }
}

/// The process registry of one store, living in its `run/` folder.
#[derive(Debug, Clone)]
pub struct Registry {
    run_dir: PathBuf,
}

/// Held while the registry is being changed; dropping it releases the flock.
struct Locked {
    file: File,
}

impl Registry {
    /// A registry in `run_dir` (the store's `run/` folder, which must exist).
    pub fn new(run_dir: impl Into<PathBuf>) -> Registry {
        Registry {
            run_dir: run_dir.into(),
        }
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Path of the registry file.
    pub fn path(&self) -> PathBuf {
        self.run_dir.join(REGISTRY_FILE)
    }

    /// Path of the lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.run_dir.join(LOCK_FILE)
    }

    /// The live entries, in registration order, after removing dead ones from the file.
    pub fn list(&self) -> Result<Vec<Entry>> {
        self.update(|entries| entries.clone())
    }

    /// Removes entries whose process is gone; returns how many were removed.
    pub fn cleanup(&self) -> Result<usize> {
        Ok(self.transact(|_| ())?.1)
    }

    /// Reads the file as it is, dead entries included, without the lock. For inspection
    /// and tests; decisions must use [`Registry::list`].
    pub fn read_unlocked(&self) -> Result<Vec<Entry>> {
        Ok(self.load()?.0)
    }

    /// Runs `change` on the live entries under the lock, then writes the result back if
    /// anything differs from the file (removing the file when nothing is left).
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Vec<Entry>) -> R) -> Result<R> {
        Ok(self.transact(change)?.0)
    }

    /// [`Registry::update`], also saying how many dead entries were removed.
    fn transact<R>(&self, change: impl FnOnce(&mut Vec<Entry>) -> R) -> Result<(R, usize)> {
        let lock = self.lock()?;
        let (on_disk, bad) = self.load()?;
        for b in &bad {
            log::warn!(
                "{} line {} is not a registry entry and will be dropped: {}",
                self.path().display(),
                b.line,
                b.why
            );
        }
        let boot = procfs::boot_id().map_err(|e| Error::proc("reading the boot id", e))?;
        let own_ns = procfs::self_pid_namespace();
        let mut entries = Vec::with_capacity(on_disk.len());
        for e in &on_disk {
            let foreign = e.pid_ns.is_some() && e.pid_ns != own_ns;
            if foreign && e.boot_id == boot {
                // Its pid names another process here; look for it in its own namespace.
                match alive_elsewhere(e) {
                    Some(false) => log::debug!(
                        "removing dead registry entry for pid {} of PID namespace {:?}",
                        e.pid,
                        e.pid_ns
                    ),
                    Some(true) | None => entries.push(e.clone()),
                }
                continue;
            }
            match procfs::read_stat(e.pid) {
                Ok(stat) if is_alive(e, &boot, stat) => entries.push(e.clone()),
                Ok(_) => log::debug!("removing dead registry entry for pid {}", e.pid),
                // Unreadable but present (say /proc mounted with hidepid=1): we cannot
                // tell, so the entry stays rather than a live job losing its registration.
                Err(err) => {
                    log::warn!("cannot check process {}: {err}; keeping its entry", e.pid);
                    entries.push(e.clone());
                }
            }
        }
        let dead = on_disk.len() - entries.len();
        let result = change(&mut entries);
        if entries != on_disk || !bad.is_empty() {
            self.store(&entries)?;
        }
        if entries.is_empty() {
            self.remove_lock_file(&lock)?;
        }
        drop(lock);
        Ok((result, dead))
    }

    /// Takes the registry lock. The lock file may be deleted by whoever empties the
    /// registry, so after locking we check that the file we hold is still the one at the
    /// path, and start over if it is not.
    fn lock(&self) -> Result<Locked> {
        let path = self.lock_path();
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Error::NoRunDir {
                            path: self.run_dir.clone(),
                        }
                    } else {
                        Error::io(format!("opening {}", path.display()), e)
                    }
                })?;
            lock::lock(&file, lock::Kind::Exclusive)
                .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
            let held = file
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Locked { file })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            }
        }
    }

    /// Deletes the lock file while holding it, so an empty registry leaves no files.
    /// Waiters on the old file notice it is gone (see [`Registry::lock`]).
    fn remove_lock_file(&self, lock: &Locked) -> Result<()> {
        let _ = &lock.file;
        durable::remove(&self.lock_path())?;
        Ok(())
    }

    fn load(&self) -> Result<(Vec<Entry>, Vec<super::entry::BadLine>)> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(parse_registry(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Replaces the registry file atomically (temporary file, fsync, rename, directory
    /// fsync), or deletes it durably when `entries` is empty.
    fn store(&self, entries: &[Entry]) -> Result<()> {
        let path = self.path();
        // Only the lock holder writes the registry, so a temporary file of it found now was
        // left by a writer that was killed.
        let tmp_prefix = format!(".{REGISTRY_FILE}{}", durable::TMP_MARK);
        durable::remove_leftovers(&self.run_dir, |name| {
            name == TEMP_FILE || name.starts_with(&tmp_prefix)
        })?;
        if entries.is_empty() {
            durable::remove(&path)?;
            return Ok(());
        }
        let text = format_registry(entries);
        durable::replace(&path, text.as_bytes(), durable::PRIVATE)?;
        Ok(())
    }
}

/// The registry's I/O error for a failed durable-file step, with what was being done.
impl From<crate::sys::Error> for Error {
    fn from(e: crate::sys::Error) -> Error {
        let (context, source) = e.into_parts();
        Error::io(context, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pids::entry::tests::sample;
    use crate::pids::entry::ProcState;
    use std::os::unix::fs::PermissionsExt;

    /// An entry for this very process, which is certainly alive.
    fn me() -> Entry {
        let (pid, start_time) = procfs::self_identity().unwrap();
        Entry {
            pid,
            start_time,
            boot_id: procfs::boot_id().unwrap(),
            ..sample(pid)
        }
    }

    #[test]
    fn liveness_needs_pid_start_time_and_boot() {
        let e = me();
        let stat = procfs::read_stat(e.pid).unwrap();
        assert!(is_alive(&e, &e.boot_id, stat));
        assert!(!is_alive(&e, "another-boot", stat));
        assert!(!is_alive(&e, &e.boot_id, None));
        let reused = Entry {
            start_time: e.start_time + 1,
            ..e.clone()
        };
        assert!(!is_alive(&reused, &e.boot_id, stat));
        let zombie = stat.map(|s| Stat { state: 'Z', ..s });
        assert!(!is_alive(&e, &e.boot_id, zombie));
    }

    #[test]
    fn live_entries_survive_and_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let alive = me();
        let wrong_start = Entry {
            start_time: alive.start_time + 7,
            ..alive.clone()
        };
        let old_boot = Entry {
            boot_id: "not-this-boot".into(),
            ..alive.clone()
        };
        let no_process = Entry {
            pid: u32::MAX - 1,
            ..alive.clone()
        };
        reg.store(&[wrong_start, alive.clone(), old_boot, no_process])
            .unwrap();
        assert_eq!(reg.read_unlocked().unwrap().len(), 4);
        assert_eq!(reg.list().unwrap(), vec![alive.clone()]);
        assert_eq!(reg.read_unlocked().unwrap(), vec![alive]);
        assert_eq!(reg.cleanup().unwrap(), 0);
    }

    #[test]
    fn registry_of_only_dead_entries_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let dead = Entry {
            start_time: me().start_time + 1,
            ..me()
        };
        reg.store(&[dead]).unwrap();
        assert!(reg.path().exists());
        assert_eq!(reg.cleanup().unwrap(), 1);
        assert!(!reg.path().exists());
        assert!(!reg.lock_path().exists());
        // Listing an absent registry creates nothing either.
        assert!(reg.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn file_is_private_and_damaged_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut text = format_registry(&[me()]);
        text.push_str("garbage line\n");
        std::fs::write(reg.path(), text).unwrap();
        std::fs::write(dir.path().join(TEMP_FILE), "left by a killed writer").unwrap();
        reg.update(|e| e[0].state = ProcState::Running).unwrap();
        let back = std::fs::read_to_string(reg.path()).unwrap();
        assert_eq!(back.lines().count(), 1);
        assert!(back.contains("\"running\""));
        let mode = std::fs::metadata(reg.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn a_link_planted_at_a_temporary_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let reg = Registry::new(dir.path());
        std::os::unix::fs::symlink(&victim, dir.path().join(TEMP_FILE)).unwrap();
        reg.update(|e| e.push(me())).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(reg.read_unlocked().unwrap().len(), 1);
        let mode = std::fs::metadata(reg.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The planted link was a leftover name and is gone; only the registry, its lock
        // and the victim remain.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [REGISTRY_FILE, LOCK_FILE, "victim"]);
    }

    /// A `sleep` that is pid 1 of a new PID namespace, and its pid out here; both killed
    /// when dropped.
    struct InNamespace {
        unshare: std::process::Child,
        host_pid: u32,
    }

    impl InNamespace {
        fn start() -> Option<InNamespace> {
            let unshare = std::process::Command::new("unshare")
                .args(["--pid", "--fork", "--", "sleep", "300"])
                .spawn()
                .ok()?;
            let parent = unshare.id();
            let mut guard = InNamespace {
                unshare,
                host_pid: 0,
            };
            for _ in 0..500 {
                let child = std::fs::read_dir("/proc").unwrap().flatten().find_map(|d| {
                    let pid: u32 = d.file_name().to_str()?.parse().ok()?;
                    let stat = procfs::read_stat(pid).ok()??;
                    (stat.ppid == parent).then_some(pid)
                });
                if let Some(pid) = child {
                    guard.host_pid = pid;
                    return Some(guard);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            None
        }
    }

    impl Drop for InNamespace {
        fn drop(&mut self) {
            if self.host_pid != 0 {
                let _ = crate::sys::proc::kill(self.host_pid, crate::sys::proc::Signal::KILL);
            }
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }

    #[test]
    fn an_entry_of_another_pid_namespace_is_judged_there() {
        use std::os::unix::fs::MetadataExt;
        if !procfs::in_initial_pid_namespace() {
            return;
        }
        let Some(mut inner) = InNamespace::start() else {
            eprintln!("skipping: unshare --pid is not available here");
            return;
        };
        let ns = std::fs::metadata(format!("/proc/{}/ns/pid", inner.host_pid))
            .unwrap()
            .ino();
        let start_time = procfs::read_stat(inner.host_pid)
            .unwrap()
            .unwrap()
            .start_time;
        // The entry the job inside wrote: pid 1 (of its namespace), its start time.
        let entry = Entry {
            pid: 1,
            start_time,
            pid_ns: Some(ns),
            ..me()
        };
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        reg.store(std::slice::from_ref(&entry)).unwrap();
        // Out here pid 1 is init, with another start time: the entry is still alive.
        assert_eq!(reg.list().unwrap(), vec![entry.clone()]);
        crate::sys::proc::kill(inner.host_pid, crate::sys::proc::Signal::KILL).unwrap();
        inner.host_pid = 0;
        let _ = inner.unshare.wait();
        let start = std::time::Instant::now();
        while !reg.list().unwrap().is_empty() {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn missing_run_dir_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path().join("no-such-run"));
        let e = reg.list().unwrap_err().to_string();
        assert!(
            e.contains("no-such-run") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn concurrent_updates_in_threads_lose_nothing() {
        // Threads contend for the flock through separate open file descriptions, exactly
        // as processes do, while the lock file keeps being deleted and recreated.
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let base = me();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let reg = reg.clone();
                let base = base.clone();
                s.spawn(move || {
                    for i in 0..10u32 {
                        let job = format!("{t}-{i}");
                        reg.update(|e| {
                            e.push(Entry {
                                job: job.clone(),
                                ..base.clone()
                            })
                        })
                        .unwrap();
                        reg.update(|e| e.retain(|x| x.job != job)).unwrap();
                        reg.update(|e| {
                            e.push(Entry {
                                job: job.clone(),
                                ..base.clone()
                            })
                        })
                        .unwrap();
                    }
                });
            }
        });
        let mut jobs: Vec<String> = reg.list().unwrap().into_iter().map(|e| e.job).collect();
        jobs.sort();
        let mut want: Vec<String> = (0..8)
            .flat_map(|t| (0..10).map(move |i| format!("{t}-{i}")))
            .collect();
        want.sort();
        assert_eq!(jobs, want);
        reg.update(|e| e.clear()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
