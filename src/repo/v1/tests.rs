//! Tests of the repository as a whole through its public API: round trips, deduplication,
//! incremental backups, durability reports, corruption, locking, prune.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::chain::ErrorChain;

const SNARF: u32 = 64 << 10;

/// A repository with small packs so tests seal many of them.
pub(crate) fn small_repo() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let repo = Repo::init(
        &path,
        &RepoInitOptions {
            compression: 3,
            pack_target: 256 << 10,
        },
    )
    .unwrap();
    (dir, repo)
}

/// Volume contents with zero, compressible and random regions, from a seed.
pub(crate) fn volume_data(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let len = rng.random_range(4096..300_000).min(size - pos);
        match rng.random_range(0..3) {
            0 => {}
            1 => {
                let word: [u8; 7] = rng.random();
                for (i, b) in v[pos..pos + len].iter_mut().enumerate() {
                    *b = word[i % 7];
                }
            }
            _ => rng.fill(&mut v[pos..pos + len]),
        }
        pos += len;
    }
    v
}

/// Writes a backup of `vols` with snarfs in shuffled order, preparing on two threads.
pub(crate) fn backup(repo: &Repo, vols: &[(&str, &[u8])], new: NewBackup, seed: u64) -> BackupId {
    let w = repo.begin_backup(new).unwrap();
    let mut work = Vec::new();
    for (name, data) in vols {
        let slot = w.add_volume(name, data.len() as u64, SNARF).unwrap();
        for i in 0..(data.len() as u64).div_ceil(SNARF as u64) {
            work.push((slot, i, *data));
        }
    }
    work.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (a, b) = work.split_at(work.len() / 2);
    std::thread::scope(|s| {
        for half in [a, b] {
            let p = w.preparer();
            let w = &w;
            s.spawn(move || {
                for (slot, i, data) in half {
                    let start = (*i * SNARF as u64) as usize;
                    let end = (start + SNARF as usize).min(data.len());
                    let c = p.prepare(&data[start..end]).unwrap();
                    w.put(*slot, *i, c).unwrap();
                }
            });
        }
    });
    w.commit().unwrap()
}

pub(crate) fn restore_all(repo: &Repo, id: &BackupId) -> (tempfile::TempDir, RestoreSummary) {
    let dest = tempfile::tempdir().unwrap();
    let s = repo
        .restore(id.as_str(), None, dest.path(), &mut |_| {})
        .unwrap();
    (dest, s)
}

fn stored_pack_bytes(repo: &Repo) -> u64 {
    std::fs::read_dir(repo.packs_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn round_trip_in_shuffled_order_restores_byte_exact_and_sparse() {
    let (_d, repo) = small_repo();
    let a = volume_data(1, 3 * 1024 * 1024 + 12345);
    let mut sparse = vec![0u8; 4 * 1024 * 1024 + 1];
    sparse[1_000_000..1_100_000].copy_from_slice(&volume_data(2, 100_000));
    let id = backup(
        &repo,
        &[("a.img", &a), ("sparse.img", &sparse)],
        NewBackup::new("nightly", serde_json::json!({"k": 1})),
        7,
    );

    let list = repo.list_backups().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].source, serde_json::json!({"k": 1}));
    assert_eq!(repo.current().unwrap(), Some(id.clone()));

    let (dest, summary) = restore_all(&repo, &id);
    assert_eq!(std::fs::read(dest.path().join("a.img")).unwrap(), a);
    let sp = dest.path().join("sparse.img");
    assert_eq!(std::fs::read(&sp).unwrap(), sparse);
    let blocks = std::fs::metadata(&sp).unwrap().blocks();
    assert!(
        blocks * 512 < 400_000,
        "sparse restore allocated {} bytes",
        blocks * 512
    );
    assert!(summary.hole_bytes > 3_800_000);

    let r = repo.volume_reader(id.as_str(), "a.img").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..200 {
        let off = rng.random_range(0..a.len() as u64 + 10);
        let len = rng.random_range(1..200_000);
        let mut buf = vec![0xAAu8; len];
        let n = r.read_at(off, &mut buf).unwrap();
        let want = &a[(off as usize).min(a.len())..(off as usize + len).min(a.len())];
        assert_eq!(&buf[..n], want);
    }
    let sr = repo.volume_reader(id.as_str(), "sparse.img").unwrap();
    assert!(sr.is_zero(0).unwrap());
    assert!(!sr.is_zero(1_000_000 / SNARF as u64).unwrap());
    let first_data = (1_000_000 / SNARF as u64) * SNARF as u64;
    assert_eq!(sr.seek_data(5).unwrap(), Some(first_data));
    assert_eq!(sr.seek_data(first_data + 3).unwrap(), Some(first_data + 3));
    assert_eq!(
        sr.seek_hole(first_data + 3).unwrap(),
        first_data + 2 * SNARF as u64
    );
    assert_eq!(sr.seek_hole(7).unwrap(), 7);
    assert_eq!(sr.seek_data(2_000_000).unwrap(), None);
}

#[test]
fn identical_chunks_are_stored_once_across_volumes_and_backups() {
    let (_d, repo) = small_repo();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut data = vec![0u8; 2 << 20];
    rng.fill(&mut data[..]);
    backup(
        &repo,
        &[("one", &data), ("two", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        1,
    );
    let after_first = stored_pack_bytes(&repo);
    assert!(
        after_first < (2 << 20) + (200 << 10),
        "stored {after_first} bytes for 2 MiB"
    );
    let id2 = backup(
        &repo,
        &[("three", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        2,
    );
    assert_eq!(stored_pack_bytes(&repo), after_first);
    let m = repo.backup(id2.as_str()).unwrap();
    assert_eq!(m.stats.new_chunks, 0);
    assert_eq!(m.stats.dedup_snarfs, 32);
}

#[test]
fn incremental_backup_reuses_unchanged_snarfs() {
    let (_d, repo) = small_repo();
    let v1 = volume_data(11, 2 * 1024 * 1024 + 999);
    let id1 = backup(
        &repo,
        &[("vm", &v1)],
        NewBackup::new("s1", serde_json::json!({"epoch": 1})),
        1,
    );
    let mut v2 = v1.clone();
    v2[70_000..70_010].copy_from_slice(b"0123456789");
    v2[2 * 1024 * 1024 + 5] ^= 0xff;
    let changed: HashSet<u64> = [
        70_000u64 / SNARF as u64,
        (2 * 1024 * 1024 + 5) / SNARF as u64,
    ]
    .into();

    let base = repo
        .latest_backup_with(|m| m.volume("vm").is_some())
        .unwrap()
        .unwrap();
    assert_eq!(base.id, id1);
    let prev = repo.volume_reader(base.id.as_str(), "vm").unwrap();
    let w = repo
        .begin_backup(NewBackup::new("s2", serde_json::json!({"epoch": 2})))
        .unwrap();
    let slot = w.add_volume("vm", v2.len() as u64, SNARF).unwrap();
    let p = w.preparer();
    for i in 0..prev.snarf_count() {
        if changed.contains(&i) {
            let s = (i * SNARF as u64) as usize;
            let e = (s + SNARF as usize).min(v2.len());
            w.put(slot, i, p.prepare(&v2[s..e]).unwrap()).unwrap();
        } else {
            w.reuse(slot, i, prev.chunk_ref(i).unwrap()).unwrap();
        }
    }
    let id2 = w.commit().unwrap();
    let m = repo.backup(id2.as_str()).unwrap();
    assert_eq!(m.stats.new_chunks, 2);
    let (dest, _) = restore_all(&repo, &id2);
    assert_eq!(std::fs::read(dest.path().join("vm")).unwrap(), v2);
    let (dest1, _) = restore_all(&repo, &id1);
    assert_eq!(std::fs::read(dest1.path().join("vm")).unwrap(), v1);
}

#[test]
fn every_snarf_is_reported_durable_once_and_readable_when_reported() {
    let (_d, repo) = small_repo();
    let data = volume_data(21, 3 * 1024 * 1024 + 7);
    let seen: Arc<Mutex<Vec<Durable>>> = Arc::new(Mutex::new(Vec::new()));
    let mut new = NewBackup::new("s", serde_json::Value::Null);
    let (r2, s2, d2) = (repo.clone(), seen.clone(), data.clone());
    new.on_durable = Some(Arc::new(move |d: Durable| {
        // A reported snarf must be readable from its pack right away, before commit.
        let got = r2.read_chunk_at(&d.chunk).unwrap();
        let s = (d.snarf * SNARF as u64) as usize;
        let e = (s + SNARF as usize).min(d2.len());
        assert_eq!(got, &d2[s..e]);
        s2.lock().push(d);
    }));
    let w = repo.begin_backup(new).unwrap();
    let slot = w.add_volume("v", data.len() as u64, SNARF).unwrap();
    let p = w.preparer();
    let n = (data.len() as u64).div_ceil(SNARF as u64);
    let mut order: Vec<u64> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(9));
    for &i in &order {
        let s = (i * SNARF as u64) as usize;
        let e = (s + SNARF as usize).min(data.len());
        w.put(slot, i, p.prepare(&data[s..e]).unwrap()).unwrap();
    }
    let before_commit = seen.lock().len();
    assert!(
        before_commit > 0,
        "packs sealed during the transfer report their snarfs"
    );
    w.commit().unwrap();
    let all = seen.lock();
    let set: HashSet<u64> = all.iter().map(|d| d.snarf).collect();
    assert_eq!(all.len() as u64, n);
    assert_eq!(set.len() as u64, n);
}

#[test]
fn flipped_byte_is_named_by_check_reader_and_restore() {
    let (_d, repo) = small_repo();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut data = vec![0u8; 1 << 20];
    rng.fill(&mut data[..]);
    let id = backup(
        &repo,
        &[("disk", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        3,
    );
    let reader = repo.volume_reader(id.as_str(), "disk").unwrap();
    let victim = 5u64;
    let r = reader.chunk_ref(victim).unwrap();
    let pack_path = repo.pack_path(&r.pack);
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[r.offset as usize + 100] ^= 0x01;
    std::fs::write(&pack_path, &bytes).unwrap();

    let structural = repo.check(false, &mut |_| {}).unwrap();
    assert!(structural.is_ok(), "{:?}", structural.problems);
    let rep = repo.check(true, &mut |_| {}).unwrap();
    assert!(!rep.is_ok());
    let offset = victim * SNARF as u64;
    let p = rep
        .problems
        .iter()
        .find(|p| p.offset == Some(offset))
        .unwrap_or_else(|| panic!("no problem at {offset}: {:?}", rep.problems));
    assert_eq!(p.backup.as_deref(), Some(id.as_str()));
    assert_eq!(p.volume.as_deref(), Some("disk"));
    assert!(p.to_string().contains("hash"), "{p}");

    let fresh = repo.volume_reader(id.as_str(), "disk").unwrap();
    let mut buf = vec![0u8; 10];
    let err = fresh
        .read_at(offset + 3, &mut buf)
        .unwrap_err()
        .chain()
        .to_string();
    assert!(
        err.contains(id.as_str())
            && err.contains("\"disk\"")
            && err.contains(&format!("byte offset {offset}")),
        "{err}"
    );
    assert!(err.contains("snarf check"), "{err}");

    let dest = tempfile::tempdir().unwrap();
    let err = repo
        .restore(id.as_str(), None, dest.path(), &mut |_| {})
        .unwrap_err()
        .chain()
        .to_string();
    assert!(err.contains(&format!("byte offset {offset}")), "{err}");
    assert!(
        !dest.path().join("disk").exists(),
        "a failed restore leaves no file"
    );
}

#[test]
fn missing_pack_is_a_clear_error() {
    let (_d, repo) = small_repo();
    let data = volume_data(8, 1 << 20);
    let id = backup(
        &repo,
        &[("disk", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        3,
    );
    let reader = repo.volume_reader(id.as_str(), "disk").unwrap();
    let snarf = (0..reader.snarf_count())
        .find(|&i| !reader.is_zero(i).unwrap())
        .unwrap();
    let r = reader.chunk_ref(snarf).unwrap();
    std::fs::remove_file(repo.pack_path(&r.pack)).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let err = repo
        .restore(id.as_str(), None, dest.path(), &mut |_| {})
        .unwrap_err()
        .chain()
        .to_string();
    assert!(
        err.contains(&format!("pack {} is missing", r.pack)),
        "{err}"
    );
    assert!(err.contains(id.as_str()), "{err}");
    let rep = repo.check(false, &mut |_| {}).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.to_string().contains("missing")),
        "{:?}",
        rep.problems
    );
}

#[test]
fn second_writer_fails_naming_the_holder_or_waits_for_it() {
    let (_d, repo) = small_repo();
    let data = volume_data(30, 600_000);
    let w1 = repo
        .begin_backup(NewBackup::new("first", serde_json::Value::Null))
        .unwrap();
    let err = repo
        .begin_backup(NewBackup::new("second", serde_json::Value::Null))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("snarf backup first"), "{err}");
    assert!(err.contains("wait for it to finish"), "{err}");

    let waiter = std::thread::spawn({
        let repo = repo.clone();
        let data = data.clone();
        move || {
            let mut n = NewBackup::new("second", serde_json::Value::Null);
            n.lock_wait = Some(Duration::from_secs(30));
            backup(&repo, &[("v", &data)], n, 1)
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let slot = w1.add_volume("v", data.len() as u64, SNARF).unwrap();
    let p = w1.preparer();
    for i in 0..(data.len() as u64).div_ceil(SNARF as u64) {
        let s = (i * SNARF as u64) as usize;
        let e = (s + SNARF as usize).min(data.len());
        w1.put(slot, i, p.prepare(&data[s..e]).unwrap()).unwrap();
    }
    let id1 = w1.commit().unwrap();
    let id2 = waiter.join().unwrap();
    assert_ne!(id1, id2);
    for id in [id1, id2] {
        let (dest, _) = restore_all(&repo, &id);
        assert_eq!(std::fs::read(dest.path().join("v")).unwrap(), data);
    }
    assert!(repo.check(true, &mut |_| {}).unwrap().is_ok());
}

#[test]
fn abandoned_backup_is_invisible_and_its_packs_are_adopted_then_collected() {
    let (_d, repo) = small_repo();
    let data = volume_data(40, 2 << 20);
    {
        let w = repo
            .begin_backup(NewBackup::new("s", serde_json::Value::Null))
            .unwrap();
        let slot = w.add_volume("v", data.len() as u64, SNARF).unwrap();
        let p = w.preparer();
        for i in 0..16 {
            let s = (i * SNARF as u64) as usize;
            w.put(slot, i, p.prepare(&data[s..s + SNARF as usize]).unwrap())
                .unwrap();
        }
        w.flush().unwrap();
        // Dropped without commit.
    }
    assert!(repo.list_backups().unwrap().is_empty());
    assert!(std::fs::read_dir(repo.tmp_dir()).unwrap().next().is_none());
    let adopted = stored_pack_bytes(&repo);
    assert!(adopted > 0);
    // The next backup of other data finds the adopted packs unreferenced and collects them.
    let other = volume_data(41, 300_000);
    let id = backup(
        &repo,
        &[("w", &other)],
        NewBackup::new("s", serde_json::Value::Null),
        2,
    );
    let rep = repo.check(true, &mut |_| {}).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert!(
        rep.unreferenced_packs.is_empty(),
        "{:?}",
        rep.unreferenced_packs
    );
    assert_eq!(repo.list_backups().unwrap().len(), 1);
    assert_eq!(repo.current().unwrap(), Some(id));
}

#[test]
fn adopted_packs_serve_deduplication_for_the_retried_backup() {
    let (_d, repo) = small_repo();
    let data = volume_data(42, 2 << 20);
    {
        let w = repo
            .begin_backup(NewBackup::new("s", serde_json::Value::Null))
            .unwrap();
        let slot = w.add_volume("v", data.len() as u64, SNARF).unwrap();
        let p = w.preparer();
        for i in 0..32 {
            let s = (i * SNARF as u64) as usize;
            w.put(slot, i, p.prepare(&data[s..s + SNARF as usize]).unwrap())
                .unwrap();
        }
        w.abandon().unwrap();
    }
    let id = backup(
        &repo,
        &[("v", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        2,
    );
    let m = repo.backup(id.as_str()).unwrap();
    assert!(
        m.stats.new_chunks < 8,
        "retry stored {} chunks again",
        m.stats.new_chunks
    );
    let rep = repo.check(true, &mut |_| {}).unwrap();
    assert!(rep.is_ok() && rep.unreferenced_packs.is_empty(), "{rep:?}");
}

#[test]
fn commit_refuses_a_backup_with_missing_snarfs() {
    let (_d, repo) = small_repo();
    let w = repo
        .begin_backup(NewBackup::new("s", serde_json::Value::Null))
        .unwrap();
    let slot = w.add_volume("v", 3 * SNARF as u64, SNARF).unwrap();
    let p = w.preparer();
    w.put(slot, 0, p.prepare(&vec![1u8; SNARF as usize]).unwrap())
        .unwrap();
    assert!(w.put(slot, 3, p.prepare(&[1u8; 10]).unwrap()).is_err());
    assert!(
        w.put(slot, 1, p.prepare(&[1u8; 10]).unwrap()).is_err(),
        "wrong length"
    );
    let err = w.commit().unwrap_err().to_string();
    assert!(err.contains("snarf 1") && err.contains("\"v\""), "{err}");
    assert!(repo.list_backups().unwrap().is_empty());
}

#[test]
fn prune_keeps_the_newest_and_frees_the_rest() {
    let (_d, repo) = small_repo();
    let mut ids = Vec::new();
    for seed in 0..4 {
        let data = volume_data(100 + seed, 700_000);
        ids.push(backup(
            &repo,
            &[("v", &data)],
            NewBackup::new("s", serde_json::Value::Null),
            seed,
        ));
        std::thread::sleep(Duration::from_millis(5));
    }
    let policy = Policy {
        keep_last: 2,
        ..Policy::default()
    };
    let dry = repo.prune(&policy, true).unwrap();
    assert!(dry.dry_run && dry.freed_bytes > 0);
    assert_eq!(repo.list_backups().unwrap().len(), 4);
    let rep = repo.prune(&policy, false).unwrap();
    assert_eq!(rep.decisions.iter().filter(|d| !d.keep).count(), 2);
    assert_eq!(rep.freed_bytes, dry.freed_bytes);
    let left: Vec<BackupId> = repo
        .list_backups()
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    let check = repo.check(true, &mut |_| {}).unwrap();
    assert!(
        check.is_ok() && check.unreferenced_packs.is_empty(),
        "{check:?}"
    );
    for (i, id) in ids[2..].iter().enumerate() {
        let (dest, _) = restore_all(&repo, id);
        assert_eq!(
            std::fs::read(dest.path().join("v")).unwrap(),
            volume_data(102 + i as u64, 700_000)
        );
    }
    match repo.finishing_status().unwrap() {
        FinishingStatus::Idle(Some(last)) => {
            assert_eq!(last.kind, "prune");
            assert_eq!(last.removed.len(), 2);
            assert!(!last.resumed);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn retention_runs_inside_backup_finishing() {
    let (_d, repo) = small_repo();
    for seed in 0..3 {
        let data = volume_data(200 + seed, 300_000);
        let mut n = NewBackup::new("s", serde_json::Value::Null);
        n.retention = Some(Policy {
            keep_last: 2,
            ..Policy::default()
        });
        backup(&repo, &[("v", &data)], n, seed);
    }
    assert_eq!(repo.list_backups().unwrap().len(), 2);
    let check = repo.check(true, &mut |_| {}).unwrap();
    assert!(
        check.is_ok() && check.unreferenced_packs.is_empty(),
        "{check:?}"
    );
}

#[test]
fn index_runs_are_merged_past_the_limit() {
    let (_d, repo) = small_repo();
    for seed in 0..(index::MAX_RUNS as u64 + 2) {
        let data = volume_data(300 + seed, 200_000);
        backup(
            &repo,
            &[("v", &data)],
            NewBackup::new("s", serde_json::Value::Null),
            seed,
        );
    }
    let runs = index::run_names(&repo.index_dir()).unwrap().len();
    assert!(runs <= index::MAX_RUNS, "{runs} runs");
    assert!(repo.check(true, &mut |_| {}).unwrap().is_ok());
}

#[test]
fn open_refuses_non_repositories_and_init_refuses_non_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = Repo::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("is not a snarf repository") && e.contains("snarf repo init"),
        "{e}"
    );
    std::fs::write(dir.path().join("x"), b"").unwrap();
    assert!(matches!(
        Repo::init(dir.path(), &RepoInitOptions::default()),
        Err(Error::NotEmpty { .. })
    ));
    let bad = RepoInitOptions {
        compression: 30,
        ..RepoInitOptions::default()
    };
    assert!(Repo::init(&dir.path().join("new"), &bad).is_err());
}

#[test]
fn pinned_packs_of_an_abandoned_backup_survive_gc_until_unpinned() {
    let (_d, repo) = small_repo();
    let data = volume_data(50, 1 << 20);
    let durable: Arc<Mutex<HashSet<PackId>>> = Arc::default();
    {
        let mut n = NewBackup::new("s", serde_json::Value::Null);
        let (r, seen) = (repo.clone(), durable.clone());
        n.on_durable = Some(Arc::new(move |d: Durable| {
            if !d.chunk.is_zero() && seen.lock().insert(d.chunk.pack) {
                r.pin("snapshot-s", &[d.chunk.pack]).unwrap();
            }
        }));
        let w = repo.begin_backup(n).unwrap();
        let slot = w.add_volume("v", data.len() as u64, SNARF).unwrap();
        let p = w.preparer();
        for i in 0..16 {
            let s = (i * SNARF as u64) as usize;
            w.put(slot, i, p.prepare(&data[s..s + SNARF as usize]).unwrap())
                .unwrap();
        }
        w.flush().unwrap();
    }
    let pinned: Vec<PackId> = durable.lock().iter().copied().collect();
    assert!(!pinned.is_empty());
    backup(
        &repo,
        &[("w", &volume_data(51, 200_000))],
        NewBackup::new("t", serde_json::Value::Null),
        1,
    );
    repo.prune(
        &Policy {
            keep_last: 5,
            ..Policy::default()
        },
        false,
    )
    .unwrap();
    for p in &pinned {
        assert!(repo.pack_path(p).exists(), "pinned pack {p} was collected");
    }
    assert!(repo
        .check(true, &mut |_| {})
        .unwrap()
        .unreferenced_packs
        .is_empty());
    repo.unpin("snapshot-s").unwrap();
    let rep = repo
        .prune(
            &Policy {
                keep_last: 5,
                ..Policy::default()
            },
            false,
        )
        .unwrap();
    assert_eq!(rep.packs_removed, pinned.len() as u64);
    for p in &pinned {
        assert!(!repo.pack_path(p).exists());
    }
}
