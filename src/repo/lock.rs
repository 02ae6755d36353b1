//! The repository lock: two writers (backup, prune, finishing, repair) never interleave. It
//! is a flock(2) on `REPO/lock`, and a held flock means the lock is held, whatever the file
//! says: the kernel drops a flock only when the last descriptor of its holder is closed, so
//! it is the one proof of liveness that works across PID namespaces, containers and a holder
//! killed with kill -9 (whose name stays in the file until the next holder overwrites it).
//! The file's contents name the holder (pid, process start time, PID namespace, host,
//! command) and are only information for messages; they never decide who holds the lock.
//! The descriptor is close-on-exec, so a child process never inherits the lock. Readers take
//! no lock.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{Error, IoContext, Result};
use super::ids::{format_utc, now_secs};
use crate::sys::lock as sys_lock;

/// Name of the lock file in a repository.
pub const LOCK_FILE: &str = "lock";

/// Who holds (or held) the lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id, as seen in the holder's own PID namespace.
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// The holder's PID namespace (`pid:[4026531836]`), empty if unknown.
    pub pid_ns: String,
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
            pid_ns: pid_namespace(),
            host: hostname(),
            command: printable(command),
            since: now_secs(),
        }
    }

    /// The lock file's text: one `key=value` per line.
    pub fn to_text(&self) -> String {
        format!(
            "pid={}\nstart_time={}\npid_ns={}\nhost={}\ncommand={}\nsince={}\n",
            self.pid, self.start_time, self.pid_ns, self.host, self.command, self.since
        )
    }

    /// Parses the lock file's text; `None` if it names no holder.
    pub fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder {
            pid: 0,
            start_time: 0,
            pid_ns: String::new(),
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
                "pid_ns" => h.pid_ns = printable(v),
                "host" => h.host = printable(v),
                "command" => h.command = printable(v),
                "since" => h.since = v.parse().ok()?,
                _ => {}
            }
        }
        (h.pid != 0).then_some(h)
    }

    /// "pid 123 (snarf backup, started 2026-11-23 10:15:00 UTC) on host x", plus the PID
    /// namespace when it is not this process's.
    pub fn describe(&self) -> String {
        format!(
            "pid {}{} ({}, started {} UTC) on host {}",
            self.pid,
            if self.in_other_pid_namespace() {
                " of another PID namespace"
            } else {
                ""
            },
            if self.command.is_empty() {
                "snarf"
            } else {
                &self.command
            },
            format_utc(self.since),
            self.host
        )
    }

    /// True when the holder recorded a PID namespace other than this process's, so its pid
    /// cannot be looked up here.
    fn in_other_pid_namespace(&self) -> bool {
        !self.pid_ns.is_empty() && self.pid_ns != pid_namespace()
    }

    /// True unless the holder is on this host, in this PID namespace, and its process is
    /// gone (or its pid now belongs to another process, seen by a different start time).
    /// Only for messages: a process in another PID namespace or container looks gone to
    /// an older holder's record, so this never decides who holds the lock.
    pub fn may_be_alive(&self) -> bool {
        if self.host != hostname() || self.in_other_pid_namespace() {
            return true;
        }
        match process_start_time(self.pid) {
            None => false,
            Some(t) => self.start_time == 0 || t == self.start_time,
        }
    }
}

/// `s` without control characters, so a name read from the lock file cannot break a line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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

/// This process's PID namespace, e.g. `pid:[4026531836]`; empty if /proc does not say.
pub fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| printable(&p.to_string_lossy()))
        .unwrap_or_default()
}

/// This machine's host name.
pub fn hostname() -> String {
    // uname(2)'s node name is what gethostname(2) returns, and uname cannot fail.
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
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

/// Attempts of `try_acquire` on a busy lock before it gives up, and the pause between
/// them: [`is_held`] takes a shared flock for an instant, which must not make a writer
/// fail.
const BUSY_ATTEMPTS: u32 = 4;
const BUSY_PAUSE: Duration = Duration::from_millis(5);

impl RepoLock {
    /// Takes the lock now or fails with [`Error::Locked`] naming the holder.
    pub fn try_acquire(repo: &Path, command: &str) -> Result<RepoLock> {
        let mut busy = 0;
        for _ in 0..8 {
            match Self::attempt(repo, command)? {
                Attempt::Got(l) => return Ok(l),
                Attempt::Busy(holder) => {
                    busy += 1;
                    if busy >= BUSY_ATTEMPTS {
                        return Err(Error::Locked {
                            path: repo.to_path_buf(),
                            holder,
                        });
                    }
                    std::thread::sleep(BUSY_PAUSE);
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
        let got = sys_lock::try_lock(&file, sys_lock::Kind::Exclusive)
            .ctx(|| format!("locking {}", path.display()))?;
        if !got {
            // Held: by whom is only for the message.
            return Ok(Attempt::Busy(describe_busy(&read_all(&file))));
        }
        // An older snarf replaced a lock file by renaming a new one over it; the flock on
        // the replaced file guards nothing.
        if !same_file(&file, &path) {
            return Ok(Attempt::Retry);
        }
        if let Some(prev) = Holder::parse(&read_all(&file)) {
            log::warn!(
                "{}: the previous lock holder, {}, ended without releasing it; taking over",
                repo.display(),
                prev.describe()
            );
        }
        let lock = RepoLock { file, path };
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

/// Who holds a lock whose flock is taken, from the lock file's text (which may be a dead
/// holder's name, or empty: a new holder writes its name just after taking the flock).
fn describe_busy(text: &str) -> String {
    match Holder::parse(text) {
        None => "a process that has not written its name yet".into(),
        Some(h) if h.may_be_alive() => h.describe(),
        Some(h) => format!(
            "a process that has not written its name yet (the lock file still names {}, which is gone; a process in another PID namespace or container also looks gone from here)",
            h.describe()
        ),
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
    // Not through a symlink: a planted link must not make snarf truncate another file.
    // Close-on-exec (the default of std) keeps the flock from being inherited.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_all(file: &File) -> String {
    // The file holds a few short lines; more is not a lock file written by snarf.
    let mut buf = Vec::new();
    let mut f = file;
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
    let _ = f.take(4096).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether some process holds the repository's lock now, judged by its flock alone. Takes
/// a shared flock for an instant, which [`RepoLock::try_acquire`] waits out.
pub fn is_held(repo: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(repo.join(LOCK_FILE))
    else {
        return false;
    };
    // An error other than "held" (no flock support) says nothing; treat it as free.
    matches!(sys_lock::try_lock(&file, sys_lock::Kind::Shared), Ok(false))
}

/// The holder named in a repository's lock file, if its lock is held (a held lock whose
/// file names no one yet is described as such).
pub fn current_holder(repo: &Path) -> Option<String> {
    if !is_held(repo) {
        return None;
    }
    let text = File::open(repo.join(LOCK_FILE))
        .map(|f| read_all(&f))
        .unwrap_or_default();
    Some(describe_busy(&text))
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
    fn a_held_lock_is_never_taken_over_whatever_its_file_names() {
        let dir = tempfile::tempdir().unwrap();
        // A finished child gives a pid that is certainly dead.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let h = Holder {
            pid: dead,
            start_time: 1,
            pid_ns: pid_namespace(),
            host: hostname(),
            command: "snarf backup".into(),
            since: 0,
        };
        assert!(!h.may_be_alive());
        // A holder that took the flock but still shows the dead one's name.
        let held = open_lock_file(&dir.path().join(LOCK_FILE)).unwrap();
        assert!(sys_lock::try_lock(&held, sys_lock::Kind::Exclusive).unwrap());
        held.write_all_at(h.to_text().as_bytes(), 0).unwrap();
        assert!(is_held(dir.path()));
        let err = RepoLock::try_acquire(dir.path(), "snarf prune").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {dead}")) && msg.contains("not written its name"),
            "{msg}"
        );
        assert!(current_holder(dir.path())
            .unwrap()
            .contains("not written its name"));
        // A holder of another PID namespace is described as such, never as dead.
        let other = Holder {
            pid_ns: "pid:[1]".into(),
            ..h.clone()
        };
        held.set_len(0).unwrap();
        held.write_all_at(other.to_text().as_bytes(), 0).unwrap();
        assert!(other.may_be_alive());
        let msg = RepoLock::try_acquire(dir.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("of another PID namespace"), "{msg}");
        // Released: the next holder takes it and replaces the name.
        drop(held);
        assert!(!is_held(dir.path()));
        assert_eq!(current_holder(dir.path()), None);
        let got = RepoLock::try_acquire(dir.path(), "snarf prune").unwrap();
        let now =
            Holder::parse(&std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        assert!(current_holder(dir.path()).unwrap().contains("snarf prune"));
        drop(got);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(RepoLock::try_acquire(dir.path(), "x").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }

    #[test]
    fn control_characters_in_the_lock_file_do_not_reach_messages() {
        let h = Holder::parse("pid=7\ncommand=evil\x1b[2J\rname\nhost=h\x07\n").unwrap();
        assert!(
            !h.describe().chars().any(|c| c.is_control()),
            "{:?}",
            h.describe()
        );
    }
}
