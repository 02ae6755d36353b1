//! The store's own state under power loss: settings, the catalogue (`state/store.json`),
//! the stamps, the open marker and the process registry. A store and its repository live
//! on a power-cut filesystem; the real programs run a store's life on it (`snarf init`, a
//! mount, volumes created, written and fsynced, grown and shrunk under a snapshot, a backup
//! job through the mount, a clean unmount, a second session with an incremental backup),
//! and a cut is taken before every fsync of the store's files (strict) and before every
//! folder fsync (torn as well). At each cut the store must open (with its old or its new
//! state, never broken); if it was open at the cut, it must say it was not closed cleanly,
//! and a backup then reads only the regions its write-intent bitmaps marked (or a volume in
//! full, saying why); every write acknowledged by
//! an fsync must be there; the persistent snapshot taken in between must be there from its
//! mkdir to its rmdir, reading what it froze; a backup of what it holds restores byte-exact
//! (so an incremental backup trusted only correct tracking); and the process registry must
//! parse.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use snarf::store::Store;

use crate::common::{snarf, volume_data};
use crate::powerfs::{Image, Model, Op, PowerMount};
use crate::runner::{checked, Case, Found};

/// The store and the repository inside the power-cut filesystem.
const STORE: &str = "store";
const REPO: &str = "repo";

/// Volumes backed up incrementally after an unclean stop, over all cuts (tracking recovered
/// from the write-intent bitmaps, proved by the byte-exact restore beside it).
pub static INCREMENTAL_AFTER_UNCLEAN: AtomicUsize = AtomicUsize::new(0);

/// Torn cuts taken beside each strict one (each keeps another random part of what was not
/// synced).
const TORN_PER_CUT: u64 = 3;

/// Whether the store is open during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// No process has it open: a cut finds it as the last close left it.
    Closed,
    /// Being opened or closed: a cut may find either.
    Changing,
    /// A mount serves it: a cut must leave tracking lost.
    Open,
}

/// A fact acknowledged to a program: once step `after` returned, it must survive a cut.
#[derive(Clone, Debug)]
struct Ack {
    after: usize,
    volume: &'static str,
    what: Fact,
}

#[derive(Clone, Debug)]
enum Fact {
    /// `len` bytes of pattern `seed` at `offset` (fsynced).
    Data { offset: u64, seed: u64, len: usize },
    /// The volume's size (set, then fsynced).
    Size(u64),
    /// Renamed (then live/ fsynced): what was true of it is true of the new name.
    RenamedTo(&'static str),
    /// Deleted (then live/ fsynced): no such volume.
    Gone,
}

/// The contents of a write: pattern `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    volume_data(seed, len)
}

/// Paths of one run of the scenario.
struct Ctx {
    power: PathBuf,
    mnt: PathBuf,
}

impl Ctx {
    fn store(&self) -> PathBuf {
        self.power.join(STORE)
    }
    fn repo(&self) -> PathBuf {
        self.power.join(REPO)
    }
    fn live(&self, vol: &str) -> PathBuf {
        self.mnt.join("live").join(vol)
    }
}

fn run_ok(args: &[&str]) -> Result<String, String> {
    let (code, out, err) = snarf(args);
    if code == 0 {
        Ok(out)
    } else {
        Err(format!("snarf {args:?} failed ({code}): {out} {err}"))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Writes `len` bytes of pattern `seed` at `offset` of a live volume and fsyncs it.
fn write_synced(path: &Path, offset: u64, seed: u64, len: usize) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.write_all_at(&pattern(seed, len), offset)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Sets a live volume's size (creating it) and fsyncs it and live/.
fn set_size_synced(ctx: &Ctx, vol: &str, size: u64) -> Result<(), String> {
    let path = ctx.live(vol);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.set_len(size)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::File::open(ctx.mnt.join("live"))?.sync_all())
        .map_err(|e| format!("resizing {}: {e}", path.display()))
}

/// The mount daemon of one run; dropping it unmounts and stops the daemon it started.
struct Daemon {
    mnt: PathBuf,
    pid: Option<i32>,
}

impl Daemon {
    fn mount(ctx: &Ctx) -> Result<Daemon, String> {
        let out = run_ok(&[
            "mount",
            s(&ctx.store()),
            s(&ctx.mnt),
            "--repo",
            s(&ctx.repo()),
        ])?;
        let pid = out
            .split("daemon pid ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|t| t.parse().ok());
        Ok(Daemon {
            mnt: ctx.mnt.clone(),
            pid,
        })
    }

    fn unmount(mut self) -> Result<(), String> {
        // The kernel sends the release of a file or folder closed just now after close(2)
        // returned; until the daemon has it the mount may still count as busy.
        let mut tries = 0;
        loop {
            match run_ok(&["umount", s(&self.mnt)]) {
                Err(e) if e.contains(" is busy") && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r,
            }
        }?;
        self.wait_gone(Duration::from_secs(30));
        self.pid = None;
        Ok(())
    }

    fn alive(&self) -> bool {
        self.pid.is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|st| {
                    !st.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
    }

    fn wait_gone(&self, limit: Duration) -> bool {
        let t = std::time::Instant::now();
        while self.alive() {
            if t.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid.is_none() {
            return;
        }
        let _ = snarf(&["umount", "--lazy", s(&self.mnt)]);
        if !self.wait_gone(Duration::from_secs(20)) {
            if let Some(pid) = self.pid {
                // Only the daemon this guard started, by its pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                self.wait_gone(Duration::from_secs(5));
            }
        }
    }
}

/// What a step does.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// `snarf init`.
    Init,
    /// `snarf repo init`.
    RepoInit,
    /// `snarf mount`.
    Mount,
    /// `snarf umount`.
    Unmount,
    /// Sets a volume's size (creating it), fsyncs it and live/.
    Size(&'static str, u64),
    /// Writes pattern `seed` of `len` bytes at an offset and fsyncs.
    Write(&'static str, u64, u64, usize),
    /// mkdir snapshots/NAME, then `snarf backup MOUNTPOINT NAME`.
    Backup(&'static str),
    /// rmdir snapshots/NAME.
    Release(&'static str),
    /// mv live/FROM live/TO, then fsync of live/.
    Rename(&'static str, &'static str),
    /// rm live/NAME, then fsync of live/.
    Delete(&'static str),
}

/// One step of the store's life.
struct Step {
    name: &'static str,
    phase: Phase,
    action: Action,
}

const fn step(name: &'static str, phase: Phase, action: Action) -> Step {
    Step {
        name,
        phase,
        action,
    }
}

use Action::*;
use Phase::{Changing, Closed, Open};

/// The steps, in order.
const STEPS: &[Step] = &[
    step("snarf init", Changing, Init),
    step("snarf repo init", Closed, RepoInit),
    step("snarf mount", Changing, Mount),
    step("create volume a (2 MiB)", Open, Size("a", 2 << 20)),
    step(
        "write 256 KiB at 0 of a",
        Open,
        Write("a", 0, 11, 256 << 10),
    ),
    step("create volume b (1 MiB)", Open, Size("b", 1 << 20)),
    step(
        "write 128 KiB at 0 of b",
        Open,
        Write("b", 0, 12, 128 << 10),
    ),
    step(
        "snapshot s1, back it up through the mount",
        Open,
        Backup("s1"),
    ),
    step("write a at 1 MiB", Open, Write("a", 1 << 20, 13, 128 << 10)),
    step("grow a to 3 MiB", Open, Size("a", 3 << 20)),
    step(
        "write a at 2.5 MiB",
        Open,
        Write("a", 5 << 19, 14, 64 << 10),
    ),
    step(
        "shrink b to 512 KiB while s1 holds it",
        Open,
        Size("b", 512 << 10),
    ),
    step("release s1", Open, Release("s1")),
    step("rename volume b to c", Open, Rename("b", "c")),
    step("snarf umount (clean close)", Changing, Unmount),
    step("snarf mount again", Changing, Mount),
    step(
        "write a at 256 KiB",
        Open,
        Write("a", 256 << 10, 15, 64 << 10),
    ),
    step("delete volume c", Open, Delete("c")),
    step("snapshot s2, back it up (incremental)", Open, Backup("s2")),
    step(
        "write a at 2 MiB after the backup",
        Open,
        Write("a", 2 << 20, 16, 64 << 10),
    ),
    step("snarf umount again", Changing, Unmount),
];

fn sync_live(ctx: &Ctx) -> Result<(), String> {
    std::fs::File::open(ctx.mnt.join("live"))
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync of live/: {e}"))
}

/// Carries out step `i`; returns what it acknowledged.
fn do_step(i: usize, ctx: &Ctx, daemon: &mut Option<Daemon>) -> Result<Vec<Ack>, String> {
    let ack = |volume, what| Ack {
        after: i,
        volume,
        what,
    };
    Ok(match STEPS[i].action {
        Init => {
            run_ok(&["init", s(&ctx.store())])?;
            vec![]
        }
        RepoInit => {
            run_ok(&["repo", "init", s(&ctx.repo()), "--pack-size", "256K"])?;
            vec![]
        }
        Mount => {
            *daemon = Some(Daemon::mount(ctx)?);
            vec![]
        }
        Unmount => {
            daemon.take().ok_or("no daemon to unmount")?.unmount()?;
            vec![]
        }
        Size(vol, size) => {
            set_size_synced(ctx, vol, size)?;
            vec![ack(vol, Fact::Size(size))]
        }
        Write(vol, offset, seed, len) => {
            write_synced(&ctx.live(vol), offset, seed, len)?;
            vec![ack(vol, Fact::Data { offset, seed, len })]
        }
        Backup(snap) => {
            std::fs::create_dir(ctx.mnt.join("snapshots").join(snap))
                .map_err(|e| format!("mkdir snapshots/{snap}: {e}"))?;
            run_ok(&["backup", s(&ctx.mnt), snap])?;
            vec![]
        }
        Release(snap) => {
            std::fs::remove_dir(ctx.mnt.join("snapshots").join(snap))
                .map_err(|e| format!("rmdir snapshots/{snap}: {e}"))?;
            vec![]
        }
        Rename(from, to) => {
            std::fs::rename(ctx.live(from), ctx.live(to))
                .map_err(|e| format!("mv live/{from} live/{to}: {e}"))?;
            sync_live(ctx)?;
            vec![ack(from, Fact::RenamedTo(to))]
        }
        Delete(vol) => {
            std::fs::remove_file(ctx.live(vol)).map_err(|e| format!("rm live/{vol}: {e}"))?;
            sync_live(ctx)?;
            vec![ack(vol, Fact::Gone)]
        }
    })
}

/// A cut taken during the scenario.
struct Shot {
    image: Image,
    /// When it was taken, for people.
    when: String,
    /// Whether the store was open, opening or closing, or closed.
    phase: Phase,
    /// Acknowledgements of the steps before this one are due.
    due_from: usize,
    /// The step under way, whose own size changes may or may not show.
    running: Option<usize>,
    /// For a torn cut: whether it kept something the strict cut beside it lost.
    torn: Option<bool>,
}

/// The scenario as one case: runs the store's life taking cuts, then queues a check of
/// every distinct cut.
pub fn case() -> (String, Case) {
    let name = "the store's life".to_string();
    let label = name.clone();
    (
        name,
        Box::new(move |dir: &Path| {
            let mut found = Found::default();
            let shots = Arc::new(Mutex::new(Vec::<Shot>::new()));
            let acks = match scenario(dir, shots.clone()) {
                Ok(a) => a,
                Err(e) => {
                    found.cut(label, Err(e));
                    return found;
                }
            };
            let mut seen = std::collections::HashSet::new();
            let shots = std::mem::take(&mut *shots.lock());
            let total = shots.len();
            for (i, shot) in shots.into_iter().enumerate() {
                // The same image means the same thing only under the same expectations.
                let key = (
                    shot.image.fingerprint(),
                    shot.due_from,
                    shot.running,
                    shot.phase,
                );
                if !seen.insert(key) {
                    continue;
                }
                if let Some(differs) = shot.torn {
                    found.torn.0 += 1;
                    found.torn.1 += differs as usize;
                }
                let acks = due(&acks, shot.due_from, shot.running);
                let origin = dir.join("power");
                let cut_name = format!("store cut {i} of {total}, {}", shot.when);
                let check_name = cut_name.clone();
                found.more.push((
                    cut_name.clone(),
                    Box::new(move |dir: &Path| {
                        let mut f = Found::default();
                        let r = verify(
                            &shot.image,
                            &origin,
                            dir,
                            shot.phase,
                            (shot.due_from, shot.running),
                            &acks,
                        );
                        f.cut(check_name, r);
                        f
                    }),
                ));
            }
            found
        }),
    )
}

/// What a cut must show: the facts acknowledged by steps before `due_from`, each volume
/// under its last acknowledged name, a size only as last acknowledged; nothing about the
/// volumes the `running` step is changing, which may show either way.
fn due(acks: &[Ack], due_from: usize, running: Option<usize>) -> Vec<Ack> {
    let mut busy: Vec<&str> = Vec::new();
    for a in acks.iter().filter(|a| Some(a.after) == running) {
        busy.push(a.volume);
        if let Fact::RenamedTo(to) = a.what {
            busy.push(to);
        }
    }
    let mut out: Vec<Ack> = Vec::new();
    for a in acks.iter().filter(|a| a.after < due_from) {
        match a.what {
            Fact::RenamedTo(to) => {
                out.retain(|o| o.volume != to);
                for o in out.iter_mut().filter(|o| o.volume == a.volume) {
                    o.volume = to;
                }
                out.push(Ack {
                    after: a.after,
                    volume: a.volume,
                    what: Fact::Gone,
                });
            }
            Fact::Gone => {
                out.retain(|o| o.volume != a.volume);
                out.push(a.clone());
            }
            Fact::Size(_) => {
                out.retain(|o| {
                    !(o.volume == a.volume && matches!(o.what, Fact::Size(_) | Fact::Gone))
                });
                out.push(a.clone());
            }
            Fact::Data { .. } => {
                out.retain(|o| !(o.volume == a.volume && matches!(o.what, Fact::Gone)));
                out.push(a.clone());
            }
        }
    }
    out.retain(|a| !busy.contains(&a.volume));
    out
}

/// Runs the steps on a fresh power-cut filesystem, taking cuts; returns the acknowledgements.
fn scenario(dir: &Path, shots: Arc<Mutex<Vec<Shot>>>) -> Result<Vec<Ack>, String> {
    assert!(
        matches!(STEPS[S1_TAKEN].action, Backup("s1"))
            && matches!(STEPS[S1_RELEASED].action, Release("s1")),
        "S1_TAKEN and S1_RELEASED name the steps that take and release s1"
    );
    let ctx = Ctx {
        power: dir.join("power"),
        mnt: dir.join("mnt"),
    };
    std::fs::create_dir_all(&ctx.power).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&ctx.mnt).map_err(|e| e.to_string())?;
    let pm = PowerMount::empty(&ctx.power).map_err(|e| e.to_string())?;
    let step = Arc::new(AtomicUsize::new(0));
    {
        let step = step.clone();
        let shots = shots.clone();
        let mut torn_seed = 7000;
        pm.set_hook(Box::new(move |op, ino, m| {
            if !matches!(op, Op::FileSync | Op::DirSync) {
                return;
            }
            let path = m.path(ino).unwrap_or_else(|| "an unlinked file".into());
            if path == format!("/{REPO}") || path.starts_with(&format!("/{REPO}/")) {
                // The repository has its own suite.
                return;
            }
            let at = step.load(Ordering::SeqCst);
            let what = format!(
                "the {} of {path}",
                if op == Op::FileSync {
                    "fsync"
                } else {
                    "folder fsync"
                }
            );
            let when = format!("during \"{}\", before {what}", STEPS[at].name);
            let shot = |image, when, torn| Shot {
                image,
                when,
                phase: STEPS[at].phase,
                due_from: at,
                running: Some(at),
                torn,
            };
            let strict = m.cut(None);
            let strict_print = strict.fingerprint();
            let mut v = shots.lock();
            v.push(shot(strict, when.clone(), None));
            for _ in 0..TORN_PER_CUT {
                torn_seed += 1;
                let mut rng =
                    <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(torn_seed);
                let image = m.cut(Some(&mut rng));
                let differs = image.fingerprint() != strict_print;
                v.push(shot(
                    image,
                    format!("{when} (torn, seed {torn_seed})"),
                    Some(differs),
                ));
            }
        }));
    }
    let mut daemon: Option<Daemon> = None;
    let mut acks = Vec::new();
    let result = (|| {
        for (i, st) in STEPS.iter().enumerate() {
            step.store(i, Ordering::SeqCst);
            acks.extend(
                do_step(i, &ctx, &mut daemon).map_err(|e| format!("step \"{}\": {e}", st.name))?,
            );
            // And a cut once it returned: what it did is acknowledged.
            let image = pm.cut(None);
            shots.lock().push(Shot {
                image,
                when: format!("after \"{}\" returned", st.name),
                phase: if daemon.is_some() { Open } else { Closed },
                due_from: i + 1,
                running: None,
                torn: None,
            });
        }
        Ok(())
    })();
    // Unmount (and stop the daemon) before the power-cut filesystem goes.
    drop(daemon);
    pm.clear_hook();
    drop(pm);
    result.map(|_| acks)
}

/// The steps that take and release the persistent snapshot s1.
const S1_TAKEN: usize = 7;
const S1_RELEASED: usize = 12;

/// What s1 froze: volume `a` (2 MiB, 256 KiB of pattern 11 at 0) and `b` (1 MiB, 128 KiB
/// of pattern 12 at 0).
fn s1_frozen(vol: &str) -> Vec<u8> {
    let (size, seed, len) = match vol {
        "a" => (2 << 20, 11, 256 << 10),
        _ => (1 << 20, 12, 128 << 10),
    };
    let mut v = vec![0u8; size];
    v[..len].copy_from_slice(&pattern(seed, len));
    v
}

/// Checks s1 where it must (or may) be: listed, live, and every snarf that is not in its
/// backup already (read from the repository then) as it froze it.
fn check_s1(engine: &snarf::snapshot::Engine, must: bool, may: bool) -> Result<(), String> {
    let snap = match engine.snapshot("s1") {
        Ok(snap) => snap,
        Err(_) if !must => return Ok(()),
        Err(e) => return Err(format!("the persistent snapshot s1 is gone: {e}")),
    };
    if !may {
        return Err("snapshot s1 is back, though its rmdir returned".into());
    }
    if snap.state() != snarf::snapshot::SnapState::Live {
        return Err(format!("snapshot s1 is {:?} after the cut", snap.state()));
    }
    let snarf_size = engine.store().snarf_size() as usize;
    for vol in ["a", "b"] {
        let want = s1_frozen(vol);
        let size = snap
            .volume(vol)
            .ok_or_else(|| format!("snapshot s1 lost its volume {vol}"))?
            .attr
            .size as usize;
        if size != want.len() {
            return Err(format!(
                "snapshot s1 says volume {vol} is {size} bytes, it froze {}",
                want.len()
            ));
        }
        let mut buf = vec![0u8; snarf_size];
        for (i, expect) in want.chunks(snarf_size).enumerate() {
            let at = (i * snarf_size) as u64;
            match engine.read_snapshot(&snap, vol, at, &mut buf[..expect.len()]) {
                Ok(_) if &buf[..expect.len()] == expect => {}
                Ok(_) => {
                    return Err(format!(
                        "snapshot s1 reads other bytes than it froze in snarf {i} of volume {vol}"
                    ))
                }
                Err(snarf::snapshot::Error::StoredInBackup { .. }) => {}
                Err(e) => return Err(format!("reading snapshot s1, volume {vol}: {e}")),
            }
        }
    }
    Ok(())
}

/// Checks one cut (see the module documentation).
fn verify(
    img: &Image,
    origin: &Path,
    dir: &Path,
    phase: Phase,
    (due_from, running): (usize, Option<usize>),
    acks: &[Ack],
) -> Result<(), String> {
    let power = dir.join("power");
    std::fs::create_dir_all(&power).map_err(|e| e.to_string())?;
    let pm = PowerMount::mount(Model::from_image(img), &power).map_err(|e| e.to_string())?;
    let store = power.join(STORE);
    let repo = power.join(REPO);
    let r = checked(|| {
        if !store.join("snarf.toml").exists() {
            // Old state: no store yet. Only a cut before init returned may find that.
            return if due_from == 0 {
                Ok(())
            } else {
                Err(format!(
                    "the store is gone, though snarf init returned: {:?}",
                    img.listing()
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                ))
            };
        }
        // It opens, and says whether its tracking survived.
        let st = Store::open(&store, "power-loss check")
            .map_err(|e| format!("the store does not open: {e}"))?;
        let unclean = st.recovered_unclean();
        if phase == Phase::Open && !unclean {
            return Err("the store was open at the cut, yet it trusts its tracking".into());
        }
        if phase == Phase::Closed && unclean {
            return Err("the store was closed cleanly before the cut, yet says it was not".into());
        }
        let mut contents = std::collections::BTreeMap::new();
        for (name, vol) in st.volumes() {
            let mut buf = vec![0u8; vol.size() as usize];
            let n = vol
                .pread(&mut buf, 0)
                .map_err(|e| format!("reading volume {name}: {e}"))?;
            buf.truncate(n);
            contents.insert(name, buf);
        }
        // The persistent snapshot s1 is there from its mkdir to its rmdir, reading what
        // it froze, whatever the writes after it left on the volumes.
        let s1_must = due_from > S1_TAKEN
            && (due_from < S1_RELEASED || (due_from == S1_RELEASED && running.is_none()));
        let s1_may =
            s1_must || (running.is_some() && (due_from == S1_TAKEN || due_from == S1_RELEASED));
        let eo = snarf::snapshot::EngineOptions::from_store(&st);
        let engine = snarf::snapshot::Engine::new(st, eo)
            .map_err(|e| format!("the snapshot engine does not open: {e}"))?;
        check_s1(&engine, s1_must, s1_may)?;
        if unclean {
            // Left unclean, so the backup below sees what the cut left.
            drop(engine);
        } else {
            engine
                .close()
                .map_err(|e| format!("closing the store: {e}"))?;
            drop(engine);
        }
        // Everything acknowledged is there.
        for a in acks {
            let vol = contents.get(a.volume);
            match (&a.what, vol) {
                (Fact::Gone, None) => {}
                (Fact::Gone, Some(_)) => {
                    return Err(format!(
                        "volume {} is back, though its deletion or rename and an fsync of live/ returned",
                        a.volume
                    ))
                }
                (_, None) => {
                    return Err(format!(
                        "volume {} is gone, though what was done to it was fsynced",
                        a.volume
                    ))
                }
                (Fact::Size(size), Some(v)) => {
                    if v.len() as u64 != *size {
                        return Err(format!(
                            "volume {} is {} bytes, though its size {size} was fsynced",
                            a.volume,
                            v.len()
                        ));
                    }
                }
                (Fact::Data { offset, seed, len }, Some(v)) => {
                    let at = *offset as usize;
                    if v.get(at..at + len) != Some(&pattern(*seed, *len)[..]) {
                        return Err(format!(
                            "volume {} lost the {len} bytes fsynced at {offset}",
                            a.volume
                        ));
                    }
                }
                (Fact::RenamedTo(_), Some(_)) => {}
            }
        }
        // The process registry parses.
        if let Ok(text) = std::fs::read_to_string(store.join("run/pids")) {
            let (_, bad) = snarf::pids::entry::parse_registry(&text);
            if !bad.is_empty() {
                return Err(format!("run/pids has {} damaged lines", bad.len()));
            }
        }
        if due_from >= 2 && !repo_made(&repo) {
            return Err("the repository is gone, though snarf repo init returned".into());
        }
        // A backup of what the store holds restores it byte-exact: after an unclean stop
        // an incremental one read only the regions the write-intent bitmap had marked, so
        // this is the proof that they were a superset of every change that reached the disk
        // since the last backup. Otherwise a volume is read in full and says why.
        if repo_made(&repo) && !contents.is_empty() {
            let out = run_ok(&["backup", s(&store), "check", "--repo", s(&repo)])?;
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.trim_start().starts_with("volume "))
                .collect();
            let said = |l: &&str| {
                l.contains("full (first backup")
                    || l.contains("full (tracking lost")
                    || l.contains("incremental from")
            };
            if let Some(l) = lines.iter().find(|l| !said(l)) {
                return Err(format!(
                    "a backup after the cut says neither how nor why: {l}"
                ));
            }
            if unclean {
                let kept = lines
                    .iter()
                    .filter(|l| l.contains("incremental from"))
                    .count();
                INCREMENTAL_AFTER_UNCLEAN.fetch_add(kept, Ordering::Relaxed);
            }
            let id = out
                .lines()
                .find_map(|l| l.strip_prefix("backup "))
                .and_then(|l| l.split_whitespace().next())
                .ok_or_else(|| format!("no backup id in {out}"))?
                .to_string();
            let dest = tempfile::tempdir().map_err(|e| e.to_string())?;
            run_ok(&["restore", s(&repo), &id, s(dest.path())])?;
            for (name, want) in &contents {
                let got = std::fs::read(dest.path().join(name)).map_err(|e| e.to_string())?;
                if &got != want {
                    return Err(format!(
                        "volume {name} restored from the backup after the cut differs from the volume ({out})"
                    ));
                }
            }
        }
        Ok(())
    });
    drop(pm);
    r?;
    if img
        .get(&format!("{REPO}/pins"))
        .is_some_and(|p| !p.entries.is_empty())
    {
        pins_released(img, origin, dir)?;
    }
    Ok(())
}

/// Where the pins check mounts images: one at a time, at the path the scenario used.
static ORIGIN: Mutex<()> = Mutex::new(());

/// No pin is held for ever: the next daemon on the store lets go of every pin of a snapshot
/// that did not survive the cut, and a persistent one that did lets go of its own when it
/// is released, so the repository can collect those packs. The daemon finds the
/// repositories by the paths the last one wrote, so the image is mounted where it was.
fn pins_released(img: &Image, origin: &Path, dir: &Path) -> Result<(), String> {
    let _one = ORIGIN.lock();
    std::fs::create_dir_all(origin).map_err(|e| e.to_string())?;
    let r = (|| {
        let pm = PowerMount::mount(Model::from_image(img), origin).map_err(|e| e.to_string())?;
        let repo = origin.join(REPO);
        let ctx = Ctx {
            power: origin.to_path_buf(),
            mnt: dir.join("mnt"),
        };
        let r = checked(|| {
            std::fs::create_dir_all(&ctx.mnt).map_err(|e| e.to_string())?;
            let daemon = Daemon::mount(&ctx)?;
            let snaps = std::fs::read_dir(ctx.mnt.join("snapshots"))
                .map_err(|e| format!("listing snapshots/: {e}"))?;
            for e in snaps.flatten() {
                std::fs::remove_dir(e.path())
                    .map_err(|err| format!("rmdir {}: {err}", e.path().display()))?;
            }
            daemon.unmount()?;
            match pins(&repo) {
                0 => Ok(()),
                left => Err(format!(
                    "{left} repository pins of snapshots from before the cut are still held after a new mount released every snapshot and went"
                )),
            }
        });
        drop(pm);
        r
    })();
    let _ = std::fs::remove_dir(origin);
    r
}

/// Whether `snarf repo init` got as far as the repository's own file: `config` for format 2
/// (the default), `repo.json` for format 1.
fn repo_made(repo: &Path) -> bool {
    repo.join("config").exists() || repo.join("repo.json").exists()
}

/// How many pins the repository holds.
fn pins(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("pins"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}
