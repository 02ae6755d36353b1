//! The page cache of a file: how much of a byte range is in memory (`cachestat(2)`, Linux
//! 6.5+; `mincore(2)` on a read-only mapping where that call is missing) and dropping a
//! range from it (`posix_fadvise(POSIX_FADV_DONTNEED)`). A backup's feed asks which snarfs
//! the live workload already brought in; tests and benchmarks evict a volume file to start
//! cold without `drop_caches`, which is global.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `cachestat`'s number; the same on every architecture that has it (asm-generic, x86).
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The size of a page of the page cache.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the C library; it touches no memory of ours.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Pages of `len` bytes of `file` from `offset` that are in the page cache (`cachestat(2)`).
/// `ENOSYS` where the kernel is older than 6.5 (or a filter forbids the call). A `len` of
/// 0 counts nothing (the call itself would read it as "to the end of the file").
pub fn cached_pages(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let range = CachestatRange { off: offset, len };
    let mut cs = Cachestat::default();
    loop {
        // SAFETY: the descriptor is open for the duration of the call; both structs are
        // `repr(C)` copies of the kernel's, live across it, and the kernel writes only `cs`.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut cs as *mut Cachestat,
                0u32,
            )
        };
        if r == 0 {
            return Ok(cs.nr_cache);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// For each page of `len` bytes of `file` from `offset` (page aligned), whether it is in
/// the page cache (`mincore(2)` on a read-only shared mapping of the range, unmapped before
/// returning; nothing is read through it, so no page is faulted in).
pub fn mincore_pages(file: &File, offset: u64, len: u64) -> io::Result<Vec<bool>> {
    let page = page_size();
    if !offset.is_multiple_of(page) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mincore of a range at {offset}, which is not page aligned"),
        ));
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let pages = len.div_ceil(page) as usize;
    let map_len = pages * page as usize;
    // SAFETY: a fresh mapping chosen by the kernel, never dereferenced; unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr..addr+map_len` is the mapping made above; `vec` has one byte per page.
    let r = unsafe { libc::mincore(addr, map_len, vec.as_mut_ptr()) };
    let err = (r != 0).then(io::Error::last_os_error);
    // SAFETY: unmaps exactly the mapping made above, which nothing else refers to.
    unsafe { libc::munmap(addr, map_len) };
    match err {
        Some(e) => Err(e),
        None => Ok(vec.into_iter().map(|b| b & 1 == 1).collect()),
    }
}

/// Drops `len` bytes of `file` from `offset` from the page cache (clean pages only; dirty
/// ones stay until written back, so sync first for a cold start).
pub fn evict(file: &File, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    )
    .map_err(io::Error::from)
}
