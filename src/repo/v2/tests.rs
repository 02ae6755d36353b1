//! Format 2 repositories end to end: backups full and incremental, reads and restores,
//! check, prune and gc, interrupted backups adopted, and the kill -9 census over every
//! durable backend operation.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::backup::BackupObject;
use super::chunk::{BlobKind, ChunkRef};
use super::tree::Entry;
use super::*;
use crate::chain::ErrorChain;
use crate::repo::backend::{Backend, Key, Kind, LocalDir};
use crate::repo::retention::Policy;

const SNARF: u32 = 4096;
/// 3000 snarfs: three leaves, so the tree has an interior root.
const SNARFS: u64 = 3000;

pub(super) fn opts() -> InitOptions {
    InitOptions {
        compression: 3,
        pack_target: 64 << 10,
        frame_bytes: 4 * u64::from(SNARF),
        gc_grace_secs: 0,
        encryption: None,
    }
}

pub(super) fn local(dir: &Path) -> Arc<dyn Backend> {
    let b = LocalDir::new(dir);
    b.create_layout().unwrap();
    Arc::new(b)
}

/// Snarf `s` in generation `g`: every 7th snarf holds data, every 70th changes with each
/// generation, every 11th of those is all zeros; the rest are holes never put.
fn snarf(g: u64, s: u64) -> Option<Vec<u8>> {
    if !s.is_multiple_of(7) {
        return None;
    }
    if s.is_multiple_of(77) {
        return Some(vec![0; SNARF as usize]);
    }
    let gen = if s.is_multiple_of(70) { g } else { 0 };
    // Half text, half noise: each chunk compresses to about half, so packs fill.
    let text = format!("gen {gen} snarf {s} of a format 2 test volume; ");
    let mut d: Vec<u8> = text.bytes().cycle().take(SNARF as usize / 2).collect();
    let mut x = (gen << 32 | s) ^ 0x9e37_79b9_7f4a_7c15;
    while d.len() < SNARF as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(x as u8);
    }
    Some(d)
}

pub(super) fn volume(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; (SNARFS * u64::from(SNARF)) as usize];
    for s in 0..SNARFS {
        if let Some(d) = snarf(g, s) {
            let at = (s * u64::from(SNARF)) as usize;
            v[at..at + d.len()].copy_from_slice(&d);
        }
    }
    v
}

/// Backs up generation `g`: all of it when `base` is `None`, else only the snarfs that
/// changed since generation `g - 1` (an incremental over `base`).
pub(super) fn backup(repo: &Repository, g: u64, base: Option<&BackupObject>) -> BackupObject {
    let w = repo
        .begin_backup(NewBackup::new(
            &format!("gen{g}"),
            serde_json::json!({ "g": g }),
        ))
        .unwrap();
    let slot = w
        .add_volume(
            "vm1",
            SNARFS * u64::from(SNARF),
            SNARF,
            base.map(|b| (b, "vm1")),
        )
        .unwrap();
    for s in 0..SNARFS {
        let changed = base.is_none()
            || (s.is_multiple_of(70) && !s.is_multiple_of(77) && snarf(g, s).is_some());
        if let (true, Some(d)) = (changed, snarf(g, s)) {
            w.put(slot, s, &d).unwrap();
        }
    }
    let id = w.commit().unwrap();
    repo.backup(id.as_str()).unwrap()
}

pub(super) fn read_all(repo: &Repository, b: &BackupObject) -> Vec<u8> {
    let r = repo.volume_reader(b.id.as_str(), "vm1").unwrap();
    let mut out = vec![0u8; r.size() as usize];
    let mut at = 0;
    while at < out.len() {
        let end = (at + 100_000).min(out.len());
        at += r.read_at(at as u64, &mut out[at..end]).unwrap();
    }
    out
}

pub(super) fn restored(repo: &Repository, b: &BackupObject, dest: &Path) -> Vec<u8> {
    repo.restore(b.id.as_str(), None, dest, &mut |_| {})
        .unwrap();
    std::fs::read(dest.join("vm1")).unwrap()
}

fn data_refs(repo: &Repository, b: &BackupObject) -> Vec<ChunkRef> {
    let r = repo.volume_reader(b.id.as_str(), "vm1").unwrap();
    (0..SNARFS)
        .filter_map(|s| match r.entry(s).unwrap() {
            Entry::Chunk(c) => Some(c),
            Entry::Zero => None,
        })
        .collect()
}

#[test]
fn full_and_incremental_backups_read_and_restore_byte_exact_and_holes_stay_holes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(&dir.path().join("r")), &opts()).unwrap();
    assert!(Repository::init(local(&dir.path().join("r")), &opts()).is_err());
    let b1 = backup(&repo, 1, None);
    assert_eq!(read_all(&repo, &b1), volume(1));
    let dest = dir.path().join("out1");
    assert_eq!(restored(&repo, &b1, &dest), volume(1));
    // Holes and zero snarfs are not written: the file is sparse.
    let md = std::fs::metadata(dest.join("vm1")).unwrap();
    let data_bytes = (0..SNARFS)
        .filter(|s| s.is_multiple_of(7) && !s.is_multiple_of(77))
        .count() as u64;
    assert!(
        md.blocks() * 512 <= (data_bytes + 64) * u64::from(SNARF),
        "{} blocks",
        md.blocks()
    );
    // Consecutive new chunks share frames (4 snarfs of 4 KiB per frame here).
    let refs = data_refs(&repo, &b1);
    let frames: HashSet<(_, u64)> = refs.iter().map(|r| (r.pack, r.offset)).collect();
    assert!(frames.len() * 3 < refs.len(), "{} frames", frames.len());
    assert!(refs.iter().all(|r| r.kind == BlobKind::Data));

    let records_before = super::index::Index::open(repo.backend(), repo.shared_seal())
        .unwrap()
        .records();
    let b2 = backup(&repo, 2, Some(&b1));
    assert_eq!(read_all(&repo, &b2), volume(2));
    assert_eq!(restored(&repo, &b2, &dir.path().join("out2")), volume(2));
    assert_eq!(read_all(&repo, &b1), volume(1), "the base is unchanged");
    // The incremental stored only its changed chunks and the pages above them.
    let changed = (0..SNARFS)
        .filter(|s| s.is_multiple_of(70) && !s.is_multiple_of(77) && snarf(2, *s).is_some())
        .count() as u64;
    assert_eq!(b2.stats.new_chunks, changed);
    let records = super::index::Index::open(repo.backend(), repo.shared_seal())
        .unwrap()
        .records();
    // Changed leaves (all three here) plus the root.
    assert!(
        records - records_before <= changed + 4,
        "{records} {records_before}"
    );
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.backups, 2);
    assert!(report.chunks_read > 0);
    assert!(report.unreferenced_packs.is_empty());
}

#[test]
fn an_unchanged_incremental_shares_every_page_and_identical_data_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let b1 = backup(&repo, 1, None);
    let w = repo
        .begin_backup(NewBackup::new("same", serde_json::json!({})))
        .unwrap();
    w.add_volume("vm1", SNARFS * u64::from(SNARF), SNARF, Some((&b1, "vm1")))
        .unwrap();
    let id = w.commit().unwrap();
    let b2 = repo.backup(id.as_str()).unwrap();
    assert_eq!(b2.volumes[0].root, b1.volumes[0].root);
    assert_eq!(b2.stats.packs, 0);
    // A full backup of the same data again stores no chunk, only (deduplicated) pages.
    let b3 = backup(&repo, 1, None);
    assert_eq!(b3.stats.new_chunks, 0);
    assert_eq!(b3.volumes[0].root, b1.volumes[0].root);
    assert_eq!(read_all(&repo, &b3), volume(1));
}

#[test]
fn index_runs_are_merged_as_backups_accumulate_and_lookups_still_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let mut base = backup(&repo, 1, None);
    for g in 2..12 {
        base = backup(&repo, g, Some(&base));
        let runs = repo.backend().list(Kind::Index).unwrap().len();
        assert!(runs <= 8, "{runs} index runs after {g} backups");
    }
    for b in repo.list_backups().unwrap() {
        let g = b.source["g"].as_u64().unwrap();
        assert_eq!(read_all(&repo, &b), volume(g));
    }
    // Everything is still found: the same data again stores no chunk.
    assert_eq!(backup(&repo, 11, None).stats.new_chunks, 0);
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A folder whose index runs cannot be deleted (a permission or disk problem).
#[derive(Debug)]
struct StuckIndex(LocalDir);

impl Backend for StuckIndex {
    fn location(&self) -> String {
        self.0.location()
    }
    fn read(&self, key: &Key, cap: u64) -> crate::repo::Result<Option<Vec<u8>>> {
        self.0.read(key, cap)
    }
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> crate::repo::Result<Vec<u8>> {
        self.0.read_range(key, offset, len)
    }
    fn size(&self, key: &Key) -> crate::repo::Result<Option<u64>> {
        self.0.size(key)
    }
    fn write(&self, key: &Key, data: &[u8]) -> crate::repo::Result<()> {
        self.0.write(key, data)
    }
    fn create(&self, key: &Key, data: &[u8]) -> crate::repo::Result<crate::repo::backend::Created> {
        self.0.create(key, data)
    }
    fn upload(&self, key: &Key) -> crate::repo::Result<Box<dyn crate::repo::backend::Upload>> {
        self.0.upload(key)
    }
    fn list(&self, kind: Kind) -> crate::repo::Result<Vec<(Key, u64)>> {
        self.0.list(kind)
    }
    fn delete(&self, key: &Key) -> crate::repo::Result<bool> {
        if key.kind() == Kind::Index {
            return Err(crate::repo::Error::BadArgument(
                "index runs are stuck".into(),
            ));
        }
        self.0.delete(key)
    }
    fn lock(
        &self,
        holder: &str,
        wait: Option<std::time::Duration>,
    ) -> crate::repo::Result<Box<dyn crate::repo::backend::LockGuard>> {
        self.0.lock(holder, wait)
    }
    fn sweep_leftovers(&self) -> crate::repo::Result<u64> {
        self.0.sweep_leftovers()
    }
}

#[test]
fn a_failed_index_merge_after_the_commit_does_not_fail_the_committed_backup() {
    let dir = tempfile::tempdir().unwrap();
    local(dir.path());
    let repo = Repository::init(Arc::new(StuckIndex(LocalDir::new(dir.path()))), &opts()).unwrap();
    let mut base = backup(&repo, 1, None);
    // Past 8 runs every commit tries to merge, and each merge fails to delete the old runs.
    for g in 2..11 {
        base = backup(&repo, g, Some(&base));
    }
    assert_eq!(repo.backup_ids().unwrap().len(), 10);
    assert_eq!(read_all(&repo, &base), volume(10));
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A folder that counts range reads.
#[derive(Debug)]
pub(super) struct Counting(pub(super) LocalDir, pub(super) std::sync::atomic::AtomicU64);

impl Backend for Counting {
    fn location(&self) -> String {
        self.0.location()
    }
    fn read(&self, key: &Key, cap: u64) -> crate::repo::Result<Option<Vec<u8>>> {
        self.0.read(key, cap)
    }
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> crate::repo::Result<Vec<u8>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.read_range(key, offset, len)
    }
    fn size(&self, key: &Key) -> crate::repo::Result<Option<u64>> {
        self.0.size(key)
    }
    fn write(&self, key: &Key, data: &[u8]) -> crate::repo::Result<()> {
        self.0.write(key, data)
    }
    fn create(&self, key: &Key, data: &[u8]) -> crate::repo::Result<crate::repo::backend::Created> {
        self.0.create(key, data)
    }
    fn upload(&self, key: &Key) -> crate::repo::Result<Box<dyn crate::repo::backend::Upload>> {
        self.0.upload(key)
    }
    fn list(&self, kind: Kind) -> crate::repo::Result<Vec<(Key, u64)>> {
        self.0.list(kind)
    }
    fn delete(&self, key: &Key) -> crate::repo::Result<bool> {
        self.0.delete(key)
    }
    fn lock(
        &self,
        holder: &str,
        wait: Option<std::time::Duration>,
    ) -> crate::repo::Result<Box<dyn crate::repo::backend::LockGuard>> {
        self.0.lock(holder, wait)
    }
    fn sweep_leftovers(&self) -> crate::repo::Result<u64> {
        self.0.sweep_leftovers()
    }
}

#[test]
fn gc_reads_each_shared_leaf_once_however_many_backups_share_it() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    local(dir.path());
    let counting = Arc::new(Counting(LocalDir::new(dir.path()), Default::default()));
    let repo = Repository::init(counting.clone(), &opts()).unwrap();
    // 40 leaves with one chunk each: more pages than the reader's frame cache holds.
    let snarfs = 40 * 1024;
    let size = snarfs * u64::from(SNARF);
    let w = repo
        .begin_backup(NewBackup::new("wide", serde_json::json!({})))
        .unwrap();
    let slot = w.add_volume("vm1", size, SNARF, None).unwrap();
    for leaf in 0..40u64 {
        let d = snarf(1, 7 * leaf * 150).unwrap_or_else(|| vec![leaf as u8 + 1; SNARF as usize]);
        w.put(slot, leaf * 1024, &d).unwrap();
    }
    let first = repo.backup(w.commit().unwrap().as_str()).unwrap();
    let reads = |repo: &Repository| {
        let fresh = Repository::open(repo.backend().clone()).unwrap();
        let before = counting.1.load(Ordering::Relaxed);
        gc::referenced(&fresh).unwrap();
        counting.1.load(Ordering::Relaxed) - before
    };
    let one = reads(&repo);
    for _ in 0..9 {
        let w = repo
            .begin_backup(NewBackup::new("same", serde_json::json!({})))
            .unwrap();
        w.add_volume("vm1", size, SNARF, Some((&first, "vm1")))
            .unwrap();
        w.commit().unwrap();
    }
    let ten = reads(&repo);
    assert!(
        ten < 2 * one,
        "one backup: {one} reads, ten sharing its leaves: {ten}"
    );
}

#[test]
fn prune_deletes_backups_and_gc_their_packs_while_the_kept_ones_restore() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let b1 = backup(&repo, 1, None);
    let b2 = backup(&repo, 2, Some(&b1));
    let b3 = backup(&repo, 3, Some(&b2));
    let before = repo.backend().list(Kind::Pack).unwrap().len();
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let dry = gc::prune(&repo, &policy, true).unwrap();
    assert!(dry.gc.is_none());
    assert_eq!(repo.backup_ids().unwrap().len(), 3);
    let r = gc::prune(&repo, &policy, false).unwrap();
    assert_eq!(repo.backup_ids().unwrap(), vec![b3.id.clone()]);
    let gc = r.gc.unwrap();
    // b2's changed chunks are gone; b1's unchanged ones are still used by b3.
    assert!(gc.packs_removed > 0, "{gc:?}");
    assert!(repo.backend().list(Kind::Pack).unwrap().len() < before);
    assert_eq!(read_all(&repo, &b3), volume(3));
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.unreferenced_packs.is_empty());
    assert!(repo
        .backend()
        .size(&Key::State(crate::repo::backend::StateName::GcPending))
        .unwrap()
        .is_none());
}

#[test]
fn an_interrupted_backup_is_adopted_so_the_next_one_sends_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    {
        let w = repo
            .begin_backup(NewBackup::new("cut", serde_json::json!({})))
            .unwrap();
        let slot = w
            .add_volume("vm1", SNARFS * u64::from(SNARF), SNARF, None)
            .unwrap();
        for s in 0..SNARFS / 2 {
            if let Some(d) = snarf(1, s) {
                w.put(slot, s, &d).unwrap();
            }
        }
        // Dropped uncommitted: the packs sealed so far stay.
    }
    assert!(repo.backup_ids().unwrap().is_empty());
    let sealed = repo.backend().list(Kind::Pack).unwrap().len();
    assert!(sealed > 0);
    let b = backup(&repo, 1, None);
    let all_new = (0..SNARFS)
        .filter(|s| s.is_multiple_of(7) && !s.is_multiple_of(77))
        .count() as u64;
    assert!(
        b.stats.new_chunks < all_new * 2 / 3,
        "{} of {all_new} chunks sent again",
        b.stats.new_chunks
    );
    assert_eq!(read_all(&repo, &b), volume(1));
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn unreferenced_packs_wait_out_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(
        local(dir.path()),
        &InitOptions {
            gc_grace_secs: 3600,
            ..opts()
        },
    )
    .unwrap();
    let b1 = backup(&repo, 1, None);
    let b2 = backup(&repo, 2, Some(&b1));
    backup(&repo, 3, Some(&b2));
    let before = repo.backend().list(Kind::Pack).unwrap().len();
    let r = gc::prune(
        &repo,
        &Policy {
            keep_last: 1,
            ..Policy::default()
        },
        false,
    )
    .unwrap()
    .gc
    .unwrap();
    assert_eq!(r.packs_removed, 0);
    assert!(r.packs_in_grace > 0);
    assert_eq!(repo.backend().list(Kind::Pack).unwrap().len(), before);
}

#[test]
fn damage_is_found_by_check_and_is_an_error_on_read_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let b1 = backup(&repo, 1, None);
    let refs = data_refs(&repo, &b1);
    let victim = refs[3];
    let path = dir.path().join(Key::Pack(victim.pack).name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim.offset as usize + 5] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let fresh = Repository::open(repo.backend().clone()).unwrap();
    let report = fresh.check(true, &mut |_| {}).unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.backup.as_deref() == Some(b1.id.as_str())
                && p.volume.as_deref() == Some("vm1"))
    );
    let r = fresh.volume_reader(b1.id.as_str(), "vm1").unwrap();
    let s = (0..SNARFS)
        .find(|s| r.entry(*s).unwrap() == Entry::Chunk(victim))
        .unwrap();
    let e = r.read_snarf(s).unwrap_err().chain().to_string();
    assert!(e.contains(&victim.pack.to_string()), "{e}");
    // A missing pack is named.
    std::fs::remove_file(&path).unwrap();
    let e = fresh.volume_reader(b1.id.as_str(), "vm1").unwrap();
    let msg = e.read_snarf(s).unwrap_err().chain().to_string();
    assert!(msg.contains("missing"), "{msg}");
    // A backup object that is not one is damage, skipped by listings and named by check.
    let obj = dir.path().join(Key::Backup(b1.id.clone()).name());
    std::fs::write(&obj, b"{\"format\": 2}").unwrap();
    assert!(fresh.list_backups().unwrap().is_empty());
    assert!(fresh.backup(b1.id.as_str()).is_err());
}

#[test]
fn hostile_volume_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let w = repo
        .begin_backup(NewBackup::new("h", serde_json::json!({})))
        .unwrap();
    assert!(w.add_volume("../x", 4096, SNARF, None).is_err());
    assert!(w.add_volume("v", 4096, 0, None).is_err());
    assert!(w.add_volume("v", u64::MAX, SNARF, None).is_err());
    assert!(w
        .add_volume("v", (1 << 28) * u64::from(SNARF) + 1, SNARF, None)
        .is_err());
    let s = w.add_volume("v", 10_000, SNARF, None).unwrap();
    assert!(w.add_volume("v", 4096, SNARF, None).is_err());
    assert!(w.put(s, 3, &[1; 4096]).is_err(), "past the end");
    assert!(w.put(s, 2, &[1; 4096]).is_err(), "the last snarf is short");
    w.put(s, 2, &[1; 10_000 - 8192]).unwrap();
    assert!(w.put(super::writer::Slot(9), 0, &[1; 4096]).is_err());
    let id = w.commit().unwrap();
    let r = repo.volume_reader(id.as_str(), "v").unwrap();
    let mut buf = vec![9u8; 10_000];
    assert_eq!(r.read_at(0, &mut buf).unwrap(), 10_000);
    assert!(buf[..8192].iter().all(|b| *b == 0));
    assert!(buf[8192..].iter().all(|b| *b == 1));
    assert_eq!(r.read_at(10_000, &mut buf).unwrap(), 0);
    assert!(r.entry(3).is_err());
    assert!(repo.volume_reader(id.as_str(), "nope").is_err());
    assert!(repo.volume_reader("../../etc", "v").is_err());
}

/// The kill -9 census over format 2: a child runs backups (full, incremental) and a prune
/// through the fault-injection backend, killed at each of its durable operations in turn;
/// after each kill the repository opens, completes what was cut short, checks clean, and
/// every committed backup restores byte-exact.
#[cfg(feature = "fault-injection")]
mod crash {
    use super::*;
    use crate::repo::backend::faulty::Faulty;

    const DIR_ENV: &str = "SNARF_V2_CRASH_DIR";

    fn scenario(dir: &Path, census: bool) -> Vec<String> {
        let inner = LocalDir::new(dir);
        let faulty = Arc::new(if census {
            Faulty::with_census(inner)
        } else {
            Faulty::new(inner)
        });
        let repo = Repository::open(faulty.clone()).unwrap();
        let b1 = backup(&repo, 1, None);
        let b2 = backup(&repo, 2, Some(&b1));
        backup(&repo, 3, Some(&b2));
        gc::prune(
            &repo,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            false,
        )
        .unwrap();
        backup(&repo, 4, None);
        faulty.census()
    }

    #[test]
    #[ignore = "the child of every_durable_operation_killed_leaves_a_repository_that_checks_and_restores"]
    fn crash_child() {
        if let Ok(dir) = std::env::var(DIR_ENV) {
            scenario(Path::new(&dir), false);
        }
    }

    #[test]
    fn every_durable_operation_killed_leaves_a_repository_that_checks_and_restores() {
        let top = tempfile::tempdir().unwrap();
        let fresh = |name: &str| {
            let d = top.path().join(name);
            Repository::init(local(&d), &opts()).unwrap();
            d
        };
        let census = scenario(&fresh("census"), true);
        assert!(census.len() > 20, "{census:?}");
        for kind in [
            "finish.packs",
            "finish.index",
            "create.backups",
            "write.state",
            "delete.backups",
            "delete.packs",
            "delete.index",
            "delete.state",
        ] {
            assert!(
                census.iter().any(|p| p.starts_with(kind)),
                "{kind} not in {census:?}"
            );
        }
        let exe = std::env::current_exe().unwrap();
        for (n, point) in census.iter().enumerate() {
            let d = fresh(&format!("kill{n}"));
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "repo::v2::tests::crash::crash_child",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(DIR_ENV, &d)
                .env(crate::repo::fault::ENV, point)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "point {point} was not reached"
            );
            let repo = Repository::open(local(&d)).unwrap();
            // A writer's open completes a cut-short gc and adopts a killed backup's packs.
            drop(repo.lock("test", None).unwrap());
            gc::adopt(&repo).unwrap();
            let report = repo.check(true, &mut |_| {}).unwrap();
            assert!(
                report.is_ok(),
                "after a kill at {point}: {:?}",
                report.problems
            );
            for b in repo.list_backups().unwrap() {
                let g = b.source["g"].as_u64().unwrap();
                assert_eq!(
                    read_all(&repo, &b),
                    volume(g),
                    "backup gen{g} after a kill at {point}"
                );
            }
            // And the next backup works.
            let b = backup(&repo, 5, None);
            assert_eq!(read_all(&repo, &b), volume(5), "after a kill at {point}");
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}

#[test]
fn a_writer_dropped_mid_backup_reported_durable_only_chunks_of_sealed_packs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(local(dir.path()), &opts()).unwrap();
    let mut new = NewBackup::new("mid", serde_json::json!({}));
    new.report_durable = true;
    let w = repo.begin_backup(new).unwrap();
    let slot = w
        .add_volume("v", SNARFS * u64::from(SNARF), SNARF, None)
        .unwrap();
    let (mut acked, mut put) = (Vec::new(), 0);
    for s in 0..SNARFS {
        if let Some(d) = snarf(0, s) {
            w.put(slot, s, &d).unwrap();
            put += 1;
            acked.extend(w.take_durable().unwrap());
        }
    }
    // The job fails here: frames still being compressed and the open pack are lost.
    drop(w);
    let data: Vec<_> = acked.iter().filter(|d| !d.chunk.is_zero()).collect();
    assert!(!data.is_empty(), "packs were sealed while the backup ran");
    assert!(
        acked.len() < put,
        "the open pack's snarfs were not reported"
    );
    let packs: HashSet<Key> = repo
        .backend()
        .list(Kind::Pack)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for d in data {
        assert!(
            packs.contains(&Key::Pack(d.chunk.pack)),
            "snarf {}",
            d.snarf
        );
        let raw = pack::read_frame(repo.backend().as_ref(), repo.seal(), &d.chunk).unwrap();
        let got = pack::blob_of(repo.seal(), &raw, &d.chunk, "r").unwrap();
        assert_eq!(Some(got), snarf(0, d.snarf), "snarf {}", d.snarf);
    }
}
