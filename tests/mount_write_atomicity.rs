//! Mount tests of the snapshot instant against writes in flight: with live/ in its default
//! direct-I/O mode, a write(2) that is not page-aligned and one of a whole MiB are each
//! entirely in or entirely out of a snapshot taken while they run, never cut in two (the
//! kernel's buffered path sends such writes as several requests). Also that shared mmap of
//! a live volume still works in that mode (SQLite's -shm files need it).

mod mounted;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mounted::Mounted;

/// Writes `[n; len]` at `offset` for n = 1, 2, ... until told to stop, each with one
/// pwrite(2) from a buffer that is deliberately not page-aligned in memory either.
fn writer(
    path: std::path::PathBuf,
    offset: u64,
    len: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU32>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let mut backing = vec![0u8; len + 4096 + 17];
        let mut n: u8 = 0;
        while !stop.load(Ordering::Relaxed) {
            n = n.wrapping_add(1).max(1);
            let buf = &mut backing[17..17 + len];
            buf.fill(n);
            f.write_all_at(buf, offset).unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Takes `rounds` snapshots while writes of `len` bytes at `offset` run, and checks that
/// each snapshot holds one whole write there (every byte the same value).
fn snapshots_hold_whole_writes(m: &Mounted, offset: u64, len: usize, rounds: usize) {
    let vol = m.path("live/v.img");
    fs::write(&vol, vec![0u8; 4 << 20]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let w = writer(vol.clone(), offset, len, stop.clone(), done.clone());
    let mut split = None;
    for round in 0..rounds {
        // Wait until the writer is in its loop, so every snapshot lands among writes.
        let before = done.load(Ordering::Relaxed);
        let start = Instant::now();
        while done.load(Ordering::Relaxed) == before && start.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        let snap = m.path(&format!("snapshots/s{round}"));
        fs::create_dir(&snap).unwrap();
        let f = fs::File::open(snap.join("v.img")).unwrap();
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, offset).unwrap();
        drop(f);
        fs::remove_dir(&snap).unwrap();
        let first = got[0];
        if let Some(at) = got.iter().position(|&b| b != first) {
            split = Some((round, at, first, got[at]));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    if let Some((round, at, a, b)) = split {
        panic!(
            "snapshot {round} holds a write of {len} bytes at {offset} cut in two: byte {at} \
             is from write {b}, the bytes before it from write {a}"
        );
    }
    assert!(
        done.load(Ordering::Relaxed) as usize > rounds,
        "the writer should have run throughout"
    );
}

#[test]
fn an_unaligned_write_is_entirely_in_or_out_of_a_snapshot() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    // 100 KiB starting 784 bytes into a page: the buffered path sends its first 3312
    // bytes as a request of their own.
    snapshots_hold_whole_writes(&m, 65536 + 784, 100 << 10, 150);
}

#[test]
fn a_write_of_up_to_max_write_is_entirely_in_or_out_of_a_snapshot() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    // One page short of max_write (1 MiB), at an unaligned offset and from an unaligned
    // buffer: the largest write that is one request whatever its alignment.
    snapshots_hold_whole_writes(&m, 12345, (1 << 20) - 4096, 60);
}

#[test]
fn a_live_volume_can_be_mapped_shared_in_direct_io_mode() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let vol = m.path("live/map.img");
    fs::write(&vol, vec![0u8; 1 << 20]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol)
        .unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: a fresh shared mapping of 1 MiB of an open file, unmapped below; nothing
    // else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "shared mmap of a live volume failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: p maps 1 MiB; byte 4096 is inside it.
    unsafe {
        *(p as *mut u8).add(4096) = 0xAB;
        assert_eq!(libc::msync(p, 1 << 20, libc::MS_SYNC), 0);
        libc::munmap(p, 1 << 20);
    }
    drop(f);
    let data = fs::read(&vol).unwrap();
    assert_eq!(
        data[4096], 0xAB,
        "a write through the map reached the volume"
    );
}
