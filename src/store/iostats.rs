//! Per-volume I/O counters for metrics: reads and writes served and their bytes. Relaxed
//! atomics only, so counting costs a writer no lock and no ordering.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters a volume carries.
#[derive(Debug, Default)]
pub struct IoStats {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
}

/// A reading of [`IoStats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// Reads served.
    pub read_ops: u64,
    /// Bytes returned by reads.
    pub read_bytes: u64,
    /// Writes served.
    pub write_ops: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

impl IoStats {
    /// Counts one read of `bytes`.
    pub fn record_read(&self, bytes: usize) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one write of `bytes`.
    pub fn record_write(&self, bytes: usize) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn counts(&self) -> IoCounts {
        IoCounts {
            read_ops: self.read_ops.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_across_threads() {
        let io = std::sync::Arc::new(IoStats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let io = io.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        io.record_write(10);
                        io.record_read(3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            io.counts(),
            IoCounts {
                read_ops: 4000,
                read_bytes: 12000,
                write_ops: 4000,
                write_bytes: 40000
            }
        );
    }
}
