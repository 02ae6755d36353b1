//! The repository lock: two writers (backup, prune, finishing) never interleave. It is a
//! flock(2) on `REPO/lock`, whose contents name the holder: pid, process start time (field 22
//! of /proc/PID/stat, parsed after the last `)` because the command name may contain spaces
//! and parentheses), host and command. The kernel drops a flock when its holder dies; if the
//! lock is still held but the named holder is dead on this host (the lock was inherited by a
//! stray child, say), the lock file is replaced and taken over. A live holder is reported by
//! name. Readers take no lock.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{Error, IoContext, Result};
use super::ids::{format_utc, now_secs};

/// Name of the lock file in a repository.
pub const LOCK_FILE: &str = "lock";

/// Who holds (or held) the lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// Host name.
    pub host: String,
    /// What it is doing, e.g. "snarf backup".
    pub command: String,
    /// When it took the lock, Unix seconds.
    pub since: u64,
}

impl Holder {
    /// This process, doing `command`.
    pub fn current(command: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            host: hostname(),
            command: command.replace(['\n', '\t'], " "),
            since: now_secs(),
        }
    }

    /// The lock file's text: one `key=value` per line.
    pub fn to_text(&self) -> String {
        format!(
            "pid={}\nstart_time={}\nhost={}\ncommand={}\nsince={}\n",
            self.pid, self.start_time, self.host, self.command, self.since
        )
    }

    /// Parses the lock file's text; `None` if it names no holder.
    pub fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder {
            pid: 0,
            start_time: 0,
            host: String::new(),
            command: String::new(),
            since: 0,
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "pid" => h.pid = v.parse().ok()?,
                "start_time" => h.start_time = v.parse().ok()?,
                "host" => h.host = v.to_string(),
                "command" => h.command = v.to_string(),
                "since" => h.since = v.parse().ok()?,
                _ => {}
            }
        }
        (h.pid != 0).then_some(h)
    }

    /// "pid 123 (snarf backup, started 2026-11-23 10:15:00 UTC) on host x".
    pub fn describe(&self) -> String {
        format!(
            "pid {} ({}, started {} UTC) on host {}",
            self.pid,
            if self.command.is_empty() {
                "snarf"
            } else {
                &self.command
            },
            format_utc(self.since),
            self.host
        )
    }

    /// True unless the holder is on this host and its process is gone (or its pid now
    /// belongs to another process, seen by a different start time).
    pub fn may_be_alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        match process_start_time(self.pid) {
            None => false,
            Some(t) => self.start_time == 0 || t == self.start_time,
        }
    }
}

/// The start time field of a /proc/PID/stat line (field 22, counted after the last `)`).
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; field 22 is the 20th of those.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Start time of process `pid`, `None` if it does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A held repository lock; released on drop.
pub struct RepoLock {
    file: File,
    path: PathBuf,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoLock({})", self.path.display())
    }
}

/// Result of one attempt.
enum Attempt {
    Got(RepoLock),
    Busy(String),
    Retry,
}

impl RepoLock {
    /// Takes the lock now or fails with [`Error::Locked`] naming the holder.
    pub fn try_acquire(repo: &Path, command: &str) -> Result<RepoLock> {
        for _ in 0..8 {
            match Self::attempt(repo, command)? {
                Attempt::Got(l) => return Ok(l),
                Attempt::Busy(holder) => {
                    return Err(Error::Locked {
                        path: repo.to_path_buf(),
                        holder,
                    })
                }
                Attempt::Retry => continue,
            }
        }
        Err(Error::Locked {
            path: repo.to_path_buf(),
            holder: "processes that keep replacing its lock file".into(),
        })
    }

    /// Waits up to `timeout` for the lock, then fails with [`Error::LockTimeout`].
    pub fn acquire_wait(repo: &Path, command: &str, timeout: Duration) -> Result<RepoLock> {
        let start = Instant::now();
        loop {
            match Self::try_acquire(repo, command) {
                Err(Error::Locked { holder, .. }) => {
                    if start.elapsed() >= timeout {
                        return Err(Error::LockTimeout {
                            path: repo.to_path_buf(),
                            holder,
                            secs: start.elapsed().as_secs_f64(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn attempt(repo: &Path, command: &str) -> Result<Attempt> {
        let path = repo.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        if flock_nb(&file) {
            if !same_file(&file, &path) {
                return Ok(Attempt::Retry);
            }
            let previous = read_all(&file);
            if let Some(prev) = Holder::parse(&previous) {
                log::warn!(
                    "{}: the previous lock holder, {}, ended without releasing it; taking over",
                    repo.display(),
                    prev.describe()
                );
            }
            let lock = RepoLock { file, path };
            lock.write_holder(command)?;
            return Ok(Attempt::Got(lock));
        }
        let text = read_all(&file);
        let Some(holder) = Holder::parse(&text) else {
            return Ok(Attempt::Busy(
                "a process that has not written its name yet".into(),
            ));
        };
        if holder.may_be_alive() {
            return Ok(Attempt::Busy(holder.describe()));
        }
        // The named holder is dead but its flock lives on in some inherited descriptor:
        // put a fresh, locked lock file in its place.
        let fresh_path = repo.join(format!(".{LOCK_FILE}.new.{}", std::process::id()));
        let _ = std::fs::remove_file(&fresh_path);
        let fresh = open_lock_file(&fresh_path)?;
        if !flock_nb(&fresh) {
            return Ok(Attempt::Retry);
        }
        std::fs::rename(&fresh_path, &path)
            .ctx(|| format!("replacing lock file {}", path.display()))?;
        if !same_file(&fresh, &path) {
            return Ok(Attempt::Retry);
        }
        log::warn!(
            "{}: lock holder {} is dead but its lock was still held; took it over",
            repo.display(),
            holder.describe()
        );
        let lock = RepoLock { file: fresh, path };
        lock.write_holder(command)?;
        Ok(Attempt::Got(lock))
    }

    fn write_holder(&self, command: &str) -> Result<()> {
        let text = Holder::current(command).to_text();
        self.file
            .set_len(0)
            .and_then(|_| self.file.write_all_at(text.as_bytes(), 0))
            .ctx(|| format!("writing lock file {}", self.path.display()))
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // An empty lock file tells the next holder that this one finished cleanly.
        let _ = self.file.set_len(0);
        // Closing the descriptor releases the flock.
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

fn flock_nb(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_all(file: &File) -> String {
    let mut s = String::new();
    let mut f = file;
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

/// The current holder named in a repository's lock file, if it is held.
pub fn current_holder(repo: &Path) -> Option<Holder> {
    let path = repo.join(LOCK_FILE);
    let file = File::open(&path).ok()?;
    let h = Holder::parse(&read_all(&file))?;
    h.may_be_alive().then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_is_found_after_the_last_parenthesis() {
        let stat = "4242 (evil) name) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start_time(stat), Some(987654));
        assert_eq!(parse_stat_start_time("1 (init) S 0"), None);
        assert!(process_start_time(std::process::id()).is_some());
    }

    #[test]
    fn holder_text_round_trips_and_describes() {
        let h = Holder::current("snarf backup");
        let back = Holder::parse(&h.to_text()).unwrap();
        assert_eq!(back, h);
        assert!(back.describe().contains(&format!("pid {}", h.pid)));
        assert!(back.describe().contains("snarf backup"));
        assert!(back.may_be_alive());
        assert_eq!(Holder::parse(""), None);
    }

    #[test]
    fn second_locker_is_told_the_holder_and_gets_it_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let a = RepoLock::try_acquire(dir.path(), "snarf backup").unwrap();
        let err = RepoLock::try_acquire(dir.path(), "snarf prune").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(
            msg.contains("snarf backup") && msg.contains("wait for it to finish"),
            "{msg}"
        );
        let t = std::thread::spawn({
            let p = dir.path().to_path_buf();
            move || RepoLock::acquire_wait(&p, "snarf prune", Duration::from_secs(10)).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(a);
        t.join().unwrap().unwrap();
        let _b = RepoLock::try_acquire(dir.path(), "x").unwrap();
        let e = RepoLock::acquire_wait(dir.path(), "y", Duration::from_millis(120)).unwrap_err();
        assert!(matches!(e, Error::LockTimeout { .. }));
    }

    #[test]
    fn lock_held_in_the_name_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A finished child gives a pid that is certainly dead.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = open_lock_file(&dir.path().join(LOCK_FILE)).unwrap();
        assert!(flock_nb(&stale));
        let h = Holder {
            pid: dead,
            start_time: 1,
            host: hostname(),
            command: "snarf backup".into(),
            since: 0,
        };
        stale.write_all_at(h.to_text().as_bytes(), 0).unwrap();
        let got = RepoLock::try_acquire(dir.path(), "snarf prune").unwrap();
        let now = current_holder(dir.path()).unwrap();
        assert_eq!(now.pid, std::process::id());
        drop(got);
        drop(stale);
    }
}
