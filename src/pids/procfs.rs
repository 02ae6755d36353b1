//! What the registry needs to know about processes, read from /proc: a process's start
//! time and parent, the boot id, whether a process runs the same snarf binary (also when
//! that binary has since been replaced on disk), its user and PID namespace, and the helper
//! marker in its environment. Missing processes are `None`, never errors, because processes
//! vanish between any two reads.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable that marks a process as a helper of the store whose `run/` folder
/// it names; only marked processes can be stopped as leftover helpers.
pub const HELPER_ENV: &str = "SNARF_HELPER_OF";

/// The fields of /proc/PID/stat the registry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// State letter (field 3): R, S, D, Z, ...
    pub state: char,
    /// Parent pid (field 4).
    pub ppid: u32,
    /// Start time in clock ticks since boot (field 22).
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped, or dead).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of /proc/PID/stat. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so the fixed fields start after the LAST `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let close = text
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command name".to_string())?;
    // Fields 3.. of the stat line; field N is at index N - 3.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| format!("only {} fields after the command name", fields.len()))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| "empty state field".to_string())?;
    let ppid = field(4)?
        .parse()
        .map_err(|e| format!("parent pid (field 4): {e}"))?;
    let start_time = field(22)?
        .parse()
        .map_err(|e| format!("start time (field 22): {e}"))?;
    Ok(Stat {
        state,
        ppid,
        start_time,
    })
}

/// Reads /proc/PID/stat; `Ok(None)` if no such process exists.
pub fn read_stat(pid: u32) -> io::Result<Option<Stat>> {
    read_stat_at(&Path::new("/proc").join(pid.to_string()))
}

fn read_stat_at(dir: &Path) -> io::Result<Option<Stat>> {
    let text = match std::fs::read_to_string(dir.join("stat")) {
        Ok(t) => t,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_stat(&text).map(Some).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}/stat is not understood: {why}", dir.display()),
        )
    })
}

/// Errors that mean "the process is gone" rather than "something is wrong".
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// The kernel's boot id, which changes at every boot, so entries from before a reboot are
/// recognised as dead even if their pid and start time happen to match.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// This process's pid and start time.
pub fn self_identity() -> io::Result<(u32, u64)> {
    let pid = std::process::id();
    let stat = read_stat_at(Path::new("/proc/self"))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "/proc/self/stat is missing"))?;
    Ok((pid, stat.start_time))
}

/// A process's command line, one element per argument (lossy UTF-8); empty if unreadable.
pub fn cmdline(pid: u32) -> Vec<String> {
    read_cmdline(&Path::new("/proc").join(pid.to_string()))
}

fn read_cmdline(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join("cmdline"))
        .map(|bytes| split_nul(&bytes))
        .unwrap_or_default()
}

/// Splits a NUL-separated /proc list (cmdline, environ).
fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// This process's own command line.
pub fn self_cmdline() -> Vec<String> {
    read_cmdline(Path::new("/proc/self"))
}

/// The PID namespace a process is in (the inode of `/proc/PID/ns/pid`); `None` when it
/// cannot be read (gone, or another user's process).
fn pid_namespace_at(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("ns/pid")).ok().map(|m| m.ino())
}

/// This process's PID namespace. Pids recorded in one namespace mean other processes in
/// another, so entries carry it.
pub fn self_pid_namespace() -> Option<u64> {
    pid_namespace_at(Path::new("/proc/self"))
}

/// The `Uid:` line of /proc/PID/status: the process's uid when its real, effective, saved
/// and filesystem uids all agree; `None` otherwise (a setuid process in transition is not
/// anyone's to stop) or when unreadable.
fn uid_at(dir: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    parse_uid(&status)
}

/// Parses the uid out of /proc/PID/status text; see [`uid_at`].
pub fn parse_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    let first = *ids.first()?;
    (ids.len() == 4 && ids.iter().all(|&u| u == first)).then_some(first)
}

/// The `NSpid:` line of /proc/PID/status: the process's pid in each PID namespace it is in,
/// outermost first (so the last one is the pid it sees itself as).
pub fn parse_nspid(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether this process is in the initial PID namespace, from which every process of the
/// machine is visible (its `NSpid:` line has a single pid).
pub fn in_initial_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| parse_nspid(&s).len() == 1)
        .unwrap_or(false)
}

/// What `/proc/PID/exe` says a process runs: the path, with the kernel's " (deleted)" suffix
/// taken off and remembered (the file was replaced or removed since it started).
fn exe_path(dir: &Path) -> Option<(PathBuf, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let link = std::fs::read_link(dir.join("exe")).ok()?;
    match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(rest) => Some((PathBuf::from(std::ffi::OsStr::from_bytes(rest)), true)),
        None => Some((link, false)),
    }
}

/// Whether a process runs the same snarf as this one: the very same file, or a file at the
/// same path that was replaced since one of the two started (an upgrade while jobs run), so
/// `/proc/PID/exe` of one of them ends in " (deleted)".
pub fn same_executable(
    own: (u64, u64),
    own_path: Option<&(PathBuf, bool)>,
    theirs: Option<(u64, u64)>,
    their_path: Option<&(PathBuf, bool)>,
) -> bool {
    if theirs == Some(own) {
        return true;
    }
    match (own_path, their_path) {
        (Some((a, a_deleted)), Some((b, b_deleted))) => a == b && (*a_deleted || *b_deleted),
        _ => false,
    }
}

/// A live process as the idle policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
    /// Whether it runs the same snarf executable as this process (/proc/PID/exe; see
    /// [`same_executable`]).
    pub same_binary: bool,
    /// Its uid, when real, effective, saved and filesystem uids agree.
    pub uid: Option<u32>,
    /// Its PID namespace (inode of /proc/PID/ns/pid), when readable.
    pub pid_ns: Option<u64>,
    /// The `run/` folder named by its [`HELPER_ENV`] variable, if it has one.
    pub helper_of: Option<PathBuf>,
    /// Its command line.
    pub cmdline: Vec<String>,
}

/// Where the idle policy gets its list of processes; tests substitute their own.
pub trait ProcessSource {
    /// Every live (not exited) process the policy may consider.
    fn processes(&self) -> io::Result<Vec<ProcessInfo>>;
}

/// The real process table, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcFs;

impl ProcessSource for ProcFs {
    fn processes(&self) -> io::Result<Vec<ProcessInfo>> {
        let own_exe = std::fs::metadata("/proc/self/exe").map(|m| (m.dev(), m.ino()))?;
        let own_path = exe_path(Path::new("/proc/self"));
        let mut out = Vec::new();
        for dirent in std::fs::read_dir("/proc")? {
            let Ok(dirent) = dirent else { continue };
            let Some(pid) = dirent
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = dirent.path();
            // Any read may fail because the process just exited or belongs to someone
            // else; such a process is simply not considered.
            let Ok(Some(stat)) = read_stat_at(&dir) else {
                continue;
            };
            if stat.exited() {
                continue;
            }
            let theirs = std::fs::metadata(dir.join("exe"))
                .ok()
                .map(|m| (m.dev(), m.ino()));
            let same_binary =
                same_executable(own_exe, own_path.as_ref(), theirs, exe_path(&dir).as_ref());
            // The environment is only read for our own binary: it is all the policy needs.
            let helper_of = if same_binary {
                helper_marker(&dir)
            } else {
                None
            };
            out.push(ProcessInfo {
                pid,
                ppid: stat.ppid,
                start_time: stat.start_time,
                same_binary,
                uid: uid_at(&dir),
                pid_ns: pid_namespace_at(&dir),
                helper_of,
                cmdline: read_cmdline(&dir),
            });
        }
        Ok(out)
    }
}

fn helper_marker(dir: &Path) -> Option<PathBuf> {
    let env = std::fs::read(dir.join("environ")).ok()?;
    let prefix = format!("{HELPER_ENV}=");
    split_nul(&env)
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&prefix).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &str, state: char, ppid: u32, start: u64) -> String {
        // Fields 5..21 are filler; field 22 is the start time.
        let filler: Vec<String> = (5..22).map(|n| n.to_string()).collect();
        format!(
            "4242 ({comm}) {state} {ppid} {} {start} 23 24 25\n",
            filler.join(" ")
        )
    }

    #[test]
    fn start_time_is_found_after_the_last_paren() {
        for comm in ["snarf", "a b", "evil) 1 2 3 (x", "))", "(", "x) R 9 9"] {
            let s = parse_stat(&stat_line(comm, 'S', 77, 123456)).unwrap();
            assert_eq!(
                s,
                Stat {
                    state: 'S',
                    ppid: 77,
                    start_time: 123456
                },
                "{comm:?}"
            );
        }
    }

    #[test]
    fn malformed_stat_is_an_error_with_reason() {
        assert!(parse_stat("4242 snarf S 1").unwrap_err().contains("')'"));
        assert!(parse_stat("4242 (snarf) S 1 2")
            .unwrap_err()
            .contains("fields"));
        let bad = stat_line("x", 'S', 1, 0).replace(" 0 23", " zz 23");
        assert!(parse_stat(&bad).unwrap_err().contains("field 22"));
    }

    #[test]
    fn zombie_counts_as_exited() {
        let s = parse_stat(&stat_line("x", 'Z', 1, 5)).unwrap();
        assert!(s.exited());
        assert!(!parse_stat(&stat_line("x", 'R', 1, 5)).unwrap().exited());
    }

    #[test]
    fn reads_this_process() {
        let (pid, start) = self_identity().unwrap();
        assert_eq!(pid, std::process::id());
        let stat = read_stat(pid).unwrap().unwrap();
        assert_eq!(stat.start_time, start);
        assert!(!boot_id().unwrap().is_empty());
        assert!(!self_cmdline().is_empty());
        // pid_max is at most 2^22, so this pid cannot exist.
        assert_eq!(read_stat(u32::MAX - 1).unwrap(), None);
    }

    #[test]
    fn procfs_lists_this_process_as_same_binary() {
        let me = std::process::id();
        let all = ProcFs.processes().unwrap();
        let mine = all.iter().find(|p| p.pid == me).unwrap();
        assert!(mine.same_binary);
        assert!(all.iter().any(|p| p.pid == mine.ppid || mine.ppid == 0));
        // SAFETY: getuid cannot fail.
        assert_eq!(mine.uid, Some(crate::sys::proc::uid()));
        assert_eq!(mine.pid_ns, self_pid_namespace());
        assert!(mine.pid_ns.is_some());
    }

    #[test]
    fn uid_and_nspid_lines() {
        let status =
            "Name:\tsnarf\nUid:\t1000\t1000\t1000\t1000\nGid:\t5\t5\t5\t5\nNSpid:\t4242\t7\n";
        assert_eq!(parse_uid(status), Some(1000));
        assert_eq!(parse_nspid(status), vec![4242, 7]);
        // A process whose uids disagree (setuid) or that has no Uid line is nobody's.
        assert_eq!(parse_uid("Uid:\t1000\t0\t0\t0\n"), None);
        assert_eq!(parse_uid("Uid:\t1000\n"), None);
        assert_eq!(parse_uid("Name: x\n"), None);
        assert_eq!(parse_nspid("Name: x\n"), Vec::<u32>::new());
    }

    #[test]
    fn a_replaced_binary_at_the_same_path_is_still_snarf() {
        let p = |s: &str, d: bool| Some((PathBuf::from(s), d));
        let own = (1, 10);
        // Same file.
        assert!(same_executable(own, None, Some((1, 10)), None));
        // Upgraded while running: one side's exe link ends in " (deleted)".
        assert!(same_executable(
            own,
            p("/usr/bin/snarf", false).as_ref(),
            Some((1, 11)),
            p("/usr/bin/snarf", true).as_ref()
        ));
        assert!(same_executable(
            own,
            p("/usr/bin/snarf", true).as_ref(),
            Some((1, 11)),
            p("/usr/bin/snarf", false).as_ref()
        ));
        // Another program, or another file at the same path that nobody replaced.
        assert!(!same_executable(
            own,
            p("/usr/bin/snarf", false).as_ref(),
            Some((1, 12)),
            p("/usr/bin/sleep", true).as_ref()
        ));
        assert!(!same_executable(
            own,
            p("/usr/bin/snarf", false).as_ref(),
            Some((2, 10)),
            p("/usr/bin/snarf", false).as_ref()
        ));
        assert!(!same_executable(own, None, None, None));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(exe_path(dir.path()), None);
    }
}
