//! Reference-model test of the filesystem (after mountpoint-s3's `tests/reftests`): random
//! sequences of what programs do on the mount — create a volume, write at an offset,
//! truncate, mkdir and rmdir a snapshot, read live and snapshot files, rename, unlink, and
//! commands written to `control/snapshot` — run against [`SnarfFs`] over a temporary store
//! and against the snapshot oracle (`snapshot/oracle.rs`). Each answer (bytes or errno) is
//! compared, then the whole visible state after every step: listings, sizes and every byte
//! of every live and snapshot file. A failure is shrunk by proptest to a short sequence.
//! `PROPTEST_CASES=N` runs more cases.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

use super::fs::{Caller, FsResult, SetAttr, SnarfFs};
use super::inode;
use crate::daemon::Daemon;
use crate::snapshot::oracle::{expected, Oracle};
use crate::snapshot::{Engine, EngineOptions, SnapState};
use crate::store::{Budgets, InitOptions, Store};

const SNARF: u64 = 4096;
const OWNER: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
/// Few names, so operations meet each other's volumes and snapshots; some look like
/// options or are not ASCII, as users' names may.
const VOLUMES: [&str; 4] = ["a.img", "b.img", "--help", "ünï"];
const SNAPSHOTS: [&str; 3] = ["s0", "-v", "nightly"];
/// Names the store refuses, and the errno each gets (what the kernel can send: one path
/// component, up to FUSE's 1024 bytes).
const BAD_NAMES: [(&[u8], i32); 5] = [
    (b"new\nline", libc::EINVAL),
    (b".snarf-own", libc::EINVAL),
    (b"tab\tname", libc::EINVAL),
    (b"not-utf8-\xff", libc::EINVAL),
    (&[b'n'; 256], libc::ENAMETOOLONG),
];

/// Which name an operation uses: mostly one that exists at that step, so operations meet
/// each other's volumes and snapshots; sometimes any of the fixed names, so missing ones
/// are tried too.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Existing(Index),
    Any(usize),
}

fn pick(names: usize) -> impl Strategy<Value = Pick> + Clone {
    prop_oneof![
        4 => any::<Index>().prop_map(Pick::Existing),
        1 => (0..names).prop_map(Pick::Any),
    ]
}

/// One thing a program does on the mount.
#[derive(Debug, Clone)]
enum Op {
    /// create(2) in `live/`, with or without O_EXCL.
    CreateVolume { vol: usize, excl: bool },
    /// pwrite(2) of `len` bytes of a pattern at `offset`.
    Write {
        vol: Pick,
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// truncate(2).
    Truncate { vol: Pick, size: u64 },
    /// mkdir snapshots/NAME.
    Mkdir { snap: usize },
    /// rmdir snapshots/NAME.
    Rmdir { snap: Pick },
    /// pread(2) of a live volume.
    ReadLive { vol: Pick, offset: u64, len: usize },
    /// pread(2) of a volume in a snapshot.
    ReadSnapshot {
        snap: Pick,
        vol: Pick,
        offset: u64,
        len: usize,
    },
    /// rename(2) within `live/` (RENAME_NOREPLACE if `no_replace`).
    Rename {
        from: Pick,
        to: Pick,
        no_replace: bool,
    },
    /// unlink(2) in `live/`.
    Unlink { vol: Pick },
    /// `echo "create NAME" > control/snapshot`.
    ControlCreate { snap: usize },
    /// `echo "release NAME" > control/snapshot`.
    ControlRelease { snap: Pick },
    /// A command control/snapshot does not take.
    ControlGarbage { text: String },
    /// create(2), mkdir(2) or a control command with a name the store refuses.
    BadName { name: usize, how: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let vol = pick(VOLUMES.len());
    let new_vol = 0..VOLUMES.len();
    let snap = pick(SNAPSHOTS.len());
    let new_snap = 0..SNAPSHOTS.len();
    let offset = prop_oneof![0..3 * SNARF, 0..9 * SNARF, Just(0)];
    let len = prop_oneof![1..64usize, 1..3 * SNARF as usize + 100];
    prop_oneof![
        3 => (new_vol, any::<bool>()).prop_map(|(vol, excl)| Op::CreateVolume { vol, excl }),
        8 => (vol.clone(), offset.clone(), len.clone(), any::<u8>())
            .prop_map(|(vol, offset, len, seed)| Op::Write { vol, offset, len, seed }),
        2 => (vol.clone(), 0..10 * SNARF).prop_map(|(vol, size)| Op::Truncate { vol, size }),
        3 => new_snap.clone().prop_map(|snap| Op::Mkdir { snap }),
        2 => snap.clone().prop_map(|snap| Op::Rmdir { snap }),
        2 => (vol.clone(), offset.clone(), len.clone())
            .prop_map(|(vol, offset, len)| Op::ReadLive { vol, offset, len }),
        3 => (snap.clone(), vol.clone(), offset, len).prop_map(|(snap, vol, offset, len)| {
            Op::ReadSnapshot { snap, vol, offset, len }
        }),
        2 => (vol.clone(), vol.clone(), any::<bool>())
            .prop_map(|(from, to, no_replace)| Op::Rename { from, to, no_replace }),
        1 => vol.prop_map(|vol| Op::Unlink { vol }),
        2 => new_snap.prop_map(|snap| Op::ControlCreate { snap }),
        1 => snap.prop_map(|snap| Op::ControlRelease { snap }),
        1 => prop_oneof![
            Just("create".to_string()),
            Just("create a b".to_string()),
            Just("release".to_string()),
            Just("create x\ncreate y".to_string()),
            // An unknown verb, whatever follows it.
            "frob[a-z ]{0,12}",
        ]
        .prop_map(|text| Op::ControlGarbage { text }),
        1 => (0..BAD_NAMES.len(), 0..3usize).prop_map(|(name, how)| Op::BadName { name, how }),
    ]
}

/// The filesystem under test, the oracle, and the store they share a folder with.
struct Harness {
    fs: SnarfFs,
    oracle: Oracle,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.fs.daemon().engine().close();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
        .collect()
}

fn errno<T>(r: FsResult<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno)
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let opts = InitOptions {
            snarf_size: SNARF,
            // Roomy: the oracle does not predict breaking, so nothing may break here.
            budgets: Budgets {
                memory: 1 << 20,
                disk: 16 << 20,
                break_after_secs: 30.0,
            },
            repository: None,
            snapshots: Default::default(),
        };
        Store::init(&root, &opts).expect("init");
        let store = Store::open(&root, "reftest").expect("open");
        let eo = EngineOptions::from_store(&store);
        let engine = Arc::new(Engine::new(store, eo).expect("engine"));
        let fs = SnarfFs::new(Arc::new(Daemon::new(engine)), OWNER.uid, OWNER.gid);
        Harness {
            fs,
            oracle: Oracle::default(),
            _dir: dir,
        }
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<u64, i32> {
        errno(self.fs.lookup(parent, OsStr::new(name))).map(|e| e.attr.ino)
    }

    /// Reads up to `len` bytes at `offset` of file `ino` through a fresh open.
    fn read(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let o = errno(self.fs.open(OWNER, ino, libc::O_RDONLY))?;
        let mut buf = vec![0u8; len];
        let r = errno(self.fs.read(o.fh, offset, &mut buf));
        self.fs.release(o.fh);
        let n = r?;
        buf.truncate(n);
        Ok(buf)
    }

    /// A whole file, read in pieces of an odd size so reads start inside snarfs.
    fn read_all(&self, ino: u64) -> Vec<u8> {
        let o = self.fs.open(OWNER, ino, libc::O_RDONLY).expect("open");
        let mut out = Vec::new();
        let mut buf = vec![0u8; SNARF as usize + 1001];
        loop {
            let n = self
                .fs
                .read(o.fh, out.len() as u64, &mut buf)
                .expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        self.fs.release(o.fh);
        out
    }

    /// Writes one command to control/snapshot; the write's result and the answer read back.
    fn control(&self, command: &[u8]) -> (Result<u32, i32>, String) {
        let ino = self
            .lookup(inode::CONTROL, "snapshot")
            .expect("control/snapshot");
        let o = self.fs.open(OWNER, ino, libc::O_RDWR).expect("open");
        let r = errno(self.fs.write(OWNER, o.fh, 0, command));
        let mut buf = vec![0u8; 64 << 10];
        let n = self.fs.read(o.fh, 0, &mut buf).expect("read the answer");
        self.fs.release(o.fh);
        (r, String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The volume name `p` stands for at this step.
    fn vol(&self, p: Pick) -> &'static str {
        let live: Vec<&'static str> = VOLUMES
            .iter()
            .copied()
            .filter(|n| self.oracle.live.contains_key(*n))
            .collect();
        resolve(p, &live, &VOLUMES)
    }

    /// The snapshot name `p` stands for at this step.
    fn snap(&self, p: Pick) -> &'static str {
        let taken: Vec<&'static str> = SNAPSHOTS
            .iter()
            .copied()
            .filter(|n| self.oracle.snapshot(n).is_some())
            .collect();
        resolve(p, &taken, &SNAPSHOTS)
    }

    /// The volume name `p` stands for in snapshot `snap` (any name if it has none).
    fn snap_vol(&self, snap: &str, p: Pick) -> &'static str {
        let held: Vec<&'static str> = match self.oracle.snapshot(snap) {
            Some(s) => VOLUMES
                .iter()
                .copied()
                .filter(|n| s.volumes.contains_key(*n))
                .collect(),
            None => Vec::new(),
        };
        resolve(p, &held, &VOLUMES)
    }

    /// Runs one step on both sides; an `Err` says how they differ.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::CreateVolume { vol, excl } => {
                let name = VOLUMES[vol];
                let flags = libc::O_RDWR | if excl { libc::O_EXCL } else { 0 };
                let got = errno(self.fs.create(OWNER, inode::LIVE, OsStr::new(name), flags));
                let exists = self.oracle.live.contains_key(name);
                let want = if exists && excl {
                    Err(libc::EEXIST)
                } else {
                    Ok(())
                };
                if let Ok((_, opened)) = &got {
                    self.fs.release(opened.fh);
                }
                same("create", got.map(|_| ()), want)?;
                if !exists {
                    self.oracle.create(name, 0);
                }
            }
            Op::Write {
                vol,
                offset,
                len,
                seed,
            } => {
                let name = self.vol(vol);
                let data = pattern(seed, len);
                let got = self.lookup(inode::LIVE, name).and_then(|ino| {
                    let h = errno(self.fs.open(OWNER, ino, libc::O_WRONLY))?;
                    let r = errno(self.fs.write(OWNER, h.fh, offset, &data));
                    self.fs.release(h.fh);
                    r
                });
                let want = if self.oracle.live.contains_key(name) {
                    self.oracle.write(name, offset, &data);
                    Ok(len as u32)
                } else {
                    Err(libc::ENOENT)
                };
                same("write", got, want)?;
            }
            Op::Truncate { vol, size } => {
                let name = self.vol(vol);
                let got = self.lookup(inode::LIVE, name).and_then(|ino| {
                    let set = SetAttr {
                        size: Some(size),
                        ..SetAttr::default()
                    };
                    errno(self.fs.setattr(OWNER, ino, set)).map(|e| e.attr.size)
                });
                let want = if self.oracle.live.contains_key(name) {
                    self.oracle.resize(name, size);
                    Ok(size)
                } else {
                    Err(libc::ENOENT)
                };
                same("truncate", got, want)?;
            }
            Op::Mkdir { snap } => {
                let name = SNAPSHOTS[snap];
                let got = errno(self.fs.mkdir(inode::SNAPSHOTS, OsStr::new(name))).map(|_| ());
                let want = if self.oracle.snapshot(name).is_some() {
                    Err(libc::EEXIST)
                } else {
                    self.oracle.take(name);
                    Ok(())
                };
                same("mkdir", got, want)?;
            }
            Op::Rmdir { snap } => {
                let name = self.snap(snap);
                let got = errno(self.fs.rmdir(inode::SNAPSHOTS, OsStr::new(name)));
                let want = self.oracle.release(name).map(|_| ()).ok_or(libc::ENOENT);
                same("rmdir", got, want)?;
            }
            Op::ReadLive { vol, offset, len } => {
                let name = self.vol(vol);
                let got = self
                    .lookup(inode::LIVE, name)
                    .and_then(|ino| self.read(ino, offset, len));
                let want = match self.oracle.live.get(name) {
                    Some(v) => Ok(expected(&v.data, offset, len).to_vec()),
                    None => Err(libc::ENOENT),
                };
                same("read of live/", got, want)?;
            }
            Op::ReadSnapshot {
                snap,
                vol,
                offset,
                len,
            } => {
                let sname = self.snap(snap);
                let vname = self.snap_vol(sname, vol);
                let got = self
                    .lookup(inode::SNAPSHOTS, sname)
                    .and_then(|dir| self.lookup(dir, vname))
                    .and_then(|ino| self.read(ino, offset, len));
                let want = match self
                    .oracle
                    .snapshot(sname)
                    .and_then(|s| s.volumes.get(vname))
                {
                    Some(v) => Ok(expected(&v.data, offset, len).to_vec()),
                    None => Err(libc::ENOENT),
                };
                eprintln!(
                    "SNAPREAD off={offset} got={:?} want={:?}",
                    got.as_ref().map(|v| v.iter().filter(|b| **b != 0).count()),
                    want.as_ref().map(|v| v.iter().filter(|b| **b != 0).count())
                );
                same("read of snapshots/", got, want)?;
            }
            Op::Rename {
                from,
                to,
                no_replace,
            } => {
                let (from, to) = (self.vol(from), self.vol(to));
                // The kernel answers a rename onto itself without asking the filesystem.
                if from == to {
                    return Ok(());
                }
                let got = errno(self.fs.rename(
                    inode::LIVE,
                    OsStr::new(from),
                    inode::LIVE,
                    OsStr::new(to),
                    no_replace,
                    false,
                ));
                let want = if !self.oracle.live.contains_key(from) {
                    Err(libc::ENOENT)
                } else if no_replace && self.oracle.live.contains_key(to) {
                    Err(libc::EEXIST)
                } else {
                    self.oracle.rename(from, to);
                    Ok(())
                };
                same("rename", got, want)?;
            }
            Op::Unlink { vol } => {
                let name = self.vol(vol);
                let got = errno(self.fs.unlink(inode::LIVE, OsStr::new(name)));
                let want = if self.oracle.live.contains_key(name) {
                    self.oracle.delete(name);
                    Ok(())
                } else {
                    Err(libc::ENOENT)
                };
                same("unlink", got, want)?;
            }
            Op::ControlCreate { snap } => {
                let name = SNAPSHOTS[snap];
                let (got, answer) = self.control(format!("create {name}\n").as_bytes());
                if self.oracle.snapshot(name).is_some() {
                    same("control create", got, Err(libc::EINVAL))?;
                    expect_words(&answer, "already exists")?;
                } else {
                    self.oracle.take(name);
                    same("control create", got, Ok(8 + name.len() as u32))?;
                    same("its answer", answer, format!("created snapshot {name}\n"))?;
                }
            }
            Op::ControlRelease { snap } => {
                let name = self.snap(snap);
                let (got, answer) = self.control(format!("release {name}\n").as_bytes());
                if self.oracle.release(name).is_some() {
                    same("control release", got, Ok(9 + name.len() as u32))?;
                    same("its answer", answer, format!("released snapshot {name}\n"))?;
                } else {
                    same("control release", got, Err(libc::EINVAL))?;
                    expect_words(&answer, name)?;
                }
            }
            Op::ControlGarbage { ref text } => {
                let (got, answer) = self.control(text.as_bytes());
                same("a command not in the grammar", got, Err(libc::EINVAL))?;
                if answer.trim().is_empty() {
                    return Err(format!("{text:?} was refused without a reason"));
                }
            }
            Op::BadName { name, how } => {
                let (bytes, want) = BAD_NAMES[name];
                let os = OsStr::from_bytes(bytes);
                match how {
                    0 => {
                        let got = errno(self.fs.create(OWNER, inode::LIVE, os, libc::O_RDWR));
                        same("create with a bad name", got.map(|_| ()), Err(want))?;
                    }
                    1 => {
                        let got = errno(self.fs.mkdir(inode::SNAPSHOTS, os)).map(|_| ());
                        same("mkdir with a bad name", got, Err(want))?;
                    }
                    _ => {
                        let mut command = b"create ".to_vec();
                        command.extend_from_slice(bytes);
                        let (got, _) = self.control(&command);
                        same("control create with a bad name", got, Err(libc::EINVAL))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything a program could see, compared: listings, sizes, bytes.
    fn compare(&self) -> Result<(), String> {
        let o = &self.oracle;
        let live: Vec<String> = o.live.keys().cloned().collect();
        same("live/", self.names(inode::LIVE), live)?;
        for (name, v) in &o.live {
            let ino = self
                .lookup(inode::LIVE, name)
                .map_err(|e| format!("{name}: {e}"))?;
            let e = self.fs.getattr(ino).map_err(|e| e.to_string())?;
            same(
                &format!("size of live/{name}"),
                e.attr.size,
                v.data.len() as u64,
            )?;
            if self.read_all(ino) != v.data {
                return Err(format!("live/{name} differs from the oracle"));
            }
        }
        let mut snaps: Vec<String> = o.snaps.iter().map(|s| s.name.clone()).collect();
        snaps.sort();
        same("snapshots/", self.names(inode::SNAPSHOTS), snaps)?;
        for s in &o.snaps {
            let dir = self
                .lookup(inode::SNAPSHOTS, &s.name)
                .map_err(|e| format!("{}: {e}", s.name))?;
            let engine_snap = self
                .fs
                .daemon()
                .engine()
                .snapshot(&s.name)
                .map_err(|e| e.to_string())?;
            if engine_snap.state() != SnapState::Live {
                return Err(format!("{} broke: {:?}", s.name, engine_snap.state()));
            }
            let vols: Vec<String> = s.volumes.keys().cloned().collect();
            same(&format!("snapshots/{}/", s.name), self.names(dir), vols)?;
            for (vname, v) in &s.volumes {
                let ino = self
                    .lookup(dir, vname)
                    .map_err(|e| format!("{vname}: {e}"))?;
                let size = self.fs.getattr(ino).map_err(|e| e.to_string())?.attr.size;
                same(
                    &format!("size of {}/{vname}", s.name),
                    size,
                    v.data.len() as u64,
                )?;
                if self.read_all(ino) != v.data {
                    return Err(format!("snapshots/{}/{vname} differs", s.name));
                }
            }
        }
        Ok(())
    }

    fn names(&self, dir: u64) -> Vec<String> {
        let mut names: Vec<String> = self
            .fs
            .readdir(dir, 2)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        names
    }
}

fn resolve(p: Pick, existing: &[&'static str], all: &[&'static str]) -> &'static str {
    match p {
        Pick::Existing(i) if !existing.is_empty() => existing[i.index(existing.len())],
        Pick::Existing(i) => all[i.index(all.len())],
        Pick::Any(n) => all[n % all.len()],
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: the filesystem gave {got:?}, the oracle {want:?}"
        ))
    }
}

fn expect_words(answer: &str, words: &str) -> Result<(), String> {
    if answer.contains(words) {
        Ok(())
    } else {
        Err(format!("the refusal {answer:?} does not say {words:?}"))
    }
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new();
    for (i, op) in ops.iter().enumerate() {
        h.step(op).map_err(|e| format!("step {i} ({op:?}): {e}"))?;
        h.compare()
            .map_err(|e| format!("after step {i} ({op:?}): {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn reftest_the_filesystem_matches_the_oracle(ops in proptest::collection::vec(op(), 1..48)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Sequences worth keeping whatever the random cases find: a snapshot outliving the
/// rename, overwrite, truncate and deletion of its volumes, and one taken through
/// control/snapshot seeing the same.
#[test]
fn reftest_a_snapshot_outlives_everything_done_to_its_volumes() {
    use Op::*;
    use Pick::Any;
    let ops = [
        CreateVolume { vol: 0, excl: true },
        Write {
            vol: Any(0),
            offset: 10,
            len: 3 * SNARF as usize,
            seed: 1,
        },
        CreateVolume {
            vol: 1,
            excl: false,
        },
        Write {
            vol: Any(1),
            offset: 5 * SNARF,
            len: 7,
            seed: 2,
        },
        Mkdir { snap: 0 },
        Write {
            vol: Any(0),
            offset: SNARF - 1,
            len: 2,
            seed: 3,
        },
        Rename {
            from: Any(0),
            to: Any(1),
            no_replace: false,
        },
        ControlCreate { snap: 1 },
        Truncate {
            vol: Any(1),
            size: 100,
        },
        Write {
            vol: Any(1),
            offset: 9 * SNARF,
            len: 50,
            seed: 4,
        },
        Unlink { vol: Any(1) },
        CreateVolume { vol: 0, excl: true },
        Mkdir { snap: 2 },
        ReadSnapshot {
            snap: Any(0),
            vol: Any(1),
            offset: 5 * SNARF,
            len: 100,
        },
        ControlRelease { snap: Any(0) },
        Rmdir { snap: Any(0) },
        ControlCreate { snap: 2 },
        BadName { name: 4, how: 1 },
        ControlGarbage {
            text: "create x\ncreate y".into(),
        },
        Rmdir { snap: Any(1) },
    ];
    run(&ops).unwrap();
}

/// snarf's own short-lived snapshots (a converge backup's freeze) are neither listed in
/// snapshots/ nor found there, and nobody can rmdir one from under its job.
#[test]
fn reserved_snapshots_are_not_listed_found_or_released_through_the_mount() {
    let h = Harness::new();
    let engine = h.fs.daemon().engine().clone();
    engine
        .take_reserved(".snarf-converge-1-1")
        .expect("reserved");
    engine.take("mine").expect("a user's");
    let snaps = h.lookup(inode::ROOT, "snapshots").expect("snapshots/");
    let names: Vec<String> = errno(h.fs.readdir(snaps, 0))
        .expect("readdir")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"mine".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with(".snarf-")), "{names:?}");
    assert_eq!(h.lookup(snaps, ".snarf-converge-1-1"), Err(libc::ENOENT));
    assert_eq!(
        errno(h.fs.rmdir(snaps, OsStr::new(".snarf-converge-1-1"))),
        Err(libc::EPERM)
    );
    assert_eq!(engine.list().len(), 2, "the freeze is still there");
    assert_eq!(errno(h.fs.rmdir(snaps, OsStr::new("mine"))), Ok(()));
}
