//! Format 2 under power loss: a child process runs a format 2 backup or prune on a
//! power-cut filesystem, and a strict cut is taken before every fsync it makes (so every
//! instant between two durable backend operations is cut), then once after it ended. Each
//! cut, mounted again, must check clean with `--read-data`, hold exactly the old backups or
//! the new ones (once a cut holds the new set, every later one must; the cut after the end
//! must), restore each byte-exact, and take one more backup.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use snarf::repo::handle::InitOptions;
use snarf::repo::{fault, v2, Handle, Location, Policy};

use crate::common::{snarf, volumes_for, write_backup_v2};
use crate::powerfs::{Image, Model, PowerMount};
use crate::runner::{checked, Case, Found};

/// Child roles of this module (handled by [`child_role`]).
pub const ROLES: [&str; 2] = ["v2-backup", "v2-prune"];
const OWN: usize = 400_000;
const BASE: [u64; 3] = [1, 2, 3];
const NEW: u64 = 9;
const AFTER_BACKUP: [u64; 4] = [1, 2, 3, 9];
const AFTER_PRUNE: [u64; 2] = [2, 3];
const REPO: &str = "repo2";

fn open(path: &Path) -> Result<v2::Repository, String> {
    match Handle::open_path(path).map_err(|e| e.to_string())? {
        Handle::V2(r) => Ok(r),
        Handle::V1(_) => Err(format!("{} is format 1", path.display())),
    }
}

/// The child roles; `main`'s `child_role` test calls this for [`ROLES`].
pub fn child_role(role: &str) {
    let path = std::path::PathBuf::from(std::env::var("SNARF_POWER_REPO").expect("repo path"));
    let repo = open(&path).expect("open");
    match role {
        "v2-backup" => {
            write_backup_v2(&repo, NEW, OWN);
        }
        "v2-prune" => {
            let policy = Policy {
                keep_last: 2,
                ..Policy::default()
            };
            v2::gc::prune(&repo, &policy, false).expect("prune");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// The base: [`BASE`] format 2 backups on a power-cut filesystem, then the power cut.
pub fn base_image(dir: &Path) -> (Image, Found) {
    let mut found = Found::default();
    let mnt = dir.join("base2");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let img = {
        let pm = PowerMount::empty(&mnt).expect("mounting the power-cut filesystem");
        let opts = InitOptions {
            format: 2,
            compression: 3,
            pack_target: 96 << 10,
            encryption: None,
        };
        let Handle::V2(repo) =
            Handle::init(&Location::local(&mnt.join(REPO)), &opts).expect("init")
        else {
            panic!("format 2 init made format 1");
        };
        for seed in BASE {
            write_backup_v2(&repo, seed, OWN);
        }
        drop(repo);
        pm.cut(None)
    };
    let check = dir.join("base2-check");
    std::fs::create_dir_all(&check).expect("mount point");
    let r = verify(&img, &check, &[&BASE], "the base").map(|_| ());
    found.cut("3 format 2 backups, then the power cut".into(), r);
    (img, found)
}

/// The sweeps: a format 2 backup and prune on the base, cut before every fsync.
pub fn sweeps(base: Arc<Image>) -> Vec<(String, Case)> {
    let b = "every fsync of a format 2 backup".to_string();
    let p = "every fsync of a format 2 prune".to_string();
    vec![
        (
            b.clone(),
            sweep("v2-backup", b, base.clone(), &BASE, &AFTER_BACKUP),
        ),
        (p.clone(), sweep("v2-prune", p, base, &BASE, &AFTER_PRUNE)),
    ]
}

fn sweep(
    role: &'static str,
    label: String,
    start: Arc<Image>,
    old: &'static [u64],
    new: &'static [u64],
) -> Case {
    use crate::powerfs::Op;
    Box::new(move |dir: &Path| {
        let mut found = Found::default();
        let run = dir.join("run");
        let again = dir.join("again");
        let shots = Arc::new(parking_lot::Mutex::new(Vec::<(Image, &'static str)>::new()));
        let ran = (|| -> Result<Image, String> {
            std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&again).map_err(|e| e.to_string())?;
            let pm =
                PowerMount::mount(Model::from_image(&start), &run).map_err(|e| e.to_string())?;
            let shots_in = shots.clone();
            pm.set_hook(Box::new(move |op, _ino, m| {
                let op = match op {
                    Op::FileSync => "a file fsync",
                    Op::DirSync => "a folder fsync",
                    _ => return,
                };
                shots_in.lock().push((m.cut(None), op));
            }));
            let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
                .env(crate::repo::ROLE, role)
                .env("SNARF_POWER_REPO", run.join(REPO))
                .env_remove(fault::ENV)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("spawning the child: {e}"))?;
            pm.clear_hook();
            if !out.status.success() {
                return Err(format!(
                    "the {role} child failed: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
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
        let mut shots = std::mem::take(&mut *shots.lock());
        shots.push((end, "nothing: the run had ended"));
        let last = shots.len() - 1;
        let mut seen = std::collections::HashSet::new();
        let mut committed = false;
        for (i, (image, op)) in shots.into_iter().enumerate() {
            if !seen.insert(image.fingerprint()) && i != last {
                continue;
            }
            let allowed: &[&[u64]] = if i == last || committed {
                &[new]
            } else {
                &[old, new]
            };
            let at = format!("{i} of {label}, before {op}");
            let r = verify(&image, &again, allowed, &at);
            if let Ok(seeds) = &r {
                committed |= seeds.as_slice() == new;
            }
            found.cut(at, r.map(|_| ()));
        }
        found
    })
}

/// Checks one cut: check --read-data clean, the committed backups one of `allowed`, each
/// byte-exact, and one more backup works and checks clean.
fn verify(img: &Image, mnt: &Path, allowed: &[&[u64]], at: &str) -> Result<Vec<u64>, String> {
    let pm = PowerMount::mount(Model::from_image(img), mnt).map_err(|e| e.to_string())?;
    let path = mnt.join(REPO);
    let result = checked(|| {
        let p = path.to_str().ok_or("path")?;
        let (code, out, err) = snarf(&["check", p, "--read-data"]);
        if code != 0 {
            return Err(format!(
                "snarf check --read-data after a cut at {at} failed: {out} {err}"
            ));
        }
        let repo = open(&path).map_err(|e| format!("opening after a cut at {at}: {e}"))?;
        let mut seeds = Vec::new();
        for b in repo.list_backups().map_err(|e| e.to_string())? {
            let seed = b.source["seed"].as_u64().ok_or("no seed")?;
            restore_equals(&repo, b.id.as_str(), seed)?;
            seeds.push(seed);
        }
        if !allowed.contains(&seeds.as_slice()) {
            return Err(format!(
                "after a cut at {at}: backups of seeds {seeds:?} are committed, expected one of {allowed:?}"
            ));
        }
        let id = write_backup_v2(&repo, 50, 100_000);
        let rep = repo
            .check(true, &mut |_| {})
            .map_err(|e| format!("check after one more backup (cut at {at}): {e}"))?;
        if !rep.is_ok() {
            return Err(format!(
                "one more backup after a cut at {at}: {:?}",
                rep.problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
            ));
        }
        restore_equals(&repo, id.as_str(), 50)?;
        Ok(seeds)
    });
    drop(pm);
    result
}

fn restore_equals(repo: &v2::Repository, id: &str, seed: u64) -> Result<(), String> {
    let dest = tempfile::tempdir().map_err(|e| e.to_string())?;
    repo.restore(id, None, dest.path(), &mut |_| {})
        .map_err(|e| format!("restoring {id}: {e}"))?;
    let own = if seed == 50 { 100_000 } else { OWN };
    for (name, data) in volumes_for(seed, own) {
        let got = std::fs::read(dest.path().join(&name)).map_err(|e| e.to_string())?;
        if got != data {
            return Err(format!("backup {id} volume {name} differs after restore"));
        }
    }
    Ok(())
}
