//! Measurements, not run by default: `cargo test --release --test repo_bench -- --ignored
//! --nocapture` (SNARF_BENCH_GIB sets the volume size, default 2). Prints transfer, finishing,
//! check and restore times for one large backup, and the time of an unchanged second backup.

use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snarf::repo::{NewBackup, Repo, RepoInitOptions};

const SNARF: usize = 64 << 10;

/// Snarf `i`: one in eight zero, three compressible, four random.
fn snarf_data(i: u64, buf: &mut [u8]) {
    match i % 8 {
        0 => buf.fill(0),
        1..=3 => {
            let line = format!("row {i:>12} of a database page, mostly repetitive text; ");
            for (k, b) in buf.iter_mut().enumerate() {
                *b = line.as_bytes()[k % line.len()];
            }
        }
        _ => ChaCha8Rng::seed_from_u64(i).fill_bytes(buf),
    }
}

fn backup(repo: &Repo, size: u64) -> (f64, f64, snarf::repo::BackupId) {
    let t = Instant::now();
    let w = repo
        .begin_backup(NewBackup::new("bench", serde_json::Value::Null))
        .expect("begin");
    let slot = w.add_volume("big.img", size, SNARF as u32).expect("volume");
    let n = size.div_ceil(SNARF as u64);
    std::thread::scope(|s| {
        for part in 0..2u64 {
            let p = w.preparer();
            let w = &w;
            s.spawn(move || {
                let mut buf = vec![0u8; SNARF];
                let mut i = part;
                while i < n {
                    snarf_data(i, &mut buf);
                    w.put(slot, i, p.prepare(&buf).expect("prepare"))
                        .expect("put");
                    i += 2;
                }
            });
        }
    });
    let transfer = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let id = w.commit().expect("commit");
    (transfer, t.elapsed().as_secs_f64(), id)
}

#[test]
#[ignore = "measurement; takes a minute and several GiB of disk"]
fn measure_large_backup() {
    let gib: u64 = std::env::var("SNARF_BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let size = gib << 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(&dir.path().join("r"), &RepoInitOptions::default()).expect("init");
    let (transfer, finishing, id) = backup(&repo, size);
    let m = repo.backup(id.as_str()).expect("manifest");
    println!(
        "backup of {gib} GiB: transfer {transfer:.1} s ({:.0} MiB/s), commit+finishing {finishing:.3} s; \
         {} new chunks, {} MiB stored, {} packs",
        size as f64 / (1 << 20) as f64 / transfer,
        m.stats.new_chunks,
        m.stats.new_stored_bytes >> 20,
        m.stats.packs
    );
    let (transfer2, finishing2, _) = backup(&repo, size);
    println!(
        "unchanged second backup: transfer {transfer2:.1} s, commit+finishing {finishing2:.3} s"
    );
    let t = Instant::now();
    let rep = repo.check(false, &mut |_| {}).expect("check");
    assert!(rep.is_ok());
    println!("check (structure): {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(rep.is_ok());
    println!("check --read-data: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let dest = dir.path().join("out");
    let s = repo
        .restore(id.as_str(), None, &dest, &mut |_| {})
        .expect("restore");
    println!(
        "restore: {:.1} s ({:.0} MiB/s), {} MiB as holes",
        t.elapsed().as_secs_f64(),
        size as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64(),
        s.hole_bytes >> 20
    );
    let t = Instant::now();
    let r = repo
        .prune(
            &snarf::repo::Policy {
                keep_last: 1,
                ..Default::default()
            },
            false,
        )
        .expect("prune");
    println!(
        "prune keeping 1 of 2: {:.2} s, freed {} bytes",
        t.elapsed().as_secs_f64(),
        r.freed_bytes
    );
}
