//! Processes, through rustix: who this process runs as, signals sent by pid or by pidfd, and
//! whether a pidfd's process has exited. A pid snarf holds is a `u32`; one that is 0 or does
//! not fit a `pid_t` names no single process (kill(2) would take it as a process group or
//! every process), so it is refused with ESRCH, never sent.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags};

pub use rustix::process::Signal;

/// The real user id of this process.
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The real group id of this process.
pub fn gid() -> u32 {
    rustix::process::getgid().as_raw()
}

/// The effective user id of this process (0: it may do what root may).
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The process `pid`, if the number can name exactly one.
fn one_process(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// Sends `sig` to the process `pid`.
pub fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    Ok(rustix::process::kill_process(one_process(pid)?, sig)?)
}

/// A pidfd for the process `pid`: signals sent through it reach that process or none, even
/// once its pid is reused.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        one_process(pid)?,
        PidfdFlags::empty(),
    )?)
}

/// Sends `sig` to the process of a pidfd.
pub fn pidfd_signal(pidfd: &impl AsFd, sig: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, sig)?)
}

/// Whether the process of a pidfd has exited (reaped or not), without waiting.
pub fn pidfd_exited(pidfd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_names_a_group_or_everyone_is_never_signalled() {
        for pid in [0u32, u32::MAX, 1 << 31] {
            let e = kill(pid, Signal::TERM).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{pid}");
            assert!(pidfd_open(pid).is_err(), "{pid}");
        }
    }

    #[test]
    fn signals_reach_a_child_by_pid_and_by_pidfd() {
        let mut a = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = pidfd_open(b.id()).unwrap();
        assert!(!pidfd_exited(&fd));
        kill(a.id(), Signal::TERM).unwrap();
        pidfd_signal(&fd, Signal::KILL).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(a.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert_eq!(b.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(pidfd_exited(&fd));
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(
            (me.uid(), me.gid()),
            (euid(), rustix::process::getegid().as_raw())
        );
        // Nothing here changes ids, so real and effective agree.
        assert_eq!(
            (uid(), gid()),
            (euid(), rustix::process::getegid().as_raw())
        );
    }
}
