//! `snarf demo`: the whole idea in one command on a throwaway store. A volume is written
//! continuously while a snapshot is taken; the snapshot is copied out with cp while the
//! writes go on; the copy's checksum must equal the volume's at the snapshot instant.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::{CliError, CliResult};
use crate::units::Bytes;

/// Arguments of `snarf demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the throwaway store and mount point (default: a new temporary
    /// directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Size of the demo volume.
    #[arg(long, default_value = "256M", value_parser = super::numbers::size_between(1 << 20, 16 << 30))]
    pub size: u64,
    /// Keep the store and mount point afterwards (unmounted).
    #[arg(long)]
    pub keep: bool,
}

fn step(text: &str) {
    println!("==> {text}");
    let _ = std::io::stdout().flush();
}

fn run(cmd: &mut Command, what: &str) -> Result<String, CliError> {
    let out = cmd
        .output()
        .map_err(|e| CliError::new(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(CliError::new(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn checksum(path: &Path) -> Result<String, CliError> {
    let mut f = fs::File::open(path)
        .map_err(|e| CliError::new(format!("opening {}: {e}", path.display())))?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| CliError::new(format!("reading {}: {e}", path.display())))?;
    Ok(h.finalize().to_hex().to_string())
}

/// A writer thread that rewrites blocks of the volume until told to stop, and can be paused
/// between writes (so the demo knows the volume's content at the snapshot instant).
struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Writer {
    fn start(path: PathBuf, size: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, p, pd, w) = (stop.clone(), pause.clone(), paused.clone(), writes.clone());
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let f = fs::OpenOptions::new().write(true).open(&path)?;
            let mut block = vec![0u8; 256 << 10];
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            while !s.load(Ordering::Acquire) {
                if p.load(Ordering::Acquire) {
                    pd.store(true, Ordering::Release);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                pd.store(false, Ordering::Release);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                block
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = (x >> (i % 57)) as u8);
                let offset = (x % (size / 4096)) * 4096;
                let len = block.len().min((size - offset) as usize);
                f.write_all_at(&block[..len], offset)?;
                w.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Writer {
            stop,
            pause,
            paused,
            writes,
            thread: Some(thread),
        }
    }

    fn hold(&self) {
        self.pause.store(true, Ordering::Release);
        while !self.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn go_on(&self) {
        self.pause.store(false, Ordering::Release);
    }

    fn finish(mut self) -> Result<u64, CliError> {
        self.stop.store(true, Ordering::Release);
        self.go_on();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| CliError::new("the demo writer panicked"))?
                .map_err(|e| CliError::new(format!("the demo writer failed: {e}")))?;
        }
        Ok(self.writes.load(Ordering::Relaxed))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.pause.store(false, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `snarf demo`.
pub fn demo(args: DemoArgs) -> CliResult {
    let temp;
    let base = match &args.dir {
        Some(d) => {
            fs::create_dir_all(d)
                .map_err(|e| CliError::new(format!("creating {}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            temp = std::env::temp_dir().join(format!("snarf-demo-{}", std::process::id()));
            fs::create_dir_all(&temp)
                .map_err(|e| CliError::new(format!("creating {}: {e}", temp.display())))?;
            temp.clone()
        }
    };
    let store = base.join("store");
    let mnt = base.join("mnt");
    fs::create_dir_all(&mnt)
        .map_err(|e| CliError::new(format!("creating {}: {e}", mnt.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("cannot find the snarf executable: {e}")))?;
    let snarf = |args: &[&std::ffi::OsStr], what: &str| run(Command::new(&exe).args(args), what);

    step(&format!("creating a demo store in {}", store.display()));
    snarf(
        &["init".as_ref(), "--".as_ref(), store.as_os_str()],
        "snarf init",
    )?;
    step(&format!("mounting it at {}", mnt.display()));
    print!(
        "{}",
        snarf(
            &[
                "mount".as_ref(),
                "--".as_ref(),
                store.as_os_str(),
                mnt.as_os_str()
            ],
            "snarf mount"
        )?
    );

    let result = (|| {
        let vol = mnt.join("live/demo.img");
        step(&format!(
            "writing a {} volume, live/demo.img",
            Bytes(args.size)
        ));
        {
            let f = fs::File::create(&vol)
                .map_err(|e| CliError::new(format!("creating {}: {e}", vol.display())))?;
            f.set_len(args.size)
                .map_err(|e| CliError::new(format!("sizing the volume: {e}")))?;
            let chunk: Vec<u8> = (0..1u32 << 20)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let mut at = 0;
            while at < args.size {
                let n = chunk.len().min((args.size - at) as usize);
                f.write_all_at(&chunk[..n], at)
                    .map_err(|e| CliError::new(format!("writing the volume: {e}")))?;
                at += n as u64;
            }
        }
        step("starting a writer that keeps rewriting the volume");
        let writer = Writer::start(vol.clone(), args.size);
        std::thread::sleep(Duration::from_millis(300));

        step("taking snapshot 'demo' with mkdir snapshots/demo (the writer paused for an instant so we know the expected content)");
        writer.hold();
        fs::create_dir(mnt.join("snapshots/demo"))
            .map_err(|e| CliError::new(format!("mkdir snapshots/demo: {e}")))?;
        let expected = checksum(&vol)?;
        writer.go_on();
        println!("    volume at the snapshot instant: blake3 {expected}");

        step("copying snapshots/demo/demo.img out with cp while the writer goes on");
        let copy = base.join("demo-copy.img");
        let t = Instant::now();
        run(
            Command::new("cp")
                .arg("--")
                .arg(mnt.join("snapshots/demo/demo.img"))
                .arg(&copy),
            "cp",
        )?;
        let secs = t.elapsed().as_secs_f64();
        let got = checksum(&copy)?;
        println!(
            "    copy: blake3 {got} ({:.0} MiB/s)",
            args.size as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
        let writes = writer.finish()?;
        let live_now = checksum(&vol)?;
        println!("    the writer made {writes} writes meanwhile; the live volume is now blake3 {live_now}");
        let _ = fs::remove_file(&copy);
        if got != expected {
            return Err(CliError::new(
                "the snapshot copy does NOT match the volume at the snapshot instant",
            ));
        }
        if live_now == expected {
            return Err(CliError::new(
                "the writer changed nothing, so the demo proved nothing",
            ));
        }
        print!(
            "{}",
            fs::read_to_string(mnt.join("control/status")).unwrap_or_default()
        );
        Ok(())
    })();

    step("unmounting");
    let unmounted = snarf(
        &["umount".as_ref(), "--".as_ref(), mnt.as_os_str()],
        "snarf umount",
    );
    if !args.keep && args.dir.is_none() {
        let _ = fs::remove_dir_all(&base);
    }
    result?;
    unmounted?;
    println!(
        "OK: the snapshot copy is byte-identical to the volume at the instant of the snapshot."
    );
    Ok(())
}
