//! The repository under power loss. A child process (this test binary in a child role) runs
//! a backup, a prune or a recovering open on a power-cut filesystem and is killed with
//! SIGKILL at a fault point; then the power is cut (strictly, and torn) and the image is
//! mounted again. There the repository must: still hold every chunk the child was told is
//! durable; complete finishing forward (`snarf check --read-data`, a new process, must find
//! nothing wrong and leave finishing idle); hold exactly the committed backups — the old set
//! before the commit point, the new one after it, either at it — each restoring
//! byte-exact; and take one more backup that leaves no unreferenced pack behind.
//!
//! Which scenario reaches which point is found by trying every point of
//! [`fault::POINTS`] with every scenario: a child that exits normally did not reach it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use snarf::repo::chunk::REF_LEN;
use snarf::repo::{fault, ChunkRef, Durable, NewBackup, Policy, Repo, RepoInitOptions};

use crate::common::{snarf, volumes_for, write_backup, SNARF};
use crate::powerfs::{Image, Model, PowerMount};
use crate::runner::{checked, Case, Found};

/// Environment variable selecting a child role.
pub const ROLE: &str = "SNARF_POWER_ROLE";
/// Pack size: small, so a backup seals several packs.
const PACK: u64 = 96 << 10;
/// Size of each backup's own volume.
const OWN: usize = 400_000;
/// Seeds of the backups in the base repository (8: the next backup merges index runs).
const BASE: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
/// Seed of the backup the child writes.
const NEW: u64 = 9;
/// Retention of the child's backup, and the backups it leaves.
const KEEP_BACKUP: u32 = 3;
const AFTER_BACKUP: [u64; 3] = [7, 8, 9];
/// Retention of the child's prune, and the backups it leaves.
const KEEP_PRUNE: u32 = 2;
const AFTER_PRUNE: [u64; 2] = [7, 8];
/// Where the repository is inside the power-cut filesystem.
const REPO: &str = "repo";

/// What a child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Writes backup [`NEW`] with retention keep-last [`KEEP_BACKUP`].
    Backup,
    /// Prunes to keep-last [`KEEP_PRUNE`].
    Prune,
    /// Opens the repository (recovering what an earlier crash left).
    Open,
}

impl Scenario {
    fn role(self) -> &'static str {
        match self {
            Scenario::Backup => "backup",
            Scenario::Prune => "prune",
            Scenario::Open => "open",
        }
    }
}

/// Which backups a cut may hold.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exactly these seeds.
    Is(&'static [u64]),
    /// One set or the other (a cut at the commit point itself).
    Either(&'static [u64], &'static [u64]),
}

impl Expect {
    fn allows(&self, seeds: &[u64]) -> bool {
        match self {
            Expect::Is(a) => seeds == *a,
            Expect::Either(a, b) => seeds == *a || seeds == *b,
        }
    }
}

fn index(point: &str) -> usize {
    fault::POINTS
        .iter()
        .position(|p| *p == point)
        .unwrap_or(usize::MAX)
}

/// What the child's backup commits: the finishing record's rename is the commit point.
fn backup_expect(point: &str) -> Expect {
    let commit = index("record.manifest.renamed");
    let i = index(point);
    if i < commit {
        Expect::Is(&BASE)
    } else if i == commit {
        Expect::Either(&BASE, &AFTER_BACKUP)
    } else {
        Expect::Is(&AFTER_BACKUP)
    }
}

/// What the child's prune commits: its record's rename is the commit point; the steps it
/// runs after that (retention, gc, done) come earlier in the list of points.
fn prune_expect(point: &str) -> Expect {
    let (first, commit) = (index("record.prune.written"), index("record.prune.renamed"));
    let i = index(point);
    if (first..commit).contains(&i) {
        Expect::Is(&BASE)
    } else if i == commit {
        Expect::Either(&BASE, &AFTER_PRUNE)
    } else {
        Expect::Is(&AFTER_PRUNE)
    }
}

/// The child roles; `main`'s `child_role` test calls this when [`ROLE`] is set.
pub fn child_role(role: &str) {
    let path = std::path::PathBuf::from(std::env::var("SNARF_POWER_REPO").expect("repo path"));
    let repo = Repo::open(&path).expect("open");
    match role {
        "backup" => {
            backup_reporting(&repo);
        }
        "prune" => {
            let policy = Policy {
                keep_last: KEEP_PRUNE,
                ..Policy::default()
            };
            repo.prune(&policy, false).expect("prune");
        }
        "open" => {}
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Writes backup [`NEW`], printing every snarf the writer reports durable.
fn backup_reporting(repo: &Repo) {
    let mut new = NewBackup::new("snap", serde_json::json!({ "seed": NEW, "own_size": OWN }));
    new.retention = Some(Policy {
        keep_last: KEEP_BACKUP,
        ..Policy::default()
    });
    new.on_durable = Some(Arc::new(|d: Durable| {
        let hex: String = d
            .chunk
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!("durable {} {} {hex}", d.slot.0, d.snarf);
    }));
    let w = repo.begin_backup(new).expect("begin backup");
    let p = w.preparer();
    for (name, data) in volumes_for(NEW, OWN) {
        let slot = w
            .add_volume(&name, data.len() as u64, SNARF)
            .expect("add volume");
        for (i, piece) in data.chunks(SNARF as usize).enumerate() {
            w.put(slot, i as u64, p.prepare(piece).expect("prepare"))
                .expect("put");
        }
    }
    w.commit().expect("commit");
}

/// A snarf the child was told is durable.
struct Reported {
    slot: usize,
    snarf: u64,
    chunk: ChunkRef,
}

fn parse_reported(stdout: &str) -> Vec<Reported> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("durable ")?.split(' ');
            let slot = w.next()?.parse().ok()?;
            let snarf = w.next()?.parse().ok()?;
            let hex = w.next()?;
            let mut b = [0u8; REF_LEN];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(Reported {
                slot,
                snarf,
                chunk: ChunkRef::decode(&b)?,
            })
        })
        .collect()
}

/// How a child ended.
enum Ended {
    /// Killed at its fault point, having reported these snarfs durable.
    Killed(Vec<Reported>),
    /// Finished normally: the point is not on its path.
    Finished,
}

fn run_child(scenario: Scenario, repo: &Path, point: &str) -> Result<Ended, String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, scenario.role())
        .env("SNARF_POWER_REPO", repo)
        .env(fault::ENV, point)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawning the child: {e}"))?;
    if out.status.signal() == Some(libc::SIGKILL) {
        Ok(Ended::Killed(parse_reported(&String::from_utf8_lossy(
            &out.stdout,
        ))))
    } else if out.status.success() {
        Ok(Ended::Finished)
    } else {
        Err(format!(
            "the {} child failed ({}): {}",
            scenario.role(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(12)
                .collect::<Vec<_>>()
                .join(" | ")
        ))
    }
}

fn init_repo(path: &Path) -> Result<Repo, String> {
    Repo::init(
        path,
        &RepoInitOptions {
            compression: 3,
            pack_target: PACK,
        },
    )
    .map_err(|e| format!("init: {e}"))
}

/// The base repository: [`BASE`] backups committed on a power-cut filesystem, then the
/// power cut. Every one of them was acknowledged, so the cut must hold them all; that check
/// is the first power-cut point.
pub fn base_image(dir: &Path) -> (Image, Found) {
    let mut found = Found::default();
    let mnt = dir.join("base");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let img = {
        let pm = PowerMount::empty(&mnt).expect("mounting the power-cut filesystem");
        let repo = init_repo(&mnt.join(REPO)).expect("init");
        for seed in BASE {
            write_backup(&repo, seed, OWN, None);
        }
        drop(repo);
        pm.cut(None)
    };
    let check = dir.join("base-check");
    std::fs::create_dir_all(&check).expect("mount point");
    let r = verify(&img, &check, Expect::Is(&BASE), &[], None).map(|_| ());
    found.cut("8 acknowledged backups, then the power cut".into(), r);
    (img, found)
}

/// The image after a backup killed at `first` and a power cut: the start of a recovery.
pub fn crashed_image(base: &Image, dir: &Path, first: &str) -> Result<Image, String> {
    let mnt = dir.join(format!("crash-{first}"));
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let pm = PowerMount::mount(Model::from_image(base), &mnt).map_err(|e| e.to_string())?;
    match run_child(Scenario::Backup, &mnt.join(REPO), first)? {
        Ended::Killed(_) => Ok(pm.cut(None)),
        Ended::Finished => Err(format!("the backup never reached {first}")),
    }
}

/// One case: `scenario` killed at `point` on `start`, the power cut strictly and torn, each
/// cut verified against `expect`.
fn case(
    scenario: Scenario,
    label: String,
    start: Arc<Image>,
    point: &'static str,
    expect: Expect,
    torn_seed: u64,
) -> Case {
    Box::new(move |dir: &Path| {
        let mut found = Found::default();
        let run = dir.join("run");
        let again = dir.join("again");
        let made = std::fs::create_dir_all(&run).and_then(|_| std::fs::create_dir_all(&again));
        if let Err(e) = made {
            found.cut(label, Err(format!("mount points: {e}")));
            return found;
        }
        let cuts = (|| {
            let pm =
                PowerMount::mount(Model::from_image(&start), &run).map_err(|e| e.to_string())?;
            match run_child(scenario, &run.join(REPO), point)? {
                Ended::Finished => Ok(None),
                Ended::Killed(reported) => {
                    Ok(Some((pm.cut(None), pm.cut(Some(torn_seed)), reported)))
                }
            }
        })();
        match cuts {
            Err(e) => found.cut(label, Err(e)),
            Ok(None) => {}
            Ok(Some((strict, torn, reported))) => {
                found.reached.push(point);
                let r = verify(&strict, &again, expect, &reported, Some(point));
                found.cut(format!("{label} (strict)"), r.map(|_| ()));
                found.torn.0 += 1;
                if torn.fingerprint() != strict.fingerprint() {
                    found.torn.1 += 1;
                }
                let r = verify(&torn, &again, expect, &reported, Some(point));
                found.cut(format!("{label} (torn, seed {torn_seed})"), r.map(|_| ()));
            }
        }
        found
    })
}

/// One cut taken while a child ran.
struct Shot {
    image: Image,
    /// What it was taken before.
    op: &'static str,
    /// How many durable reports the parent had read by then.
    reported: usize,
}

/// One case: `scenario` runs to its end on `start` unarmed, and a strict cut is taken
/// before every fsync it makes (the instants between fault points included: between two
/// sealed packs, between two deleted backups), then once more after it ended. Each cut
/// holds `old` or `new`; once one holds `new`, every later one must (finishing only goes
/// forward), and the cut after the end must (the commit was acknowledged).
fn sweep(
    scenario: Scenario,
    label: String,
    start: Arc<Image>,
    old: &'static [u64],
    new: &'static [u64],
) -> Case {
    use crate::powerfs::Op;
    use std::io::BufRead;
    Box::new(move |dir: &Path| {
        let mut found = Found::default();
        let run = dir.join("run");
        let again = dir.join("again");
        let shots = Arc::new(parking_lot::Mutex::new(Vec::<Shot>::new()));
        let reported = Arc::new(parking_lot::Mutex::new(Vec::<Reported>::new()));
        let ran = (|| -> Result<Image, String> {
            std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&again).map_err(|e| e.to_string())?;
            let pm =
                PowerMount::mount(Model::from_image(&start), &run).map_err(|e| e.to_string())?;
            let (shots_in, reported_in) = (shots.clone(), reported.clone());
            pm.set_hook(Box::new(move |op, _ino, m| {
                let op = match op {
                    Op::FileSync => "a file fsync",
                    Op::DirSync => "a folder fsync",
                    _ => return,
                };
                let n = reported_in.lock().len();
                shots_in.lock().push(Shot {
                    image: m.cut(None),
                    op,
                    reported: n,
                });
            }));
            let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
                .env(ROLE, scenario.role())
                .env("SNARF_POWER_REPO", run.join(REPO))
                .env_remove(fault::ENV)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawning the child: {e}"))?;
            let read = child.stdout.take().ok_or("no stdout").map(|out| {
                for line in std::io::BufReader::new(out).lines() {
                    let line = line.map_err(|e| e.to_string())?;
                    reported.lock().extend(parse_reported(&line));
                }
                Ok::<(), String>(())
            });
            if !matches!(read, Ok(Ok(()))) {
                // Only the child this case started, which is not reaped yet.
                let _ = child.kill();
            }
            let status = child.wait().map_err(|e| e.to_string())?;
            read??;
            pm.clear_hook();
            if !status.success() {
                return Err(format!("the {} child failed: {status}", scenario.role()));
            }
            Ok(pm.cut(None))
        })();
        let end = match ran {
            Ok(end) => end,
            Err(e) => {
                found.cut(label, Err(e));
                return found;
            }
        };
        let reported = std::mem::take(&mut *reported.lock());
        let mut shots = std::mem::take(&mut *shots.lock());
        shots.push(Shot {
            image: end,
            op: "nothing: the run had ended",
            reported: reported.len(),
        });
        let last = shots.len() - 1;
        let mut seen = std::collections::HashSet::new();
        let mut committed = false;
        for (i, shot) in shots.into_iter().enumerate() {
            if !seen.insert(shot.image.fingerprint()) && i != last {
                continue;
            }
            let expect = if i == last || committed {
                Expect::Is(new)
            } else {
                Expect::Either(old, new)
            };
            let at = format!("{i} of {label}, before {}", shot.op);
            let r = verify(
                &shot.image,
                &again,
                expect,
                &reported[..shot.reported],
                Some(&at),
            );
            if let Ok(seeds) = &r {
                committed |= seeds == new;
            }
            found.cut(at, r.map(|_| ()));
        }
        found
    })
}

/// The sweeps: a backup and a prune on the base repository, cut before every fsync.
pub fn sweeps(base: Arc<Image>) -> Vec<(String, Case)> {
    let b = "every fsync of a backup".to_string();
    let p = "every fsync of a prune".to_string();
    vec![
        (
            b.clone(),
            sweep(Scenario::Backup, b, base.clone(), &BASE, &AFTER_BACKUP),
        ),
        (
            p.clone(),
            sweep(Scenario::Prune, p, base, &BASE, &AFTER_PRUNE),
        ),
    ]
}

/// Every repository case: each scenario at each fault point.
pub fn cases(base: Arc<Image>, recovery: Vec<(&'static str, Arc<Image>)>) -> Vec<(String, Case)> {
    let mut out: Vec<(String, Case)> = Vec::new();
    let mut seed = 1000;
    for point in fault::POINTS {
        for scenario in [Scenario::Backup, Scenario::Prune] {
            let label = format!("{}@{point}", scenario.role());
            let expect = match scenario {
                Scenario::Backup => backup_expect(point),
                _ => prune_expect(point),
            };
            seed += 1;
            out.push((
                label.clone(),
                case(scenario, label, base.clone(), point, expect, seed),
            ));
        }
        for (first, start) in &recovery {
            let label = format!("open after {first}@{point}");
            seed += 1;
            out.push((
                label.clone(),
                case(
                    Scenario::Open,
                    label,
                    start.clone(),
                    point,
                    backup_expect(first),
                    seed,
                ),
            ));
        }
    }
    out
}

/// Checks one cut (see the module documentation). `point` names the fault point for
/// messages.
fn verify(
    img: &Image,
    mnt: &Path,
    expect: Expect,
    reported: &[Reported],
    point: Option<&str>,
) -> Result<Vec<u64>, String> {
    let pm = PowerMount::mount(Model::from_image(img), mnt).map_err(|e| e.to_string())?;
    let path = mnt.join(REPO);
    let at = point
        .map(|p| format!(" after a cut at {p}"))
        .unwrap_or_default();
    let result = checked(|| {
        // Acknowledged durable snarfs are there before anything is recovered (the mount
        // dropped their pre-images on the strength of it).
        let quiet = Repo::open_quiet(&path).map_err(|e| format!("opening{at}: {e}"))?;
        let vols = volumes_for(NEW, OWN);
        for r in reported {
            let data = quiet.read_chunk_at(&r.chunk).map_err(|e| {
                format!(
                    "snarf {} of volume {} was reported durable but{at} cannot be read: {e}",
                    r.snarf, r.slot
                )
            })?;
            let vol = &vols[r.slot].1;
            let start = r.snarf as usize * SNARF as usize;
            let want = &vol[start..(start + SNARF as usize).min(vol.len())];
            if data != want {
                return Err(format!(
                    "snarf {} of volume {} was reported durable but{at} reads back different bytes",
                    r.snarf, r.slot
                ));
            }
        }
        drop(quiet);
        // Forward: a new process completes finishing and reads every chunk.
        let p = path.to_str().ok_or("path")?;
        let (code, out, err) = snarf(&["check", p, "--read-data"]);
        if code != 0 {
            return Err(format!("snarf check --read-data{at} failed: {out} {err}"));
        }
        let (_, fin, _) = snarf(&["finishing", p]);
        if !fin.lines().nth(1).is_some_and(|l| l.contains(" idle ")) {
            return Err(format!("finishing is not idle{at} after check: {fin}"));
        }
        // Exactly the committed backups, each byte-exact.
        let repo = Repo::open(&path).map_err(|e| format!("opening{at}: {e}"))?;
        let seeds = restored_seeds(&repo)?;
        if !expect.allows(&seeds) {
            return Err(format!(
                "{at}: backups of seeds {seeds:?} are committed, expected {expect:?}"
            ));
        }
        // It goes on: one more backup, nothing left unreferenced.
        let id = write_backup(&repo, 50, 100_000, None);
        let rep = repo
            .check(false, &mut |_| {})
            .map_err(|e| format!("check after one more backup{at}: {e}"))?;
        if !rep.is_ok() {
            return Err(format!(
                "one more backup{at}: {:?}",
                rep.problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
            ));
        }
        if !rep.unreferenced_packs.is_empty() {
            return Err(format!(
                "one more backup{at} left {} packs unreferenced",
                rep.unreferenced_packs.len()
            ));
        }
        restore_equals(&repo, id.as_str(), 50, 100_000)?;
        Ok(seeds)
    });
    drop(pm);
    if result.is_err() {
        keep_for_inspection(img, point);
    }
    result
}

/// Seeds of every committed backup, each restored and compared with what its seed makes.
fn restored_seeds(repo: &Repo) -> Result<Vec<u64>, String> {
    let mut seeds = Vec::new();
    for m in repo.list_backups().map_err(|e| e.to_string())? {
        let seed = m.source["seed"].as_u64().ok_or("no seed")?;
        let own = m.source["own_size"].as_u64().ok_or("no own_size")? as usize;
        restore_equals(repo, m.id.as_str(), seed, own)?;
        seeds.push(seed);
    }
    Ok(seeds)
}

fn restore_equals(repo: &Repo, id: &str, seed: u64, own: usize) -> Result<(), String> {
    let dest = tempfile::tempdir().map_err(|e| e.to_string())?;
    repo.restore(id, None, dest.path(), &mut |_| {})
        .map_err(|e| format!("restoring {id}: {e}"))?;
    for (name, data) in volumes_for(seed, own) {
        let got = std::fs::read(dest.path().join(&name)).map_err(|e| e.to_string())?;
        if got != data {
            return Err(format!("backup {id} volume {name} differs after restore"));
        }
    }
    Ok(())
}

/// With SNARF_POWER_KEEP=DIR, a failing cut's image is written there to look at.
fn keep_for_inspection(img: &Image, point: Option<&str>) {
    if let Ok(dir) = std::env::var("SNARF_POWER_KEEP") {
        let to = Path::new(&dir).join(point.unwrap_or("base").replace('/', "_"));
        let _ = std::fs::create_dir_all(&to);
        let _ = img.write_to(&to);
    }
}
