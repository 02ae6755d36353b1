//! Engine write benchmark, driven by `scripts/bench-engine.sh`. Measures, in one run on
//! the same machine and data size, sequential 1 MiB and random 4 KiB writes through the
//! snapshot engine with no snapshot, with a freshly taken snapshot (first writes capture
//! pre-images) and over already-preserved snarfs, each as a ratio to plain pwrite on a file
//! of the same size.
//!
//! Two regimes: page cache only (no sync; shows snarf's CPU and memory-copy cost at its
//! worst, since the baseline is a single memcpy) and durable (fdatasync after every write,
//! as a database or VM would). First writes are measured twice: in a cold process, whose
//! pre-image buffers are fresh memory the kernel must fault in and zero, and again in the
//! same process after one snapshot cycle, when buffers are reused (the steady state of a
//! long-running mount). Every snapshot case runs for persistent snapshots (pre-images
//! durable, group-committed, before the write they protect) and for volatile ones (memory
//! first).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snarf::snapshot::{CacheStats, Durability, Engine, EngineOptions};
use snarf::store::{Budgets, InitOptions, Store, Volume};

const MIB: u64 = 1 << 20;

fn env_size(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| snarf::units::parse_size(&v).ok())
        .unwrap_or(default)
}

/// A list of (offset, length) writes.
type Ops = Vec<(u64, usize)>;

fn seq_ops(size: u64) -> Ops {
    (0..size / MIB).map(|i| (i * MIB, MIB as usize)).collect()
}

/// Random 4 KiB-aligned writes, as many as one pass over the size in bytes.
fn rand_ops(size: u64, count: u64, seed: u64) -> Ops {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| (rng.random_range(0..size / 4096) * 4096, 4096))
        .collect()
}

/// Somewhere writes go: the raw baseline file or an engine volume.
trait Target {
    fn write(&self, off: u64, data: &[u8]);
    fn sync(&self);
}

struct Raw(File);

impl Target for Raw {
    fn write(&self, off: u64, data: &[u8]) {
        self.0.write_all_at(data, off).expect("raw write");
    }
    fn sync(&self) {
        self.0.sync_data().expect("raw fdatasync");
    }
}

struct Snarf<'a>(&'a Engine, std::sync::Arc<Volume>);

impl Target for Snarf<'_> {
    fn write(&self, off: u64, data: &[u8]) {
        self.0.write(&self.1, off, data).expect("engine write");
    }
    fn sync(&self) {
        self.0.fsync(&self.1).expect("engine fsync");
    }
}

fn run(t: &dyn Target, ops: &[(u64, usize)], data: &[u8], sync_each: bool) -> Duration {
    if sync_each {
        // Start every durable case with nothing dirty, so none pays for another's writeback.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    let start = Instant::now();
    for &(off, len) in ops {
        t.write(off, &data[..len]);
        if sync_each {
            t.sync();
        }
    }
    start.elapsed()
}

struct Report {
    rows: Vec<(String, String, f64)>,
}

impl Report {
    fn add(&mut self, name: &str, what: String, ratio: f64) {
        self.rows.push((name.to_string(), what, ratio));
    }
    fn print(&self) {
        println!("{:<58} {:>13} {:>9}", "case", "rate", "vs raw");
        for (n, w, r) in &self.rows {
            println!("{n:<58} {w:>13} {r:>8.2}x");
        }
    }
}

/// Timings of the snapshot cases for one kind of snapshot.
struct Cases {
    cold_seq: Duration,
    warm_seq: Duration,
    kept_seq: Duration,
    first_rnd: Duration,
    kept_rnd: Duration,
    first_sseq: Duration,
    kept_sseq: Duration,
    first_srnd: Duration,
    kept_srnd: Duration,
    /// Pre-images held after the cold sequential pass.
    held: CacheStats,
}

/// First writes and preserved snarfs under snapshots of kind `d`: `ops` are the sequential,
/// random, synced sequential and synced random writes.
fn snapshot_cases(
    engine: &Engine,
    t: &dyn Target,
    d: Durability,
    ops: &[&Ops; 4],
    a: &[u8],
    b: &[u8],
) -> Cases {
    let [seq, rnd, synced_seq, synced_rnd] = *ops;
    let k = d.as_str();
    let take = |name: &str| {
        engine
            .take_with(&format!("{k}-{name}"), d)
            .expect("taking a snapshot");
    };
    let release = |name: &str| {
        engine.release(&format!("{k}-{name}")).expect("releasing");
    };
    take("cold");
    let cold_seq = run(t, seq, b, false);
    let kept_seq = run(t, seq, a, false);
    let held = engine.stats().cache;
    release("cold");
    take("warm");
    let warm_seq = run(t, seq, b, false);
    release("warm");
    take("rnd");
    let first_rnd = run(t, rnd, b, false);
    let kept_rnd = run(t, rnd, a, false);
    release("rnd");
    take("synced");
    let first_sseq = run(t, synced_seq, a, true);
    let kept_sseq = run(t, synced_seq, b, true);
    release("synced");
    take("synced-rnd");
    let first_srnd = run(t, synced_rnd, b, true);
    let kept_srnd = run(t, synced_rnd, a, true);
    release("synced-rnd");
    Cases {
        cold_seq,
        warm_seq,
        kept_seq,
        first_rnd,
        kept_rnd,
        first_sseq,
        kept_sseq,
        first_srnd,
        kept_srnd,
        held,
    }
}

fn main() {
    let size = env_size("SNARF_BENCH_SIZE", 1 << 30);
    let snarf = env_size("SNARF_BENCH_SNARF", 64 << 10);
    let dir = std::env::var("SNARF_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!("snarf-bench-engine-{}", std::process::id()))
        });
    let synced_size = env_size("SNARF_BENCH_SYNCED_SIZE", size.min(256 * MIB));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the benchmark directory");
    let mut a = vec![0u8; MIB as usize];
    ChaCha8Rng::seed_from_u64(7).fill(&mut a[..]);
    let mut b = a.clone();
    b.reverse();
    let seq = seq_ops(size);
    let rnd = rand_ops(size, size / 4096 / 4, 11);
    let synced_seq = seq_ops(synced_size);
    let synced_rnd = rand_ops(synced_size, 4096, 13);
    let mb_s = |bytes: u64, d: Duration| {
        format!("{:.0} MiB/s", bytes as f64 / MIB as f64 / d.as_secs_f64())
    };
    let iops = |n: usize, d: Duration| format!("{:.0} IOPS", n as f64 / d.as_secs_f64());
    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();

    println!(
        "snarf engine write benchmark: volume {} MiB (synced cases {} MiB), snarf {} KiB, in {}",
        size / MIB,
        synced_size / MIB,
        snarf / 1024,
        dir.display()
    );

    // Baseline: plain pwrite to a file of the same size, written once first (warm).
    let raw_path = dir.join("raw.img");
    let raw = Raw(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .expect("creating the raw baseline file"));
    run(&raw, &seq, &a, false);
    let raw_seq = run(&raw, &seq, &b, false);
    let raw_rnd = run(&raw, &rnd, &a, false);
    let raw_sseq = run(&raw, &synced_seq, &b, true);
    let raw_srnd = run(&raw, &synced_rnd, &a, true);
    drop(raw);
    let _ = std::fs::remove_file(&raw_path);

    let root = dir.join("store");
    Store::init(
        &root,
        &InitOptions {
            snarf_size: snarf,
            budgets: Budgets {
                memory: env_size("SNARF_BENCH_MEM", 256 * MIB),
                disk: env_size("SNARF_BENCH_DISK", 2 * size),
                break_after_secs: 600.0,
            },
            repository: None,
            snapshots: Default::default(),
        },
    )
    .expect("creating the benchmark store");
    let store = Store::open(&root, "bench-engine").expect("opening the benchmark store");
    let opts = EngineOptions::from_store(&store);
    let engine = Engine::new(store, opts).expect("starting the engine");
    let vol = engine
        .create_volume("bench.img", size)
        .expect("creating the volume");
    let t = Snarf(&engine, vol);

    run(&t, &seq, &a, false);
    let none_seq = run(&t, &seq, &b, false);
    let none_rnd = run(&t, &rnd, &a, false);

    let none_sseq = run(&t, &synced_seq, &b, true);
    let none_srnd = run(&t, &synced_rnd, &a, true);
    // Crash-proof tracking: the same random 4 KiB + fdatasync pass with every write-intent
    // region clean at the start (as right after a backup), so the first write into each
    // region pays its mark; against the pass above, where every region was marked already
    // (the marks cost nothing: tracking as good as off).
    let clear_regions = || {
        let s = engine
            .take("bench-checkpoint")
            .expect("a checkpoint snapshot");
        engine.backup_committed(&s);
        engine.release("bench-checkpoint").expect("releasing it");
    };
    clear_regions();
    let tracked_srnd = run(&t, &synced_rnd, &b, true);
    let regions = t.1.intent().map_or(0, |i| i.dirty_count());
    let kinds = [Durability::Persistent, Durability::Volatile];
    let cases: Vec<(Durability, Cases)> = kinds
        .iter()
        .map(|&d| {
            (
                d,
                snapshot_cases(
                    &engine,
                    &t,
                    d,
                    &[&seq, &rnd, &synced_seq, &synced_rnd],
                    &a,
                    &b,
                ),
            )
        })
        .collect();

    let mut r = Report { rows: Vec::new() };
    let (sb, rn) = (size, rnd.len());
    let (ssb, srn) = (synced_size, synced_rnd.len());
    r.add(
        "page cache: raw pwrite, sequential 1 MiB",
        mb_s(sb, raw_seq),
        1.0,
    );
    r.add(
        "page cache: snarf, no snapshot, seq 1 MiB",
        mb_s(sb, none_seq),
        ratio(none_seq, raw_seq),
    );
    r.add(
        "page cache: raw pwrite, random 4 KiB",
        iops(rn, raw_rnd),
        1.0,
    );
    r.add(
        "page cache: snarf, no snapshot, random 4 KiB",
        iops(rn, none_rnd),
        ratio(none_rnd, raw_rnd),
    );
    r.add(
        "fdatasync each: raw pwrite, sequential 1 MiB",
        mb_s(ssb, raw_sseq),
        1.0,
    );
    r.add(
        "fdatasync each: snarf, no snapshot, seq 1 MiB",
        mb_s(ssb, none_sseq),
        ratio(none_sseq, raw_sseq),
    );
    r.add(
        "fdatasync each: raw pwrite, random 4 KiB",
        iops(srn, raw_srnd),
        1.0,
    );
    r.add(
        "fdatasync each: snarf, no snapshot, random 4 KiB",
        iops(srn, none_srnd),
        ratio(none_srnd, raw_srnd),
    );
    r.add(
        "fdatasync each: snarf, random 4 KiB, regions clean (tracking marks)",
        iops(srn, tracked_srnd),
        ratio(tracked_srnd, raw_srnd),
    );
    for (d, c) in &cases {
        let k = d.as_str();
        let rows = [
            (
                "page cache",
                "first writes (cold process), seq 1 MiB",
                mb_s(sb, c.cold_seq),
                ratio(c.cold_seq, raw_seq),
            ),
            (
                "page cache",
                "first writes (warm), seq 1 MiB",
                mb_s(sb, c.warm_seq),
                ratio(c.warm_seq, raw_seq),
            ),
            (
                "page cache",
                "preserved snarfs, seq 1 MiB",
                mb_s(sb, c.kept_seq),
                ratio(c.kept_seq, raw_seq),
            ),
            (
                "page cache",
                "first pass, random 4 KiB",
                iops(rn, c.first_rnd),
                ratio(c.first_rnd, raw_rnd),
            ),
            (
                "page cache",
                "preserved snarfs, random 4 KiB",
                iops(rn, c.kept_rnd),
                ratio(c.kept_rnd, raw_rnd),
            ),
            (
                "fdatasync each",
                "first writes, seq 1 MiB",
                mb_s(ssb, c.first_sseq),
                ratio(c.first_sseq, raw_sseq),
            ),
            (
                "fdatasync each",
                "preserved snarfs, seq 1 MiB",
                mb_s(ssb, c.kept_sseq),
                ratio(c.kept_sseq, raw_sseq),
            ),
            (
                "fdatasync each",
                "first writes, random 4 KiB",
                iops(srn, c.first_srnd),
                ratio(c.first_srnd, raw_srnd),
            ),
            (
                "fdatasync each",
                "preserved snarfs, random 4 KiB",
                iops(srn, c.kept_srnd),
                ratio(c.kept_srnd, raw_srnd),
            ),
        ];
        for (regime, case, rate, x) in rows {
            r.add(&format!("{regime}: {k}, {case}"), rate, x);
        }
    }
    println!();
    r.print();
    for (d, c) in &cases {
        println!();
        println!(
            "{} snapshots, cost against snarf without a snapshot (targets: first writes <= 2.0x in the page cache, <= 1.5x with fdatasync; preserved <= 1.1x):",
            d.as_str()
        );
        println!(
            "  page cache, seq 1 MiB:     first writes {:.2}x cold, {:.2}x warm; preserved {:.2}x",
            ratio(c.cold_seq, none_seq),
            ratio(c.warm_seq, none_seq),
            ratio(c.kept_seq, none_seq)
        );
        println!(
            "  page cache, random 4 KiB:  first pass {:.2}x; preserved {:.2}x",
            ratio(c.first_rnd, none_rnd),
            ratio(c.kept_rnd, none_rnd)
        );
        println!(
            "  fdatasync, seq 1 MiB:      first writes {:.2}x; preserved {:.2}x",
            ratio(c.first_sseq, none_sseq),
            ratio(c.kept_sseq, none_sseq)
        );
        println!(
            "  fdatasync, random 4 KiB:   first writes {:.2}x; preserved {:.2}x",
            ratio(c.first_srnd, none_srnd),
            ratio(c.kept_srnd, none_srnd)
        );
        println!(
            "  pre-images after the cold sequential pass: {} ({} MiB in memory, {} MiB on disk)",
            c.held.held,
            c.held.mem_used / MIB,
            c.held.disk_used / MIB
        );
    }
    let verdict = |x: f64, target: f64| if x <= target { "PASS" } else { "MISS" };
    println!();
    println!("targets (issue 12):");
    let tr = ratio(tracked_srnd, none_srnd);
    println!(
        "  random 4 KiB + fdatasync, no snapshot, tracking marks on vs off: {tr:.3}x ({} regions marked in the pass; target <= 1.05x): {}",
        regions,
        verdict(tr, 1.05)
    );
    for (d, c) in &cases {
        for (case, x) in [
            ("seq 1 MiB", ratio(c.first_sseq, none_sseq)),
            ("random 4 KiB", ratio(c.first_srnd, none_srnd)),
        ] {
            println!(
                "  {} snapshot, first writes with fdatasync, {case}: {x:.2}x of no snapshot (target <= 1.5x): {}",
                d.as_str(),
                verdict(x, 1.5)
            );
        }
    }
    drop(t);
    engine.close().expect("closing the store");
    let _ = std::fs::remove_dir_all(&dir);
}
