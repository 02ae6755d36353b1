//! File locks, the one flock(2) wrapper every layer uses (the store's lock, the repository's,
//! the process registry's, the command line waiting for a daemon to let go). flock locks
//! belong to the open file description: they are let go when its last descriptor closes,
//! also when the process is killed, so a crashed holder never leaves a lock behind.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::FlockOperation;

/// Which lock to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Shared with other shared holders; excludes an exclusive one.
    Shared,
    /// Held by one open file alone.
    Exclusive,
}

/// Takes `kind` on `file` without waiting: `true` if taken, `false` if another open file
/// holds a lock that excludes it. Any other error (no lock support, say) is returned.
pub fn try_lock(file: &impl AsFd, kind: Kind) -> io::Result<bool> {
    let op = match kind {
        Kind::Shared => FlockOperation::NonBlockingLockShared,
        Kind::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(file, op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Takes `kind` on `file`, waiting as long as another holds it; a signal that interrupts
/// the wait does not end it.
pub fn lock(file: &impl AsFd, kind: Kind) -> io::Result<()> {
    let op = match kind {
        Kind::Shared => FlockOperation::LockShared,
        Kind::Exclusive => FlockOperation::LockExclusive,
    };
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn exclusive_excludes_all_shared_excludes_exclusive_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert!(try_lock(&a, Kind::Exclusive).unwrap());
        assert!(!try_lock(&b, Kind::Shared).unwrap());
        assert!(!try_lock(&b, Kind::Exclusive).unwrap());
        drop(a);
        // Closing the holder lets go.
        assert!(try_lock(&b, Kind::Shared).unwrap());
        let c = File::open(&p).unwrap();
        assert!(try_lock(&c, Kind::Shared).unwrap());
        assert!(!try_lock(&File::open(&p).unwrap(), Kind::Exclusive).unwrap());
    }

    #[test]
    fn lock_waits_for_the_holder_to_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = File::create(&p).unwrap();
        lock(&held, Kind::Exclusive).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                let f = File::open(&p).unwrap();
                lock(&f, Kind::Exclusive).unwrap();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "took a held lock"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the waiter got the lock once it was let go");
        waiter.join().unwrap();
    }
}
