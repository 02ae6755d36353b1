//! Real tools on a real mount while a separate writer process keeps writing to `live/`:
//! snapshots copied with cp, rsync, tar (create, then extract) and dd bs=1M are
//! byte-identical to the volume at the instant of the snapshot, and a snapshot taken in the
//! middle of writes never shows a torn one.
//!
//! The expectation is a paused copy: the writer is stopped (SIGSTOP, and we wait until the
//! kernel reports it stopped, so no write is in flight), the snapshot is taken, the live
//! volume read as the expected content, and the writer resumed before the tool copies the
//! snapshot — so every copy runs against a volume being rewritten.

mod mounted;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mounted::{have_tool, read, sh, Mounted};

const VOLUME: u64 = 48 << 20;
/// Writer blocks: 48 KiB, so they straddle 64 KiB snarfs and share them with neighbours.
const BLOCK: u64 = 48 << 10;

/// The writer process's role: when the test binary is started with SNARF_TEST_WRITER set,
/// this "test" writes stamped blocks to that file until killed; otherwise it does nothing.
#[test]
fn writer_process_role() {
    let Ok(path) = std::env::var("SNARF_TEST_WRITER") else {
        return;
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("writer: open");
    let blocks = VOLUME / BLOCK;
    let mut seq: u64 = 1;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % blocks;
        f.write_all_at(&stamped(k, seq), k * BLOCK)
            .expect("writer: write");
        seq += 1;
    }
}

/// Block `k` written as write number `seq`: a 16-byte stamp repeated.
fn stamped(k: u64, seq: u64) -> Vec<u8> {
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&(k + 1).to_le_bytes());
    stamp[8..].copy_from_slice(&seq.to_le_bytes());
    stamp.iter().copied().cycle().take(BLOCK as usize).collect()
}

/// The writer child, killed (by its pid) when dropped.
struct Writer(Child);

impl Writer {
    fn start(volume: &Path) -> Writer {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer_process_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SNARF_TEST_WRITER", volume)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the writer");
        Writer(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Stops the writer and waits until the kernel reports every one of its threads
    /// stopped: the test harness runs the role in a thread of its own, and a thread still
    /// inside a write(2) stops only once the write has returned.
    fn pause(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
        let start = Instant::now();
        loop {
            let tasks = fs::read_dir(format!("/proc/{}/task", self.pid())).map(|d| {
                d.flatten()
                    .map(|t| {
                        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                        stat.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .chars()
                            .next()
                    })
                    .collect::<Vec<_>>()
            });
            if let Ok(states) = &tasks {
                if !states.is_empty() && states.iter().all(|s| matches!(s, Some('T') | Some('t'))) {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "writer did not stop: {tasks:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every block of a snapshot holds one whole write (or the initial fill): no torn writes.
fn assert_untorn(data: &[u8], what: &str) {
    for (k, block) in data.chunks(BLOCK as usize).enumerate() {
        let stamp = &block[..16];
        assert!(
            block.chunks(16).all(|c| c == &stamp[..c.len()]),
            "{what}: block {k} holds parts of two writes"
        );
    }
}

/// Builds the shell command that copies a snapshot file to a destination with one tool.
type CopyCommand = dyn Fn(&Path, &Path) -> String;

#[test]
fn snapshots_copied_by_cp_rsync_tar_and_dd_while_a_writer_runs() {
    if !have_tool("rsync") {
        return;
    }
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let vol = m.path("live/vm.img");
    // Start from stamped blocks (seq 0), so every block is checkable from the start.
    let mut initial = Vec::with_capacity(VOLUME as usize);
    for k in 0..VOLUME / BLOCK {
        initial.extend_from_slice(&stamped(k, 0));
    }
    fs::write(&vol, &initial).unwrap();
    let writer = Writer::start(&vol);
    std::thread::sleep(Duration::from_millis(300));
    let work = m.dir.path().join("work");
    fs::create_dir(&work).unwrap();

    let tools: [(&str, &CopyCommand); 4] = [
        ("cp", &|src, dst| {
            format!("cp {} {}", src.display(), dst.display())
        }),
        ("rsync", &|src, dst| {
            format!("rsync {} {}", src.display(), dst.display())
        }),
        ("tar", &|src, dst| {
            let tarball = dst.with_extension("tar");
            let out_dir = dst.with_extension("d");
            format!(
                "mkdir -p {od} && tar -C {sd} -cf {t} vm.img && tar -C {od} -xf {t} && mv {od}/vm.img {dst}",
                od = out_dir.display(),
                sd = src.parent().unwrap().display(),
                t = tarball.display(),
                dst = dst.display()
            )
        }),
        ("dd", &|src, dst| {
            format!(
                "dd if={} of={} bs=1M status=none",
                src.display(),
                dst.display()
            )
        }),
    ];
    for (i, (tool, command)) in tools.iter().enumerate() {
        writer.pause();
        let name = format!("s{i}-{tool}");
        fs::create_dir(m.path(&format!("snapshots/{name}"))).unwrap();
        let expected = read(&vol);
        writer.resume();
        assert_untorn(&expected, "paused live volume");
        // Let the writer get going again, so the copy races real writes.
        std::thread::sleep(Duration::from_millis(100));
        let src = m.path(&format!("snapshots/{name}/vm.img"));
        let dst = work.join(format!("{tool}.img"));
        sh(&command(&src, &dst));
        let copy = read(&dst);
        assert_eq!(copy.len(), expected.len(), "{tool}: size differs");
        if copy != expected {
            let at = copy
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("{tool}: copy of snapshot {name} differs from the volume at the snapshot instant at byte {at}");
        }
        let now = read(&vol);
        assert_ne!(
            now, expected,
            "the writer made no progress during the {tool} copy, so nothing was tested"
        );
        fs::remove_dir(m.path(&format!("snapshots/{name}"))).unwrap();
        fs::remove_file(&dst).unwrap();
    }

    // Snapshots taken without pausing, in the middle of writes: never a torn write.
    for i in 0..5 {
        let name = format!("live{i}");
        fs::create_dir(m.path(&format!("snapshots/{name}"))).unwrap();
        let data = read(&m.path(&format!("snapshots/{name}/vm.img")));
        assert_untorn(&data, &name);
        let again = read(&m.path(&format!("snapshots/{name}/vm.img")));
        assert!(data == again, "snapshot {name} changed between two reads");
        fs::remove_dir(m.path(&format!("snapshots/{name}"))).unwrap();
    }
    drop(writer);
}
