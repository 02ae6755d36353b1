//! Crash safety of the repository, process by process: a child process (this test binary
//! re-executed in a child role) writes a backup or runs a prune and is killed with SIGKILL at
//! every fault point, or at random instants; a new process then opens the repository, which
//! completes finishing, and everything committed must check clean and restore byte-exact.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snarf::repo::{fault, Policy, Repo, RepoInitOptions};

/// Environment variable selecting the child role.
const ROLE: &str = "SNARF_TEST_ROLE";
/// Pack size of the test repositories: small, so a backup seals many packs.
const PACK: u64 = 96 << 10;
/// Size of each backup's own volume in the fault tests.
const OWN: usize = 500_000;

/// Points a prune reaches (the rest of the list is reached by a backup).
const PRUNE_POINTS: &[&str] = &[
    "record.prune.written",
    "record.prune.renamed",
    "finish.retention",
    "retention.manifest-removed",
    "retention.removed",
    "record.gc.written",
    "record.gc.renamed",
    "finish.gc",
    "gc.index.written",
    "gc.index.renamed",
    "gc.index.removed",
    "gc.pack-removed",
    "record.done.written",
    "record.done.renamed",
    "finish.done",
    "last.written",
    "last.renamed",
    "record.removed",
];

/// Points reached while a new process recovers: (where the first process was killed, the
/// recovery point the second process is killed at).
const RECOVERY_POINTS: &[(&str, &str)] = &[
    ("commit.tables-synced", "adopt.written"),
    ("commit.tables-synced", "adopt.renamed"),
    ("commit.tables-synced", "adopt.tmp-removed"),
    ("finish.index", "record.resumed.written"),
    ("finish.index", "record.resumed.renamed"),
];

/// The child roles. Does nothing when run as an ordinary test.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let repo_path = PathBuf::from(std::env::var("SNARF_TEST_REPO").expect("repo"));
    let seed: u64 = std::env::var("SNARF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let keep: u32 = std::env::var("SNARF_TEST_KEEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let own: usize = std::env::var("SNARF_TEST_OWN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OWN);
    if role == "faulty" {
        // Three backup objects created through the fault decorator; killed at the armed one.
        use snarf::repo::backend::{faulty::Faulty, Backend, Key, LocalDir};
        let b = Faulty::new(LocalDir::new(&repo_path));
        for s in 0..3u64 {
            let id = snarf::repo::BackupId::generate(1_800_000_000 + s);
            b.create(&Key::Backup(id), b"object").expect("create");
        }
        std::process::exit(0);
    }
    if role == "repair" {
        // Before any open: the repository may be one only a repair can open.
        snarf::repo::repair::repair_index(&repo_path, &mut |_| {}).expect("repair");
        std::process::exit(0);
    }
    let repo = Repo::open(&repo_path).expect("open");
    let policy = (keep > 0).then_some(Policy {
        keep_last: keep,
        ..Policy::default()
    });
    match role.as_str() {
        "backup" => {
            write_backup(&repo, seed, own, policy);
        }
        "open" => {
            // Opening alone completes finishing and recovers transfers.
        }
        "prune" => {
            repo.prune(&policy.expect("keep"), false).expect("prune");
        }
        "hold" => {
            // Holds the lock while the parent tries to take it, then commits.
            let w = repo
                .begin_backup(snarf::repo::NewBackup::new(
                    "held",
                    serde_json::json!({"seed": seed, "own_size": own}),
                ))
                .expect("begin");
            println!("locked");
            std::thread::sleep(Duration::from_millis(700));
            let vols = volumes_for(seed, own);
            let p = w.preparer();
            for (name, data) in &vols {
                let slot = w.add_volume(name, data.len() as u64, SNARF).expect("add");
                for i in 0..(data.len() as u64).div_ceil(SNARF as u64) {
                    let s = (i * SNARF as u64) as usize;
                    let e = (s + SNARF as usize).min(data.len());
                    w.put(slot, i, p.prepare(&data[s..e]).expect("prepare"))
                        .expect("put");
                }
            }
            w.commit().expect("commit");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn spawn_child(
    role: &str,
    repo: &Path,
    seed: u64,
    keep: u32,
    own: usize,
    point: Option<&str>,
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("SNARF_TEST_REPO", repo)
        .env("SNARF_TEST_SEED", seed.to_string())
        .env("SNARF_TEST_KEEP", keep.to_string())
        .env("SNARF_TEST_OWN", own.to_string())
        .env_remove(fault::ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = point {
        cmd.env(fault::ENV, p);
    }
    cmd.spawn().expect("spawn child")
}

fn init_repo(path: &Path) -> Repo {
    Repo::init(
        path,
        &RepoInitOptions {
            compression: 3,
            pack_target: PACK,
        },
    )
    .expect("init")
}

/// A repository with 8 committed backups (seeds 1..=8): the next backup merges index runs.
fn base_repository(dir: &Path) -> PathBuf {
    let path = dir.join("base");
    let repo = init_repo(&path);
    for seed in 1..=8 {
        write_backup(&repo, seed, OWN, None);
    }
    path
}

/// After a crash: a new process (`snarf check --read-data`) completes finishing and finds
/// nothing wrong; every committed backup restores; one more backup works and leaves no
/// unreferenced pack.
fn recover_and_verify(
    path: &Path,
    point: &str,
    next_seed: u64,
) -> (usize, String, serde_json::Value) {
    let (_, finishing_before, _) = snarf(&["finishing", path.to_str().expect("utf8")]);
    let (code, out, err) = snarf(&["check", path.to_str().expect("utf8"), "--read-data"]);
    assert_eq!(
        code, 0,
        "after a kill at {point}, check failed:\n{out}\n{err}"
    );
    let last = std::fs::read(path.join("last-finishing.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or(serde_json::Value::Null);
    let (_, fin, _) = snarf(&["finishing", path.to_str().expect("utf8")]);
    assert!(
        fin.lines().nth(1).is_some_and(|l| l.contains(" idle ")),
        "after {point}: {fin}"
    );
    let repo = Repo::open(path).expect("open");
    let n = verify_all_backups(&repo);
    write_backup(&repo, next_seed, 100_000, None);
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(
        rep.is_ok(),
        "after {point} and one more backup: {:?}",
        rep.problems
    );
    assert!(
        rep.unreferenced_packs.is_empty(),
        "after {point} and one more backup, {} packs are unreferenced",
        rep.unreferenced_packs.len()
    );
    verify_all_backups(&repo);
    (n, finishing_before, last)
}

#[test]
fn backup_killed_at_every_fault_point_completes_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_repository(dir.path());
    let committed_from = fault::POINTS
        .iter()
        .position(|p| *p == "record.manifest.renamed")
        .expect("commit point");
    let mut covered = 0;
    for (i, point) in fault::POINTS.iter().enumerate() {
        if point.starts_with("record.prune.") || RECOVERY_POINTS.iter().any(|(_, p)| p == point) {
            continue;
        }
        let path = dir.path().join(format!("p{i}"));
        copy_tree(&base, &path);
        let status = spawn_child("backup", &path, 9, 3, OWN, Some(point))
            .wait()
            .expect("wait");
        assert_eq!(
            status.signal(),
            Some(9),
            "fault point {point} was not reached (child {status})"
        );
        let (n, finishing_before, last) = recover_and_verify(&path, point, 50);
        let committed = i >= committed_from;
        // Committed: 9 backups, retention keeps 3. Not committed: the 8 of the base.
        assert_eq!(
            n,
            if committed { 3 } else { 8 },
            "backups after a kill at {point}"
        );
        if committed && *point != "record.removed" {
            assert!(
                finishing_before.contains(" interrupted ")
                    && finishing_before.contains("backup cut off"),
                "{point}: {finishing_before}"
            );
            // The check process completed it and recorded that it was resumed.
            assert_eq!(last["resumed"], true, "{point}: {last}");
            assert_eq!(
                last["removed"].as_array().map(Vec::len),
                Some(6),
                "{point}: {last}"
            );
        }
        std::fs::remove_dir_all(&path).expect("cleanup");
        covered += 1;
    }
    eprintln!("backup: {covered} fault points covered");
    assert_eq!(covered, fault::POINTS.len() - 2 - RECOVERY_POINTS.len());
}

#[test]
fn prune_killed_at_every_fault_point_completes_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_repository(dir.path());
    for p in PRUNE_POINTS {
        assert!(fault::POINTS.contains(p), "{p} is not a fault point");
    }
    for (i, point) in PRUNE_POINTS.iter().enumerate() {
        let path = dir.path().join(format!("q{i}"));
        copy_tree(&base, &path);
        let status = spawn_child("prune", &path, 0, 2, OWN, Some(point))
            .wait()
            .expect("wait");
        assert_eq!(
            status.signal(),
            Some(9),
            "fault point {point} was not reached (child {status})"
        );
        let (n, _, last) = recover_and_verify(&path, point, 60);
        let committed = i >= 1;
        if committed && *point != "record.removed" {
            assert_eq!(last["kind"], "prune", "{point}: {last}");
            assert_eq!(last["resumed"], true, "{point}: {last}");
        }
        assert_eq!(
            n,
            if committed { 2 } else { 8 },
            "backups after a prune killed at {point}"
        );
        std::fs::remove_dir_all(&path).expect("cleanup");
    }
    eprintln!("prune: {} fault points covered", PRUNE_POINTS.len());
}

#[test]
fn backups_killed_at_random_instants_never_corrupt_the_repository() {
    const LOOPS: u64 = 50;
    const OWN_RANDOM: usize = 2 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r");
    let repo = init_repo(&path);
    drop(repo);
    let keep = 5;
    // Calibrate: how long does a child backup take from spawn to exit? The shortest of
    // three, so a slow first run on a busy machine does not let most children finish.
    let mut full = Duration::MAX;
    for seed in 1..=3 {
        let t = Instant::now();
        let status = spawn_child("backup", &path, seed, keep, OWN_RANDOM, None)
            .wait()
            .expect("wait");
        assert!(status.success());
        full = full.min(t.elapsed());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let mut killed = 0;
    // Kills that left nothing, an abandoned transfer, or an interrupted finishing.
    let mut phases = [0u32; 3];
    for i in 0..LOOPS {
        let mut child = spawn_child("backup", &path, 1000 + i, keep, OWN_RANDOM, None);
        let delay = full.mul_f64(rng.random_range(0.2..1.0));
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if status.signal() == Some(9) {
            killed += 1;
            // Where did the kill land? Seen from what it left on disk.
            if path.join("finishing.json").exists() {
                phases[2] += 1;
            } else if std::fs::read_dir(path.join("tmp"))
                .expect("tmp")
                .next()
                .is_some()
            {
                phases[1] += 1;
            } else {
                phases[0] += 1;
            }
        }
        let repo = Repo::open(&path).expect("open after kill");
        write_backup(
            &repo,
            5000 + i,
            200_000,
            Some(Policy {
                keep_last: keep,
                ..Policy::default()
            }),
        );
    }
    let repo = Repo::open(&path).expect("open");
    let rep = repo.check(true, &mut |_| {}).expect("check");
    assert!(rep.is_ok(), "{:?}", rep.problems);
    assert!(
        rep.unreferenced_packs.is_empty(),
        "{} unreferenced packs",
        rep.unreferenced_packs.len()
    );
    let n = verify_all_backups(&repo);
    assert_eq!(n, keep as usize);
    assert!(std::fs::read_dir(path.join("tmp"))
        .expect("tmp")
        .next()
        .is_none());
    eprintln!("random kill: {LOOPS} loops, {killed} children killed mid-run, calibration {full:?}; kills leaving nothing / a transfer / a finishing: {phases:?}");
    // Timing on a shared machine varies; many children must still die mid-run.
    assert!(
        killed >= LOOPS / 4,
        "only {killed} of {LOOPS} children were killed mid-run"
    );
}

#[test]
fn a_writer_in_another_process_is_named_and_waited_for() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c");
    let repo = init_repo(&path);
    let mut child = spawn_child("hold", &path, 3, 0, 300_000, None);
    // The test harness prints its own lines first.
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("locked") {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "the child ended before locking"
        );
    }
    let err = repo
        .begin_backup(snarf::repo::NewBackup::new("mine", serde_json::Value::Null))
        .err()
        .expect("the lock is held")
        .to_string();
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    assert!(
        err.contains("snarf backup held") && err.contains("wait for it to finish"),
        "{err}"
    );
    // Waiting gets the lock once the child has committed.
    let id = write_backup(&repo, 4, 300_000, None);
    assert!(child.wait().expect("wait").success());
    assert_eq!(repo.list_backups().expect("list").len(), 2);
    assert_eq!(repo.current().expect("current"), Some(id));
    assert_eq!(verify_all_backups(&repo), 2);
    assert!(repo.check(true, &mut |_| {}).expect("check").is_ok());
}

#[test]
fn recovery_killed_at_every_fault_point_completes_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_repository(dir.path());
    for (i, (first, point)) in RECOVERY_POINTS.iter().enumerate() {
        let path = dir.path().join(format!("o{i}"));
        copy_tree(&base, &path);
        let status = spawn_child("backup", &path, 9, 3, OWN, Some(first))
            .wait()
            .expect("wait");
        assert_eq!(
            status.signal(),
            Some(9),
            "fault point {first} was not reached"
        );
        let status = spawn_child("open", &path, 0, 0, OWN, Some(point))
            .wait()
            .expect("wait");
        assert_eq!(
            status.signal(),
            Some(9),
            "recovery point {point} was not reached"
        );
        let committed = fault::POINTS.iter().position(|p| p == first)
            >= fault::POINTS
                .iter()
                .position(|p| *p == "record.manifest.renamed");
        let (n, _, _) = recover_and_verify(&path, point, 70);
        assert_eq!(
            n,
            if committed { 3 } else { 8 },
            "backups after {first} then {point}"
        );
        std::fs::remove_dir_all(&path).expect("cleanup");
    }
    eprintln!("recovery: {} fault points covered", RECOVERY_POINTS.len());
}

/// Garbage in the first index run (by name) of the repository at `path`.
fn damage_an_index_run(path: &Path) {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(path.join("index"))
        .expect("index")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    runs.sort();
    std::fs::write(&runs[0], b"SNARFIX1 garbage").expect("damage");
}

#[test]
fn repair_killed_at_every_fault_point_leaves_a_usable_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_repository(dir.path());
    let mut covered = 0;
    for (i, point) in fault::REPAIR_POINTS.iter().enumerate() {
        // A healthy repository: a repair killed anywhere leaves it usable as it is.
        if !point.starts_with("repair.config.") {
            let path = dir.path().join(format!("h{i}"));
            copy_tree(&base, &path);
            let status = spawn_child("repair", &path, 0, 0, OWN, Some(point))
                .wait()
                .expect("wait");
            assert_eq!(status.signal(), Some(9), "{point} was not reached");
            let (n, _, _) = recover_and_verify(&path, point, 80);
            assert_eq!(n, 8, "backups after a repair killed at {point}");
            std::fs::remove_dir_all(&path).expect("cleanup");
            covered += 1;
        }
        // A damaged index and repo.json: killed anywhere, the repair runs again and the
        // repository is whole.
        let path = dir.path().join(format!("d{i}"));
        copy_tree(&base, &path);
        damage_an_index_run(&path);
        std::fs::write(path.join("repo.json"), b"{\"format\": 1, \"comp").expect("damage");
        let status = spawn_child("repair", &path, 0, 0, OWN, Some(point))
            .wait()
            .expect("wait");
        assert_eq!(status.signal(), Some(9), "{point} was not reached");
        let p = path.to_str().expect("utf8");
        let (code, out, err) = snarf(&["repair", "index", p]);
        assert_eq!(code, 0, "repair after a kill at {point}:\n{out}\n{err}");
        let (n, _, _) = recover_and_verify(&path, point, 81);
        assert_eq!(
            n, 8,
            "backups after a repair killed at {point} and run again"
        );
        std::fs::remove_dir_all(&path).expect("cleanup");
        covered += 1;
    }
    eprintln!(
        "repair: {covered} kills at {} fault points covered",
        fault::REPAIR_POINTS.len()
    );
}

#[test]
fn a_finishing_stuck_on_a_damaged_index_completes_after_repair_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_repository(dir.path());
    let path = dir.path().join("stuck");
    copy_tree(&base, &path);
    let status = spawn_child("backup", &path, 9, 3, OWN, Some("finish.index"))
        .wait()
        .expect("wait");
    assert_eq!(status.signal(), Some(9));
    damage_an_index_run(&path);
    let p = path.to_str().expect("utf8");

    // Read-only commands work while the finishing is stuck; writers say what works.
    let (code, out, err) = snarf(&["backups", p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 10, "{out}");
    let repo = Repo::open(&path).expect("open");
    assert!(repo
        .stuck()
        .is_some_and(|w| w.contains("snarf repair index")));
    let (code, out, _) = snarf(&["check", p]);
    assert_eq!(code, 1);
    assert!(
        out.contains("cannot be completed") && out.contains("snarf repair index"),
        "{out}"
    );
    let (code, _, err) = snarf(&["prune", p, "--keep-last", "3"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("at step 2 (index)")
            && err.contains("snarf repair index")
            && err.contains("read-only commands still work"),
        "{err}"
    );
    let dest = dir.path().join("restored");
    let first = repo.list_backups().expect("list")[0].id.to_string();
    let (code, _, err) = snarf(&["restore", p, &first, dest.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = snarf(&["repair", "index", p]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The committed backup's finishing completed, retention included.
    let (n, _, last) = recover_and_verify(&path, "finish.index", 90);
    assert_eq!(n, 3);
    assert_eq!(last["resumed"], true, "{last}");
}

#[test]
fn the_backend_decorator_kills_at_the_numbered_operation_armed() {
    use snarf::repo::backend::{Kind, LocalDir};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("objects");
    LocalDir::new(&path).create_layout().expect("layout");
    let status = spawn_child("faulty", &path, 0, 0, OWN, Some("create.backups#2"))
        .wait()
        .expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "the point was not reached ({status})"
    );
    // Killed right after the second create returned: two objects, durable, and no third.
    let b = LocalDir::new(&path);
    assert_eq!(
        snarf::repo::backend::Backend::list(&b, Kind::Backup)
            .expect("list")
            .len(),
        2
    );
    let status = spawn_child("faulty", &path, 0, 0, OWN, Some("create.backups#9"))
        .wait()
        .expect("wait");
    assert!(
        status.success(),
        "an unreached point must not kill ({status})"
    );
}
