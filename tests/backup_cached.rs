//! The feed's cached tier on a real mount: a volume is written and evicted from the page
//! cache, a reader brings a scattered quarter of it back in through `live/`, and a backup
//! of a snapshot then sends that quarter from memory (the summary counts it) and makes the
//! daemon read from disk only the rest.

mod mounted;

use std::fs;
use std::os::unix::fs::FileExt;

use mounted::{snarf_ok, Mounted};
use snarf::sys::pagecache;

const SNARF: u64 = 64 << 10;
const SNARFS: u64 = 1024;

/// Bytes the process `pid` made the block layer read (`read_bytes` of /proc/PID/io).
fn disk_read_bytes(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).expect("reading /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no read_bytes in {io}"))
}

/// Incompressible-looking bytes, different in every snarf.
fn contents(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

/// The count of snarfs the summary says came from memory.
fn cached_count(summary: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("sent ")?.split_once(" already in memory"))
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of snarfs sent from memory in {summary:?}"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[test]
fn a_backup_sends_what_a_reader_brought_into_memory_first_and_reads_only_the_rest() {
    let Some(m) = Mounted::new(&["--snarf-size", "64K"], &[]) else {
        return;
    };
    let pid = m.daemon_pid.expect("daemon pid");
    let repo = m.dir.path().join("repo");
    snarf_ok(&["repo", "init", repo.to_str().unwrap()]);
    let size = SNARFS * SNARF;
    let live = m.path("live/vm.img");
    fs::write(&live, contents(size as usize)).unwrap();
    fs::File::open(&live).unwrap().sync_all().unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();

    // Cold start: the store's file of the volume leaves the page cache.
    let backing = fs::File::open(m.store.join("volumes/vm.img")).unwrap();
    backing.sync_all().unwrap();
    pagecache::evict(&backing, 0, size).unwrap();
    let pages = size / pagecache::page_size();
    let left = pagecache::cached_pages(&backing, 0, size).unwrap();
    assert!(
        left < pages / 100,
        "{left} of {pages} pages still cached after eviction"
    );

    // A reader brings a scattered quarter of the snarfs in through live/.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut hot = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    while hot.len() < (SNARFS / 4) as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if hot.insert(x % SNARFS) {
            order.push(x % SNARFS);
        }
    }
    // In random order, so the kernel's readahead sees no sequence to extend.
    let reader = fs::File::open(&live).unwrap();
    let mut buf = vec![0u8; SNARF as usize];
    for &s in &order {
        reader.read_exact_at(&mut buf, s * SNARF).unwrap();
    }
    drop(reader);
    let cached = pagecache::cached_pages(&backing, 0, size).unwrap() * pagecache::page_size();
    let hot_bytes = hot.len() as u64 * SNARF;
    assert!(
        cached >= hot_bytes && cached < hot_bytes + size / 8,
        "{} MiB of the volume file cached after reading {} MiB",
        mib(cached),
        mib(hot_bytes)
    );

    let before = disk_read_bytes(pid);
    let out = snarf_ok(&[
        "backup",
        m.mnt.to_str().unwrap(),
        "s",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    let read = disk_read_bytes(pid) - before;
    let from_memory = cached_count(&out);
    eprintln!(
        "{from_memory} of {SNARFS} snarfs sent from memory; the daemon read {:.1} MiB from disk \
         for a {:.1} MiB volume with {:.1} MiB cached",
        mib(read),
        mib(size),
        mib(cached)
    );
    // Every hot snarf went out from memory (readahead may have brought a few more in whole).
    assert!(
        from_memory >= hot.len() as u64 && from_memory <= hot.len() as u64 + SNARFS / 16,
        "{from_memory} snarfs sent from memory, {} were read: {out}",
        hot.len()
    );
    // The daemon read from disk what was not cached, give or take 4 MiB of readahead and
    // metadata, and certainly not the hot quarter again.
    let uncached = size - cached;
    assert!(
        read + (4 << 20) >= uncached && read <= uncached + (4 << 20),
        "the daemon read {:.1} MiB from disk, {:.1} MiB were not cached",
        mib(read),
        mib(uncached)
    );
    assert!(read < size - hot_bytes / 2, "{:.1} MiB read", mib(read));
}
