//! Helpers shared by the repository's process-level tests: deterministic volume contents,
//! writing a backup through the library, verifying restores, copying repositories.

#![allow(dead_code)]

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snarf::repo::{BackupId, NewBackup, Policy, Repo};

/// Snarf size used by the tests.
pub const SNARF: u32 = 64 << 10;

/// Volume contents with zero, compressible and random regions, from a seed.
pub fn volume_data(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let len = rng.random_range(4096..200_000).min(size - pos);
        match rng.random_range(0..3) {
            0 => {}
            1 => {
                let word: [u8; 5] = rng.random();
                for (i, b) in v[pos..pos + len].iter_mut().enumerate() {
                    *b = word[i % 5];
                }
            }
            _ => rng.fill(&mut v[pos..pos + len]),
        }
        pos += len;
    }
    v
}

/// The volumes of the backup with `seed`: one shared by every seed (deduplicated), one of
/// its own whose size is not a multiple of the snarf size.
pub fn volumes_for(seed: u64, own_size: usize) -> Vec<(String, Vec<u8>)> {
    vec![
        ("shared.img".into(), volume_data(424242, 300_000)),
        (
            "own.img".into(),
            volume_data(seed, own_size + (seed as usize % 7) * 4097),
        ),
    ]
}

/// Writes the backup of `seed` through the library, puts in a seeded shuffled order.
pub fn write_backup(
    repo: &Repo,
    seed: u64,
    own_size: usize,
    retention: Option<Policy>,
) -> BackupId {
    use rand::seq::SliceRandom;
    let mut new = NewBackup::new(
        "snap",
        serde_json::json!({ "seed": seed, "own_size": own_size }),
    );
    new.retention = retention;
    new.lock_wait = Some(std::time::Duration::from_secs(60));
    let w = repo.begin_backup(new).expect("begin backup");
    let vols = volumes_for(seed, own_size);
    let mut work = Vec::new();
    for (name, data) in &vols {
        let slot = w
            .add_volume(name, data.len() as u64, SNARF)
            .expect("add volume");
        for i in 0..(data.len() as u64).div_ceil(SNARF as u64) {
            work.push((slot, i, data));
        }
    }
    work.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    let p = w.preparer();
    for (slot, i, data) in work {
        let s = (i * SNARF as u64) as usize;
        let e = (s + SNARF as usize).min(data.len());
        w.put(slot, i, p.prepare(&data[s..e]).expect("prepare"))
            .expect("put");
    }
    w.commit().expect("commit")
}

/// Restores every committed backup and compares it with the data its seed generates.
pub fn verify_all_backups(repo: &Repo) -> usize {
    let backups = repo.list_backups().expect("list backups");
    for m in &backups {
        let seed = m.source["seed"].as_u64().expect("seed in source");
        let own = m.source["own_size"].as_u64().expect("own_size in source") as usize;
        let dest = tempfile::tempdir().expect("tempdir");
        repo.restore(m.id.as_str(), None, dest.path(), &mut |_| {})
            .unwrap_or_else(|e| panic!("restoring {}: {e}", m.id));
        for (name, data) in volumes_for(seed, own) {
            let got = std::fs::read(dest.path().join(&name)).expect("read restored");
            assert!(
                got == data,
                "backup {} volume {name} differs after restore",
                m.id
            );
        }
    }
    backups.len()
}

/// Copies a directory tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Every file under `dir`, recursively (folders left out).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs the snarf binary and returns (exit code, stdout, stderr).
pub fn snarf(args: &[&str]) -> (i32, String, String) {
    snarf_env(args, &[] as &[(&str, &str)])
}

/// The snarf binary with `args` and `env` set, and no passphrase inherited from the test's
/// own environment.
pub fn snarf_cmd<V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(&str, V)],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_snarf"));
    cmd.args(args)
        .env_remove("SNARF_PASSWORD")
        .env_remove("SNARF_PASSWORD_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// [`snarf`] with `env` set, and no passphrase inherited from the test's own environment.
pub fn snarf_env<V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(&str, V)],
) -> (i32, String, String) {
    let out = snarf_cmd(args, env).output().expect("run snarf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes the backup of `seed` into a format 2 repository, puts in a seeded shuffled order.
pub fn write_backup_v2(repo: &snarf::repo::v2::Repository, seed: u64, own_size: usize) -> BackupId {
    use rand::seq::SliceRandom;
    let mut new = snarf::repo::v2::NewBackup::new(
        "snap",
        serde_json::json!({ "seed": seed, "own_size": own_size }),
    );
    new.lock_wait = Some(std::time::Duration::from_secs(60));
    let w = repo.begin_backup(new).expect("begin backup");
    let vols = volumes_for(seed, own_size);
    let mut work = Vec::new();
    for (name, data) in &vols {
        let slot = w
            .add_volume(name, data.len() as u64, SNARF, None)
            .expect("add volume");
        for i in 0..(data.len() as u64).div_ceil(SNARF as u64) {
            work.push((slot, i, data));
        }
    }
    work.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    for (slot, i, data) in work {
        let s = (i * SNARF as u64) as usize;
        let e = (s + SNARF as usize).min(data.len());
        w.put(slot, i, &data[s..e]).expect("put");
    }
    w.commit().expect("commit")
}

/// The backup id from `snarf backup`'s summary.
pub fn backup_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no backup id in {out:?}"))
        .to_string()
}
