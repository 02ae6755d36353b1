//! Tests of the repository against damage and hostile contents: index entries whose pack is
//! gone, a finishing that cannot complete, a failing folder fsync at the commit point, and
//! files planted where snarf reads names from disk.

use std::sync::mpsc;
use std::time::Duration;

use super::finishing::{Record, Step};
use super::tests::{backup, restore_all, small_repo, volume_data};
use super::*;
use crate::chain::ErrorChain;

/// Packs holding the data of backup `id`.
fn packs_of(repo: &Repo, id: &BackupId, volume: &str) -> Vec<PackId> {
    let r = repo.volume_reader(id.as_str(), volume).unwrap();
    let mut packs: Vec<PackId> = (0..r.snarf_count())
        .map(|i| r.chunk_ref(i).unwrap())
        .filter(|c| !c.is_zero())
        .map(|c| c.pack)
        .collect();
    packs.sort();
    packs.dedup();
    packs
}

#[test]
fn dedup_never_trusts_an_index_entry_whose_pack_is_gone_or_cut_short() {
    let (_d, repo) = small_repo();
    let data = volume_data(61, 1 << 20);
    let new = || NewBackup::new("s", serde_json::Value::Null);
    let first = backup(&repo, &[("x", &data)], new(), 1);
    let chunks = repo.backup(first.as_str()).unwrap().stats.new_chunks;
    assert!(chunks > 0);
    for p in packs_of(&repo, &first, "x") {
        std::fs::remove_file(repo.pack_path(&p)).unwrap();
    }

    // The same bytes again: stored again, not deduplicated against the missing packs.
    let second = backup(&repo, &[("x", &data)], new(), 2);
    let m = repo.backup(second.as_str()).unwrap();
    assert_eq!(m.stats.new_chunks, chunks, "{:?}", m.stats);
    let (dest, _) = restore_all(&repo, &second);
    assert_eq!(std::fs::read(dest.path().join("x")).unwrap(), data);
    let rep = repo.check(true, &mut |_| {}).unwrap();
    assert!(
        rep.problems
            .iter()
            .all(|p| p.backup.as_deref() != Some(second.as_str())),
        "{:?}",
        rep.problems
    );

    // The stale entries do not make every later backup store the data again.
    let third = backup(&repo, &[("x", &data)], new(), 3);
    assert_eq!(repo.backup(third.as_str()).unwrap().stats.new_chunks, 0);

    // A pack cut short (its trailer gone) is not trusted either.
    for p in packs_of(&repo, &third, "x") {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(repo.pack_path(&p))
            .unwrap();
        f.set_len(f.metadata().unwrap().len() - 10).unwrap();
    }
    let fourth = backup(&repo, &[("x", &data)], new(), 4);
    assert_eq!(
        repo.backup(fourth.as_str()).unwrap().stats.new_chunks,
        chunks
    );
    let (dest, _) = restore_all(&repo, &fourth);
    assert_eq!(std::fs::read(dest.path().join("x")).unwrap(), data);
}

#[test]
fn a_failed_folder_fsync_after_the_finishing_record_keeps_the_backup_committed() {
    let (_d, repo) = small_repo();
    let data = volume_data(62, 700_000);
    fault::fail_once_after("record.manifest.renamed");
    let w = repo
        .begin_backup(NewBackup::new("s", serde_json::Value::Null))
        .unwrap();
    let id = w.id().clone();
    let slot = w.add_volume("v", data.len() as u64, 64 << 10).unwrap();
    let p = w.preparer();
    for i in 0..(data.len() as u64).div_ceil(64 << 10) {
        let s = (i * (64 << 10)) as usize;
        let e = (s + (64 << 10)).min(data.len());
        w.put(slot, i, p.prepare(&data[s..e]).unwrap()).unwrap();
    }
    let err = w.commit().unwrap_err();
    let msg = err.chain().to_string();
    assert!(matches!(err, Error::FinishingStuck { .. }), "{msg}");
    assert!(
        msg.contains(id.as_str()) && msg.contains("Input/output error"),
        "{msg}"
    );
    // The record names the backup, so its transfer folder is still there for finishing.
    assert!(repo.record_path().exists());
    assert!(repo
        .tmp_dir()
        .join(id.as_str())
        .join(writer::DRAFT)
        .exists());

    // The next open completes it.
    let again = Repo::open(repo.path()).unwrap();
    assert_eq!(again.stuck(), None);
    assert_eq!(again.current().unwrap(), Some(id.clone()));
    let (dest, _) = restore_all(&again, &id);
    assert_eq!(std::fs::read(dest.path().join("v")).unwrap(), data);
    assert!(again.check(true, &mut |_| {}).unwrap().is_ok());
    assert!(matches!(
        again.finishing_status().unwrap(),
        FinishingStatus::Idle(_)
    ));
}

#[test]
fn a_finishing_that_cannot_complete_leaves_reading_working_and_names_what_works() {
    let (_d, repo) = small_repo();
    let data = volume_data(63, 600_000);
    let new = || NewBackup::new("s", serde_json::Value::Null);
    let first = backup(&repo, &[("v", &data)], new(), 1);
    let second = backup(&repo, &[("v", &data[..300_000])], new(), 2);
    // The second backup's finishing again at its index step, for a pack that is gone.
    let mut rec = Record::for_backup(second.clone(), &[PackId([7; 16])], None);
    rec.step = Step::Index;
    let run = index::run_path(&repo.index_dir(), &format!("b-{second}"));
    std::fs::remove_file(run).unwrap();
    fsx::write_atomic(
        &repo.record_path(),
        &serde_json::to_vec(&rec).unwrap(),
        fault::FilePoints::NONE,
    )
    .unwrap();

    let repo = Repo::open(repo.path()).expect("open while finishing is stuck");
    let why = repo.stuck().expect("the reason is kept");
    assert!(
        why.contains("pack 07070707") && why.contains("is missing"),
        "{why}"
    );
    repo.complete_pending()
        .expect("complete_pending while stuck");
    assert_eq!(repo.list_backups().unwrap().len(), 2);
    let (dest, _) = restore_all(&repo, &first);
    assert_eq!(std::fs::read(dest.path().join("v")).unwrap(), data);
    let rep = repo.check(false, &mut |_| {}).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.what.contains("cannot be completed") && p.what.contains("is missing")),
        "{:?}",
        rep.problems
    );
    // Writers are refused with what is stuck and which commands still work.
    let err = repo.begin_backup(new()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::FinishingStuck { .. }), "{msg}");
    assert!(
        msg.contains(&format!("backup {second} at step 2 (index)"))
            && msg.contains("snarf backups")
            && msg.contains("snarf check"),
        "{msg}"
    );
    assert!(repo
        .prune(
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            false
        )
        .is_err());
}

/// Runs `f` on a thread and fails the test if it does not return within a minute (a FIFO
/// read by snarf would block it for ever).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} hung"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} failed (see above)"),
    }
}

fn mkfifo(path: &std::path::Path) {
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::mkfifoat(rustix::fs::CWD, path, mode).unwrap();
}

#[test]
fn names_planted_in_tmp_pins_index_and_backups_never_become_paths() {
    let (d, repo) = small_repo();
    let data = volume_data(64, 400_000);
    let id = backup(
        &repo,
        &[("v", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        1,
    );
    let pack = packs_of(&repo, &id, "v")[0];
    // tmp/: a name too long to become an index run name, a file, a link to a folder
    // outside that looks like a transfer.
    let long = repo.tmp_dir().join("x".repeat(250));
    std::fs::create_dir(&long).unwrap();
    std::fs::write(long.join(writer::PACK_LOG), format!("{pack}\n")).unwrap();
    std::fs::write(repo.tmp_dir().join("stray"), b"").unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join(writer::PACK_LOG), format!("{pack}\n")).unwrap();
    std::os::unix::fs::symlink(&outside, repo.tmp_dir().join("20200101-000000-0000")).unwrap();
    // pins/ and index/: FIFOs and a folder named like their files.
    fsx::ensure_dir(&repo.pins_dir()).unwrap();
    mkfifo(&repo.pins_dir().join("fifo"));
    mkfifo(&repo.index_dir().join("fifo.idx"));
    std::fs::create_dir(repo.index_dir().join("dir.idx")).unwrap();
    // backups/: a link named like a backup to a folder outside holding a manifest.
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("manifest.json"), b"precious").unwrap();
    std::os::unix::fs::symlink(&elsewhere, repo.backups_dir().join("20200101-000000-0001"))
        .unwrap();

    let path = repo.path().to_path_buf();
    let repo = within_a_minute("open", move || Repo::open(&path).unwrap());
    assert_eq!(repo.stuck(), None);
    let r2 = repo.clone();
    let second = within_a_minute("a backup", move || {
        backup(
            &r2,
            &[("v", &volume_data(65, 300_000))],
            NewBackup::new("t", serde_json::Value::Null),
            2,
        )
    });
    let r3 = repo.clone();
    within_a_minute("a prune", move || {
        r3.prune(
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            false,
        )
        .unwrap()
    });
    let r4 = repo.clone();
    let rep = within_a_minute("a check", move || r4.check(true, &mut |_| {}).unwrap());
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert_eq!(
        repo.list_backups()
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![second]
    );
    // Nothing outside was read as a transfer or deleted as a backup.
    assert_eq!(
        std::fs::read(elsewhere.join("manifest.json")).unwrap(),
        b"precious"
    );
    assert!(outside.join(writer::PACK_LOG).exists());
    assert!(long.exists() && repo.tmp_dir().join("stray").exists());
}

#[test]
fn impossible_numbers_in_a_table_header_are_damage_not_a_panic() {
    let (_d, repo) = small_repo();
    let data = volume_data(66, 200_000);
    let id = backup(
        &repo,
        &[("v", &data)],
        NewBackup::new("s", serde_json::Value::Null),
        1,
    );
    let table = repo.backups_dir().join(id.as_str()).join("v0000.tbl");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    bytes[16..20].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&table, &bytes).unwrap();
    let err = repo
        .volume_reader(id.as_str(), "v")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is damaged"), "{err}");
    assert!(!repo.check(false, &mut |_| {}).unwrap().is_ok());
}
