//! Which snarfs of a volume are already in memory: the feed's middle tier hands those out
//! before cold ones, so a backup on a busy system reads from the page cache what the live
//! workload brought in, and from disk only the rest. [`Residency`] is the question (tests
//! answer it with a fake); [`PageCache`] answers it from the kernel.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::store::Volume;
use crate::sys::pagecache;

/// Bytes of a volume probed at a time: the feed keeps at most this much of the answer
/// (one index per resident snarf), so memory stays small for a terabyte volume.
pub const WINDOW_BYTES: u64 = 64 << 20;

/// Tells which snarfs of a volume's backing file are wholly in memory.
pub trait Residency: Send + Sync {
    /// Bytes of a volume asked about at once (the feed holds at most one window's answer).
    fn window_bytes(&self) -> u64 {
        WINDOW_BYTES
    }

    /// Of `snarfs` (ascending, all within one window of [`Residency::window_bytes`]) of `volume`, those
    /// whose bytes in the backing file are all in the page cache, ascending. A snarf past
    /// the end of the file (a hole) is not resident. An error turns the tier off for the
    /// feed that asked (the rest go out in disk order).
    fn resident(&self, volume: &Volume, snarfs: &[u64]) -> io::Result<Vec<u64>>;
}

const CACHESTAT: u8 = 1;
const MINCORE: u8 = 2;

/// The kernel's page cache: `cachestat(2)` (Linux 6.5+), else `mincore(2)` on a mapping of
/// the window; which one works is learned at the first call (`how` starts at 0, untried).
#[derive(Debug, Default)]
pub struct PageCache {
    how: AtomicU8,
}

impl PageCache {
    /// One that asks `mincore(2)` only, as on a kernel before 6.5.
    pub fn mincore_only() -> PageCache {
        PageCache {
            how: AtomicU8::new(MINCORE),
        }
    }

    fn by_cachestat(&self, volume: &Volume, snarfs: &[u64], end: u64) -> io::Result<Vec<u64>> {
        let (file, ss, page) = (volume.file(), volume.snarf_size(), pagecache::page_size());
        let (Some(&first), Some(&last)) = (snarfs.first(), snarfs.last()) else {
            return Ok(Vec::new());
        };
        let span_start = first * ss;
        let span_end = ((last + 1) * ss).min(end);
        // One call answers "nothing here" for the whole window, the common case.
        if span_start >= span_end
            || pagecache::cached_pages(file, span_start, span_end - span_start)? == 0
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for &s in snarfs {
            let start = s * ss;
            let stop = (start + ss).min(end);
            if start >= stop {
                break;
            }
            let pages = (stop - start).div_ceil(page);
            if pagecache::cached_pages(file, start, stop - start)? >= pages {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn by_mincore(&self, volume: &Volume, snarfs: &[u64], end: u64) -> io::Result<Vec<u64>> {
        let (file, ss, page) = (volume.file(), volume.snarf_size(), pagecache::page_size());
        let (Some(&first), Some(&last)) = (snarfs.first(), snarfs.last()) else {
            return Ok(Vec::new());
        };
        // The mapping starts at a page boundary at or before the first snarf.
        let map_start = (first * ss) / page * page;
        let span_end = ((last + 1) * ss).min(end);
        if map_start >= span_end {
            return Ok(Vec::new());
        }
        let map = pagecache::mincore_pages(file, map_start, span_end - map_start)?;
        let mut out = Vec::new();
        for &s in snarfs {
            let start = s * ss;
            let stop = (start + ss).min(end);
            if start >= stop {
                break;
            }
            let from = ((start - map_start) / page) as usize;
            let to = ((stop - map_start).div_ceil(page)) as usize;
            if map.get(from..to).is_some_and(|p| p.iter().all(|&r| r)) {
                out.push(s);
            }
        }
        Ok(out)
    }
}

impl Residency for PageCache {
    fn resident(&self, volume: &Volume, snarfs: &[u64]) -> io::Result<Vec<u64>> {
        // The file's length now, not the volume state's (whose lock a writer may hold
        // while it tells the feed of a capture).
        let end = volume.file().metadata()?.len();
        if self.how.load(Ordering::Relaxed) != MINCORE {
            match self.by_cachestat(volume, snarfs, end) {
                Ok(r) => {
                    self.how.store(CACHESTAT, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOSYS)
                        || e.raw_os_error() == Some(libc::EPERM) =>
                {
                    log::debug!("cachestat(2) is not available ({e}); asking mincore(2)");
                    self.how.store(MINCORE, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.by_mincore(volume, snarfs, end)
    }
}
