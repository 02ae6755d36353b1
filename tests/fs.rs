//! The FUSE core (`SnarfFs`) driven directly, with no kernel and no mount: the calls the
//! adapter makes for lookup, create, read/write, setattr, readdir, mkdir/rmdir, rename,
//! unlink, lseek and the control files, over a temporary store. Every refusal is checked
//! for its errno, since that errno is all a program on the mount ever sees.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use snarf::daemon::Daemon;
use snarf::fuse::fs::{Caller, DirEntry, Entry, FsResult, Kind, Seek, SetAttr};
use snarf::fuse::inode;
use snarf::fuse::SnarfFs;
use snarf::repo::{Repo, RepoInitOptions};
use snarf::snapshot::{Engine, EngineOptions};
use snarf::store::{Budgets, InitOptions, Store};

/// The mount's owner in these tests (any uid: nothing here asks the OS).
const OWNER: Caller = Caller {
    uid: 1000,
    gid: 1000,
};
const ROOT: Caller = Caller { uid: 0, gid: 0 };
const OTHER: Caller = Caller {
    uid: 2000,
    gid: 2000,
};
const SNARF: u64 = 4096;

/// A `SnarfFs` over a store in a temporary folder; closes the engine when dropped.
struct Fs {
    fs: SnarfFs,
    _dir: tempfile::TempDir,
}

impl Drop for Fs {
    fn drop(&mut self) {
        let _ = self.fs.daemon().engine().close();
    }
}

fn roomy() -> Budgets {
    Budgets {
        memory: 256 * SNARF,
        disk: 1024 * SNARF,
        break_after_secs: 30.0,
    }
}

impl Fs {
    fn new() -> Fs {
        Fs::with(roomy(), |_| None)
    }

    /// A store with these budgets; `repo` may make a repository in the test folder and
    /// return its path, which becomes the mount's default repository.
    fn with(budgets: Budgets, repo: impl FnOnce(&Path) -> Option<std::path::PathBuf>) -> Fs {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let opts = InitOptions {
            snarf_size: SNARF,
            budgets,
            repository: None,
            snapshots: Default::default(),
        };
        Store::init(&root, &opts).expect("init");
        let store = Store::open(&root, "fs test").expect("open");
        let eo = EngineOptions::from_store(&store);
        let engine = Arc::new(Engine::new(store, eo).expect("engine"));
        let daemon = Daemon::new(engine).with_repository(repo(dir.path()));
        let fs = SnarfFs::new(Arc::new(daemon), OWNER.uid, OWNER.gid);
        Fs { fs, _dir: dir }
    }

    /// The inode of a path under the mount, looked up one name at a time.
    fn ino(&self, path: &str) -> FsResult<u64> {
        let mut ino = inode::ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs.lookup(ino, OsStr::new(part))?.attr.ino;
        }
        Ok(ino)
    }

    fn entry(&self, path: &str) -> Entry {
        let ino = self.ino(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        self.fs.getattr(ino).expect("getattr")
    }

    /// Creates live volume `name` holding `data`.
    fn volume(&self, name: &str, data: &[u8]) -> u64 {
        let (e, o) = self
            .fs
            .create(OWNER, inode::LIVE, OsStr::new(name), libc::O_RDWR)
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        if !data.is_empty() {
            assert_eq!(
                self.fs.write(OWNER, o.fh, 0, data).expect("write"),
                data.len() as u32
            );
        }
        self.fs.release(o.fh);
        e.attr.ino
    }

    fn write(&self, path: &str, offset: u64, data: &[u8]) {
        let fh = self.open(path, libc::O_WRONLY);
        self.fs.write(OWNER, fh, offset, data).expect("write");
        self.fs.release(fh);
    }

    fn open(&self, path: &str, flags: i32) -> u64 {
        let ino = self.ino(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        self.fs
            .open(OWNER, ino, flags)
            .unwrap_or_else(|e| panic!("open {path}: {e}"))
            .fh
    }

    /// Reads a whole file in pieces of odd sizes, as the kernel may ask.
    fn read(&self, path: &str) -> Vec<u8> {
        let fh = self.open(path, libc::O_RDONLY);
        let data = read_fh(&self.fs, fh);
        self.fs.release(fh);
        data
    }

    /// Names in a directory, without `.` and `..`.
    fn names(&self, path: &str) -> Vec<String> {
        let ino = self.ino(path).expect("lookup");
        let entries = self.fs.readdir(ino, 0).expect("readdir");
        assert_eq!(entries[0].name, ".");
        assert_eq!(entries[1].name, "..");
        entries[2..].iter().map(|e| e.name.clone()).collect()
    }

    /// One transaction on a control file: open, write `command`, read the answer back on
    /// the same handle, close.
    fn control(&self, caller: Caller, file: &str, command: &str) -> (FsResult<u32>, String) {
        let ino = self.ino(&format!("control/{file}")).expect("lookup");
        let o = self
            .fs
            .open(caller, ino, libc::O_RDWR)
            .unwrap_or_else(|e| panic!("open control/{file}: {e}"));
        let written = self.fs.write(caller, o.fh, 0, command.as_bytes());
        let answer = read_fh(&self.fs, o.fh);
        self.fs.release(o.fh);
        (written, String::from_utf8(answer).expect("UTF-8 answer"))
    }
}

fn read_fh(fs: &SnarfFs, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 3 * SNARF as usize + 17];
    loop {
        let n = fs.read(fh, out.len() as u64, &mut buf).expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The errno of a refusal; panics (naming `what`) if the call succeeded.
fn errno<T: std::fmt::Debug>(what: &str, r: FsResult<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?}) but should have been refused"),
        Err(e) => {
            assert!(!e.message.is_empty(), "{what}: a refusal without words");
            e.errno
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn lookup_and_readdir_show_the_fixed_layout() {
    let t = Fs::new();
    assert_eq!(t.names(""), ["live", "snapshots", "backups", "control"]);
    for (part, ino) in [
        ("live", inode::LIVE),
        ("snapshots", inode::SNAPSHOTS),
        ("backups", inode::BACKUPS),
        ("control", inode::CONTROL),
    ] {
        let e = t.fs.lookup(inode::ROOT, name(part)).unwrap();
        assert_eq!(e.attr.ino, ino, "{part}");
        assert_eq!(e.attr.kind, Kind::Dir);
        assert_eq!((e.attr.uid, e.attr.gid), (OWNER.uid, OWNER.gid));
    }
    let root = t.fs.readdir(inode::ROOT, 0).unwrap();
    assert_eq!(root[0].ino, inode::ROOT);
    // readdir goes on from where the last batch ended.
    let rest: Vec<DirEntry> = t.fs.readdir(inode::ROOT, 4).unwrap();
    assert_eq!(rest, root[4..].to_vec());
    assert!(t.fs.readdir(inode::ROOT, 100).unwrap().is_empty());
    // Each control file is there, read-only tables 0444, command files 0644.
    let control = t.names("control");
    for f in ["snapshot", "jobs", "status", "pids", "finishing"] {
        assert!(control.contains(&f.to_string()), "{control:?}");
    }
    assert_eq!(t.entry("control/jobs").attr.perm, 0o644);
    assert_eq!(t.entry("control/status").attr.perm, 0o444);
    assert!(t.names("live").is_empty() && t.names("snapshots").is_empty());
    // Without a repository backups/ is empty.
    assert!(t.names("backups").is_empty());

    for (parent, what) in [
        (inode::ROOT, "nothing"),
        (inode::ROOT, "Live"),
        (inode::LIVE, "missing.img"),
        (inode::SNAPSHOTS, "missing"),
        (inode::CONTROL, "missing"),
        (inode::BACKUPS, "missing"),
        (inode::ROOT, ".."),
    ] {
        assert_eq!(
            errno(what, t.fs.lookup(parent, name(what))),
            libc::ENOENT,
            "{what}"
        );
    }
    let not_utf8 = OsStr::from_bytes(b"v\xff.img");
    assert_eq!(
        errno("non-UTF-8", t.fs.lookup(inode::LIVE, not_utf8)),
        libc::ENOENT
    );
    let status = t.ino("control/status").unwrap();
    assert_eq!(
        errno("lookup under a file", t.fs.lookup(status, name("x"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno("readdir of a file", t.fs.readdir(status, 0)),
        libc::ENOTDIR
    );
    // An inode the table never handed out (or forgot) is stale, not a crash.
    for ino in [0, 6, 1023, 1 << 40, u64::MAX] {
        assert_eq!(errno("getattr", t.fs.getattr(ino)), libc::ESTALE, "{ino}");
        assert_eq!(errno("readdir", t.fs.readdir(ino, 0)), libc::ESTALE);
        assert_eq!(errno("lookup", t.fs.lookup(ino, name("x"))), libc::ESTALE);
    }
}

#[test]
fn create_write_and_read_a_live_volume() {
    let t = Fs::new();
    let (e, o) =
        t.fs.create(OWNER, inode::LIVE, name("vm1.img"), libc::O_RDWR)
            .unwrap();
    assert_eq!(e.attr.kind, Kind::File);
    assert_eq!(e.attr.size, 0);
    assert_eq!(e.attr.perm, 0o600);
    assert_eq!((e.attr.uid, e.attr.gid), (OWNER.uid, OWNER.gid));
    // Live volumes use direct I/O by default (--live-io direct), so a write is one request.
    assert!(!o.keep_cache && o.direct_io);
    // Unaligned writes crossing snarfs, one leaving a gap that reads as zeros.
    let a = pattern(1, 3 * SNARF as usize + 5);
    assert_eq!(t.fs.write(OWNER, o.fh, 7, &a).unwrap(), a.len() as u32);
    let b = pattern(2, 100);
    let far = 6 * SNARF + 3;
    t.fs.write(OWNER, o.fh, far, &b).unwrap();
    t.fs.fsync(o.fh).unwrap();
    t.fs.flush(o.fh).unwrap();
    t.fs.release(o.fh);
    let mut want = vec![0u8; far as usize + b.len()];
    want[7..7 + a.len()].copy_from_slice(&a);
    want[far as usize..].copy_from_slice(&b);
    assert!(t.read("live/vm1.img") == want);
    let attr = t.entry("live/vm1.img").attr;
    assert_eq!(attr.size, want.len() as u64);
    assert_eq!(attr.ino, e.attr.ino);
    // A read past the end returns nothing; one across it, what there is.
    let fh = t.open("live/vm1.img", libc::O_RDONLY);
    let mut buf = [0u8; 64];
    assert_eq!(t.fs.read(fh, want.len() as u64 + 10, &mut buf).unwrap(), 0);
    assert_eq!(t.fs.read(fh, want.len() as u64 - 3, &mut buf).unwrap(), 3);
    t.fs.release(fh);
    // The listing shows the volume with the inode lookup gives.
    let listed = t.fs.readdir(inode::LIVE, 0).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        (listed[2].name.as_str(), listed[2].ino),
        ("vm1.img", attr.ino)
    );

    // O_CREAT without O_EXCL opens the existing volume and keeps its data...
    let (again, o) =
        t.fs.create(OWNER, inode::LIVE, name("vm1.img"), libc::O_RDWR)
            .unwrap();
    t.fs.release(o.fh);
    assert_eq!(again.attr.ino, attr.ino);
    assert!(t.read("live/vm1.img") == want);
    // ...with O_EXCL it is refused, and O_TRUNC empties it.
    let excl = t.fs.create(
        OWNER,
        inode::LIVE,
        name("vm1.img"),
        libc::O_RDWR | libc::O_EXCL,
    );
    assert_eq!(errno("O_EXCL", excl), libc::EEXIST);
    assert!(t.read("live/vm1.img") == want);
    let fh = t.open("live/vm1.img", libc::O_WRONLY | libc::O_TRUNC);
    t.fs.release(fh);
    assert_eq!(t.entry("live/vm1.img").attr.size, 0);
    // O_TRUNC on a read-only open truncates nothing.
    t.write("live/vm1.img", 0, b"kept");
    let fh = t.open("live/vm1.img", libc::O_RDONLY | libc::O_TRUNC);
    t.fs.release(fh);
    assert_eq!(t.read("live/vm1.img"), b"kept");
}

#[test]
fn setattr_resizes_and_dates_volumes_but_keeps_their_mode_and_owner() {
    let t = Fs::new();
    let ino = t.volume("v", &pattern(3, 10_000));
    let set = |s: SetAttr| t.fs.setattr(OWNER, ino, s);
    let e = set(SetAttr {
        size: Some(3 * SNARF + 1),
        ..SetAttr::default()
    })
    .unwrap();
    assert_eq!(e.attr.size, 3 * SNARF + 1);
    let mut want = pattern(3, 10_000);
    want.resize(3 * SNARF as usize + 1, 0);
    assert!(t.read("live/v") == want);
    set(SetAttr {
        size: Some(100),
        ..SetAttr::default()
    })
    .unwrap();
    assert!(t.read("live/v") == want[..100]);
    let when = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let e = set(SetAttr {
        mtime: Some(when),
        ..SetAttr::default()
    })
    .unwrap();
    assert_eq!(e.attr.mtime, when);
    // Asking for what the rules already give (cp -p, rsync -a) is fine.
    set(SetAttr {
        mode: Some(libc::S_IFREG | 0o600),
        uid: Some(OWNER.uid),
        gid: Some(OWNER.gid),
        ..SetAttr::default()
    })
    .unwrap();
    for bad in [
        SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        },
        SetAttr {
            mode: Some(0o4600),
            ..SetAttr::default()
        },
        SetAttr {
            uid: Some(0),
            ..SetAttr::default()
        },
        SetAttr {
            gid: Some(OTHER.gid),
            ..SetAttr::default()
        },
        // A refused chmod does not truncate on the way.
        SetAttr {
            size: Some(0),
            mode: Some(0o666),
            ..SetAttr::default()
        },
    ] {
        assert_eq!(errno("chmod/chown", set(bad)), libc::EPERM, "{bad:?}");
    }
    let e = t.fs.getattr(ino).unwrap();
    assert_eq!((e.attr.perm, e.attr.size), (0o600, 100));
    // A size no volume may have is EFBIG and changes nothing.
    for size in [u64::MAX, 1 << 62, (1u64 << 28) * SNARF + 1] {
        let r = set(SetAttr {
            size: Some(size),
            ..SetAttr::default()
        });
        assert_eq!(errno("huge truncate", r), libc::EFBIG, "{size}");
    }
    assert_eq!(t.fs.getattr(ino).unwrap().attr.size, 100);
    // Directories and the layout take no attributes.
    for dir in [inode::ROOT, inode::LIVE, inode::CONTROL, inode::SNAPSHOTS] {
        let r = t.fs.setattr(
            OWNER,
            dir,
            SetAttr {
                mode: Some(0o777),
                ..SetAttr::default()
            },
        );
        assert_eq!(errno("chmod of a directory", r), libc::EPERM);
    }
}

#[test]
fn mkdir_takes_a_frozen_snapshot_and_rmdir_releases_it() {
    let t = Fs::new();
    let old = pattern(4, 5 * SNARF as usize);
    t.volume("a.img", &old);
    t.volume("b.img", b"small");
    let e = t.fs.mkdir(inode::SNAPSHOTS, name("s1")).unwrap();
    assert_eq!((e.attr.kind, e.attr.perm), (Kind::Dir, 0o555));
    assert_eq!(t.names("snapshots"), ["s1"]);
    assert_eq!(t.names("snapshots/s1"), ["a.img", "b.img"]);
    // Writes after the snapshot do not reach it; growing and shrinking neither.
    t.write("live/a.img", 100, &pattern(5, 2 * SNARF as usize));
    t.fs.setattr(
        OWNER,
        t.ino("live/b.img").unwrap(),
        SetAttr {
            size: Some(9 * SNARF),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert!(t.read("snapshots/s1/a.img") == old);
    assert_eq!(t.read("snapshots/s1/b.img"), b"small");
    let snap = t.entry("snapshots/s1/a.img").attr;
    assert_eq!((snap.size, snap.perm), (old.len() as u64, 0o400));
    // Snapshot files are read with direct I/O by default (nothing cached twice) and refuse
    // writes.
    let ino = t.ino("snapshots/s1/a.img").unwrap();
    let o = t.fs.open(OWNER, ino, libc::O_RDONLY).unwrap();
    assert!(o.direct_io && !o.keep_cache);
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC | libc::O_WRONLY,
    ] {
        assert_eq!(
            errno("write-open of a snapshot", t.fs.open(OWNER, ino, flags)),
            libc::EROFS
        );
    }
    assert_eq!(
        errno("write to a snapshot", t.fs.write(OWNER, o.fh, 0, b"x")),
        libc::EROFS
    );
    // A second snapshot, then a deleted volume: the snapshots keep reading it.
    t.fs.mkdir(inode::SNAPSHOTS, name("s2")).unwrap();
    t.fs.unlink(inode::LIVE, name("a.img")).unwrap();
    assert!(t.read("snapshots/s1/a.img") == old);
    assert_eq!(t.names("snapshots"), ["s1", "s2"]);
    assert_eq!(
        errno("a taken name", t.fs.mkdir(inode::SNAPSHOTS, name("s1"))),
        libc::EEXIST
    );
    // rmdir releases; an open file of it is then stale.
    t.fs.rmdir(inode::SNAPSHOTS, name("s1")).unwrap();
    assert_eq!(t.names("snapshots"), ["s2"]);
    assert_eq!(
        errno("lookup of a released snapshot", t.ino("snapshots/s1")),
        libc::ENOENT
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        errno("read of a released snapshot", t.fs.read(o.fh, 0, &mut buf)),
        libc::ESTALE
    );
    t.fs.release(o.fh);
    assert_eq!(
        errno("rmdir of nothing", t.fs.rmdir(inode::SNAPSHOTS, name("s1"))),
        libc::ENOENT
    );
}

#[test]
fn snapshot_names_are_checked_like_volume_names() {
    let t = Fs::new();
    t.volume("v", b"data");
    let long = "n".repeat(256);
    for (bad, want) in [
        ("", libc::EINVAL),
        (".", libc::EINVAL),
        ("a\nb", libc::EINVAL),
        ("tab\there", libc::EINVAL),
        (".snarf-tmp", libc::EINVAL),
        (long.as_str(), libc::ENAMETOOLONG),
    ] {
        assert_eq!(
            errno("mkdir", t.fs.mkdir(inode::SNAPSHOTS, name(bad))),
            want,
            "{bad:?}"
        );
        assert_eq!(
            errno(
                "create",
                t.fs.create(OWNER, inode::LIVE, name(bad), libc::O_RDWR)
            ),
            want,
            "{bad:?}"
        );
    }
    let not_utf8 = OsStr::from_bytes(b"\xfe\xff");
    assert_eq!(
        errno("mkdir", t.fs.mkdir(inode::SNAPSHOTS, not_utf8)),
        libc::EINVAL
    );
    assert_eq!(
        errno("create", t.fs.create(OWNER, inode::LIVE, not_utf8, 0)),
        libc::EINVAL
    );
    // Names that look like options or hold spaces are ordinary.
    for ok in ["--help", "-v", "a b", "ünï", ".hidden"] {
        t.fs.mkdir(inode::SNAPSHOTS, name(ok)).unwrap();
        t.volume(ok, ok.as_bytes());
        assert_eq!(t.read(&format!("live/{ok}")), ok.as_bytes());
    }
    assert!(t.names("snapshots").iter().all(|n| !n.contains('\n')));
    assert!(t.names("live").len() == 6);
}

#[test]
fn rename_and_unlink_act_on_live_volumes_only() {
    let t = Fs::new();
    let ino = t.volume("a", b"aaaa");
    t.volume("b", b"bbbb");
    t.fs.rename(inode::LIVE, name("a"), inode::LIVE, name("c"), false, false)
        .unwrap();
    assert_eq!(t.names("live"), ["b", "c"]);
    // The volume keeps its inode across the rename.
    assert_eq!(t.entry("live/c").attr.ino, ino);
    assert_eq!(t.read("live/c"), b"aaaa");
    // RENAME_NOREPLACE refuses an existing target; a plain rename replaces it.
    let r =
        t.fs.rename(inode::LIVE, name("c"), inode::LIVE, name("b"), true, false);
    assert_eq!(errno("RENAME_NOREPLACE", r), libc::EEXIST);
    assert_eq!(t.read("live/b"), b"bbbb");
    let r =
        t.fs.rename(inode::LIVE, name("c"), inode::LIVE, name("b"), false, true);
    assert_eq!(errno("RENAME_EXCHANGE", r), libc::EINVAL);
    t.fs.rename(inode::LIVE, name("c"), inode::LIVE, name("b"), false, false)
        .unwrap();
    assert_eq!(t.names("live"), ["b"]);
    assert_eq!(t.read("live/b"), b"aaaa");
    let r = t.fs.rename(
        inode::LIVE,
        name("gone"),
        inode::LIVE,
        name("x"),
        false,
        false,
    );
    assert_eq!(errno("rename of nothing", r), libc::ENOENT);
    let r = t.fs.rename(
        inode::LIVE,
        name("b"),
        inode::LIVE,
        name("a/b"),
        false,
        false,
    );
    assert_eq!(errno("rename to a bad name", r), libc::EINVAL);
    // Out of live/, into snapshots/ or backups/, or between the parts: refused.
    t.fs.mkdir(inode::SNAPSHOTS, name("s")).unwrap();
    let s = t.ino("snapshots/s").unwrap();
    for (from, to, want) in [
        (inode::LIVE, inode::SNAPSHOTS, libc::EROFS),
        (inode::LIVE, s, libc::EROFS),
        (s, inode::LIVE, libc::EROFS),
        (inode::LIVE, inode::BACKUPS, libc::EROFS),
        (inode::SNAPSHOTS, inode::SNAPSHOTS, libc::EROFS),
        (inode::LIVE, inode::CONTROL, libc::EXDEV),
        (inode::LIVE, inode::ROOT, libc::EXDEV),
        (inode::ROOT, inode::ROOT, libc::EXDEV),
    ] {
        let r = t.fs.rename(from, name("b"), to, name("b2"), false, false);
        assert_eq!(errno("rename", r), want, "{from} -> {to}");
    }
    assert_eq!(t.names("live"), ["b"]);
    t.fs.unlink(inode::LIVE, name("b")).unwrap();
    assert!(t.names("live").is_empty());
    assert_eq!(
        errno("unlink of nothing", t.fs.unlink(inode::LIVE, name("b"))),
        libc::ENOENT
    );
    // The snapshot, taken after `a` replaced `b`, keeps what `b` then held.
    assert_eq!(t.read("snapshots/s/b"), b"aaaa");
}

/// rename(2) names a missing source (ENOENT) before a taken target (EEXIST), also with
/// RENAME_NOREPLACE (found by the reference test).
#[test]
fn rename_noreplace_of_a_missing_volume_is_enoent() {
    let t = Fs::new();
    t.volume("taken", b"kept");
    let r = t.fs.rename(
        inode::LIVE,
        name("gone"),
        inode::LIVE,
        name("taken"),
        true,
        false,
    );
    assert_eq!(errno("RENAME_NOREPLACE of nothing", r), libc::ENOENT);
    assert_eq!(t.names("live"), ["taken"]);
    assert_eq!(t.read("live/taken"), b"kept");
}

#[test]
fn every_refusal_has_its_errno() {
    let t = Fs::new();
    t.volume("v", &pattern(6, 100));
    t.fs.mkdir(inode::SNAPSHOTS, name("s")).unwrap();
    let s = t.ino("snapshots/s").unwrap();
    let sv = t.ino("snapshots/s/v").unwrap();
    let v = t.ino("live/v").unwrap();
    let status = t.ino("control/status").unwrap();
    let jobs = t.ino("control/jobs").unwrap();

    // Files are made in live/ only; directories in snapshots/ only.
    for (parent, want) in [
        (inode::SNAPSHOTS, libc::EPERM),
        (s, libc::EROFS),
        (sv, libc::EROFS),
        (inode::BACKUPS, libc::EROFS),
        (inode::ROOT, libc::EPERM),
        (inode::CONTROL, libc::EPERM),
        (v, libc::EPERM),
    ] {
        let r = t.fs.create(OWNER, parent, name("new"), libc::O_RDWR);
        assert_eq!(errno("create", r), want, "create in {parent}");
    }
    for (parent, want) in [
        (inode::LIVE, libc::EPERM),
        (inode::ROOT, libc::EPERM),
        (inode::CONTROL, libc::EPERM),
        (s, libc::EROFS),
        (inode::BACKUPS, libc::EROFS),
    ] {
        let r = t.fs.mkdir(parent, name("new"));
        assert_eq!(errno("mkdir", r), want, "mkdir in {parent}");
    }
    for (parent, what, want) in [
        (inode::LIVE, "v", libc::ENOTDIR),
        (inode::ROOT, "live", libc::EPERM),
        (inode::ROOT, "snapshots", libc::EPERM),
        (inode::CONTROL, "jobs", libc::EPERM),
        (s, "v", libc::EROFS),
        (inode::BACKUPS, "x", libc::EROFS),
    ] {
        let r = t.fs.rmdir(parent, name(what));
        assert_eq!(errno("rmdir", r), want, "rmdir {what} in {parent}");
    }
    for (parent, what, want) in [
        (inode::SNAPSHOTS, "s", libc::EROFS),
        (s, "v", libc::EROFS),
        (inode::BACKUPS, "x", libc::EROFS),
        (inode::ROOT, "live", libc::EPERM),
        (inode::CONTROL, "jobs", libc::EPERM),
    ] {
        let r = t.fs.unlink(parent, name(what));
        assert_eq!(errno("unlink", r), want, "unlink {what} in {parent}");
    }
    // Links and symlinks: volumes are plain files.
    for (parent, want) in [
        (inode::LIVE, libc::EPERM),
        (inode::ROOT, libc::EPERM),
        (inode::SNAPSHOTS, libc::EROFS),
        (s, libc::EROFS),
        (inode::BACKUPS, libc::EROFS),
        (u64::MAX, libc::ESTALE),
    ] {
        assert_eq!(t.fs.refuse_link(parent).errno, want, "link in {parent}");
    }
    // Directories do not open; read-only control files do not open for writing.
    for dir in [
        inode::ROOT,
        inode::LIVE,
        inode::SNAPSHOTS,
        s,
        inode::CONTROL,
    ] {
        assert_eq!(
            errno("open of a directory", t.fs.open(OWNER, dir, libc::O_RDONLY)),
            libc::EISDIR
        );
    }
    for flags in [libc::O_WRONLY, libc::O_RDWR] {
        let r = t.fs.open(ROOT, status, flags);
        assert_eq!(errno("write-open of control/status", r), libc::EACCES);
    }
    // Handles that do not exist.
    let mut buf = [0u8; 8];
    for fh in [0, 999_999, u64::MAX] {
        assert_eq!(errno("read", t.fs.read(fh, 0, &mut buf)), libc::EBADF);
        assert_eq!(errno("write", t.fs.write(OWNER, fh, 0, b"x")), libc::EBADF);
        assert_eq!(errno("fsync", t.fs.fsync(fh)), libc::EBADF);
        assert_eq!(errno("flush", t.fs.flush(fh)), libc::EBADF);
        assert_eq!(errno("lseek", t.fs.lseek(fh, 0, Seek::Data)), libc::EBADF);
        t.fs.release(fh); // closing an unknown handle is harmless
    }
    // A write past the largest volume size is EFBIG, and the volume is unchanged.
    let fh = t.open("live/v", libc::O_RDWR);
    for offset in [u64::MAX - 1, 1 << 62, (1u64 << 28) * SNARF] {
        let r = t.fs.write(OWNER, fh, offset, b"xy");
        assert_eq!(errno("huge write", r), libc::EFBIG, "{offset}");
    }
    assert_eq!(t.fs.getattr(v).unwrap().attr.size, 100);
    // Control files have no holes; seeking past the end is ENXIO.
    let c = t.fs.open(OWNER, jobs, libc::O_RDONLY).unwrap();
    assert!(c.direct_io);
    assert_eq!(
        errno("lseek", t.fs.lseek(c.fh, 0, Seek::Hole)),
        libc::EINVAL
    );
    t.fs.release(c.fh);
    assert_eq!(errno("lseek", t.fs.lseek(fh, 100, Seek::Data)), libc::ENXIO);
    assert_eq!(
        errno("lseek", t.fs.lseek(fh, u64::MAX, Seek::Hole)),
        libc::ENXIO
    );
    t.fs.release(fh);
}

#[test]
fn lseek_finds_data_and_holes_in_live_and_snapshot_files() {
    let t = Fs::new();
    // Data in snarfs 0 and 3, a hole in 1..3, the end inside snarf 5 (a hole).
    t.volume("v", &[]);
    t.write("live/v", 10, &pattern(7, 100));
    t.write("live/v", 3 * SNARF + 1, &pattern(8, 10));
    let size = 5 * SNARF + 50;
    t.fs.setattr(
        OWNER,
        t.ino("live/v").unwrap(),
        SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    )
    .unwrap();
    t.fs.mkdir(inode::SNAPSHOTS, name("s")).unwrap();
    for path in ["live/v", "snapshots/s/v"] {
        let fh = t.open(path, libc::O_RDONLY);
        let seek = |at, w| t.fs.lseek(fh, at, w);
        assert_eq!(seek(0, Seek::Data).unwrap(), 0, "{path}");
        assert_eq!(seek(5, Seek::Data).unwrap(), 5, "{path}");
        let hole = seek(0, Seek::Hole).unwrap();
        assert!(
            (SNARF..=3 * SNARF).contains(&hole),
            "{path}: hole at {hole}"
        );
        let data = seek(SNARF + 1, Seek::Data).unwrap();
        assert!(
            (SNARF + 1..=3 * SNARF + 1).contains(&data),
            "{path}: {data}"
        );
        assert_eq!(seek(3 * SNARF, Seek::Data).unwrap(), 3 * SNARF, "{path}");
        let end_hole = seek(3 * SNARF + 5, Seek::Hole).unwrap();
        assert!(end_hole <= size && end_hole >= 3 * SNARF + 11, "{path}");
        assert_eq!(seek(size - 1, Seek::Hole).unwrap(), size - 1, "{path}");
        assert_eq!(
            errno("data past the last", seek(4 * SNARF, Seek::Data)),
            libc::ENXIO
        );
        assert_eq!(errno("at the end", seek(size, Seek::Hole)), libc::ENXIO);
        t.fs.release(fh);
    }
}

#[test]
fn a_broken_snapshot_refuses_reads_with_eio_and_writers_go_on() {
    // One snarf of memory and none on disk: the second pre-image has nowhere to go, the
    // writer waits 50 ms, then the snapshot is broken and the write completes.
    let t = Fs::with(
        Budgets {
            memory: SNARF,
            disk: 0,
            break_after_secs: 0.05,
        },
        |_| None,
    );
    let old = pattern(9, 4 * SNARF as usize);
    t.volume("v", &old);
    t.fs.mkdir(inode::SNAPSHOTS, name("s")).unwrap();
    let reader = t.open("snapshots/s/v", libc::O_RDONLY);
    let new = pattern(10, 4 * SNARF as usize);
    t.write("live/v", 0, &new);
    assert!(t.read("live/v") == new, "the live write must go through");
    let ino = t.ino("snapshots/s/v").unwrap();
    let e = t.fs.open(OWNER, ino, libc::O_RDONLY).unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("broken"), "{}", e.message);
    let mut buf = [0u8; 32];
    assert_eq!(
        errno("read of a broken snapshot", t.fs.read(reader, 0, &mut buf)),
        libc::EIO
    );
    t.fs.release(reader);
    // Its name is still listed (status says why) until it is released.
    assert_eq!(t.names("snapshots"), ["s"]);
    let status = String::from_utf8(t.read("control/status")).unwrap();
    assert!(status.contains("broken"), "{status}");
    t.fs.rmdir(inode::SNAPSHOTS, name("s")).unwrap();
}

#[test]
fn control_files_are_transactions() {
    let t = Fs::new();
    t.volume("v", b"before");
    let (r, answer) = t.control(OWNER, "snapshot", "create s1\n");
    assert_eq!(r.unwrap(), 10);
    assert_eq!(answer, "created snapshot s1\n");
    assert_eq!(t.names("snapshots"), ["s1"]);
    t.write("live/v", 0, b"after!");
    assert_eq!(t.read("snapshots/s1/v"), b"before");
    // The table lists it; reading it in pieces gives one consistent text.
    let listing = String::from_utf8(t.read("control/snapshot")).unwrap();
    assert!(
        listing.lines().count() >= 2 && listing.contains("s1"),
        "{listing}"
    );
    let (r, answer) = t.control(OWNER, "snapshot", "create s1\n");
    assert_eq!(errno("taken name", r), libc::EINVAL);
    assert!(answer.contains("already exists"), "{answer}");
    assert!(answer.contains("accepted commands"), "{answer}");
    // A command the grammar does not know: EINVAL, and the reason read back.
    for bad in [
        "frobnicate\n",
        "create\n",
        "create a b c\n",
        "\n",
        "create s2\ncreate s3\n",
    ] {
        let (r, answer) = t.control(OWNER, "snapshot", bad);
        assert_eq!(errno(bad, r), libc::EINVAL, "{bad:?}");
        assert!(
            answer.ends_with('\n') && answer.len() > 1,
            "{bad:?}: {answer:?}"
        );
    }
    assert_eq!(t.names("snapshots"), ["s1"]);
    let (r, answer) = t.control(OWNER, "snapshot", "release s1\n");
    r.unwrap();
    assert_eq!(answer, "released snapshot s1\n");
    assert!(t.names("snapshots").is_empty());
    let (r, answer) = t.control(OWNER, "snapshot", "release s1\n");
    assert_eq!(errno("release of nothing", r), libc::EINVAL);
    assert!(answer.contains("s1"), "{answer}");
    // A backup needs a repository: refused with how to give one.
    t.control(OWNER, "snapshot", "create s2").0.unwrap();
    let (r, answer) = t.control(OWNER, "jobs", "backup s2\n");
    assert_eq!(errno("backup without a repository", r), libc::EINVAL);
    assert!(answer.contains("no repository"), "{answer}");
    assert!(answer.contains("repo="), "{answer}");
    // The answer is read from its start even though the write moved the offset, and the
    // same descriptor can be read again in small pieces.
    let ino = t.ino("control/snapshot").unwrap();
    let o = t.fs.open(OWNER, ino, libc::O_WRONLY).unwrap();
    t.fs.write(OWNER, o.fh, 0, b"create s3").unwrap();
    let mut got = Vec::new();
    let mut piece = [0u8; 3];
    loop {
        let n = t.fs.read(o.fh, 1_000_000, &mut piece).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&piece[..n]);
    }
    assert_eq!(got, b"created snapshot s3\n");
    t.fs.release(o.fh);
    // `echo cmd > control/snapshot` truncates first: that is accepted and changes nothing.
    let e =
        t.fs.setattr(
            OWNER,
            ino,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(e.attr.size, 0);
    assert_eq!(t.names("snapshots"), ["s2", "s3"]);
    // Tables are read-only and never take a truncate.
    let status = t.ino("control/status").unwrap();
    let r = t.fs.setattr(
        OWNER,
        status,
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    );
    assert_eq!(errno("truncate of control/status", r), libc::EPERM);
    for table in ["status", "jobs", "pids", "finishing", "status.json"] {
        let text = String::from_utf8(t.read(&format!("control/{table}"))).unwrap();
        assert!(!text.is_empty(), "control/{table} is empty");
    }
}

#[test]
fn only_the_owner_and_root_may_command_the_daemon() {
    let t = Fs::new();
    t.volume("v", b"x");
    let snapshot = t.ino("control/snapshot").unwrap();
    let jobs = t.ino("control/jobs").unwrap();
    for ino in [snapshot, jobs] {
        for flags in [libc::O_WRONLY, libc::O_RDWR] {
            let e = t.fs.open(OTHER, ino, flags).unwrap_err();
            assert_eq!(e.errno, libc::EACCES);
            assert!(e.message.contains("uid 2000"), "{}", e.message);
        }
        // Reading is anyone's.
        let o = t.fs.open(OTHER, ino, libc::O_RDONLY).unwrap();
        t.fs.release(o.fh);
        let trunc = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(
            errno("truncate by another user", t.fs.setattr(OTHER, ino, trunc)),
            libc::EACCES
        );
        t.fs.setattr(ROOT, ino, trunc).unwrap();
        t.fs.setattr(OWNER, ino, trunc).unwrap();
    }
    // A descriptor passed to another user (or opened before a setuid) still refuses
    // that user's writes, and nothing happens.
    let o = t.fs.open(OWNER, snapshot, libc::O_RDWR).unwrap();
    let r = t.fs.write(OTHER, o.fh, 0, b"create stolen\n");
    assert_eq!(errno("write by another user", r), libc::EACCES);
    t.fs.release(o.fh);
    assert!(t.names("snapshots").is_empty());
    // Root may.
    let (r, answer) = t.control(ROOT, "snapshot", "create by-root");
    r.unwrap();
    assert_eq!(answer, "created snapshot by-root\n");
}

#[test]
fn forgotten_inodes_go_and_listings_create_none() {
    let t = Fs::new();
    t.volume("v", b"x");
    t.fs.mkdir(inode::SNAPSHOTS, name("s")).unwrap();
    let before = t.fs.inodes().len();
    // Listings show inode numbers without making entries the kernel would never forget.
    for dir in ["live", "snapshots", "snapshots/s"] {
        t.names(dir);
    }
    let peeked = t.fs.readdir(inode::LIVE, 0).unwrap()[2].ino;
    let held = t.fs.inodes().len();
    let ino = t.ino("live/v").unwrap();
    assert_eq!(ino, peeked, "the listing and the lookup disagree");
    let looked = t.fs.inodes().len();
    assert!(looked <= held.max(before) + 1);
    // Every lookup is counted: two lookups need two forgets.
    t.fs.lookup(inode::LIVE, name("v")).unwrap();
    let counted = t.fs.inodes().len();
    t.fs.forget(ino, 1);
    assert_eq!(t.fs.inodes().len(), counted);
    t.fs.getattr(ino).unwrap();
    // All lookups of it so far: the ones `ino()` and the explicit one made.
    t.fs.forget(ino, u64::MAX);
    assert_eq!(t.fs.inodes().len(), counted - 1);
    assert_eq!(
        errno("getattr of a forgotten inode", t.fs.getattr(ino)),
        libc::ESTALE
    );
    // Forgetting what is not there does nothing.
    t.fs.forget(ino, 1);
    t.fs.forget(u64::MAX, 5);
    // A new lookup brings it back.
    assert_eq!(t.read("live/v"), b"x");
}

#[test]
fn backups_read_back_from_the_repository() {
    let t = Fs::with(roomy(), |dir| {
        let path = dir.join("repo");
        let repo = Repo::init(&path, &RepoInitOptions::default()).expect("repo init");
        common::write_backup(&repo, 11, 300_000, None);
        Some(path)
    });
    let ids = t.names("backups");
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let dir = t.entry(&format!("backups/{id}")).attr;
    assert_eq!((dir.kind, dir.perm), (Kind::Dir, 0o555));
    let vols = common::volumes_for(11, 300_000);
    let mut names = t.names(&format!("backups/{id}"));
    names.sort();
    let mut want: Vec<String> = vols.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    for (vol, data) in &vols {
        let path = format!("backups/{id}/{vol}");
        let e = t.entry(&path).attr;
        assert_eq!(
            (e.size, e.perm, e.kind),
            (data.len() as u64, 0o400, Kind::File)
        );
        assert!(
            t.read(&path) == *data,
            "{path} differs from what was backed up"
        );
        let ino = t.ino(&path).unwrap();
        let o = t.fs.open(OWNER, ino, libc::O_RDONLY).unwrap();
        assert!(o.keep_cache && !o.direct_io);
        assert_eq!(
            errno("write to a backup", t.fs.write(OWNER, o.fh, 0, b"x")),
            libc::EROFS
        );
        assert!(t.fs.lseek(o.fh, 0, Seek::Hole).unwrap() <= data.len() as u64);
        assert_eq!(
            errno(
                "past the end",
                t.fs.lseek(o.fh, data.len() as u64, Seek::Data)
            ),
            libc::ENXIO
        );
        t.fs.release(o.fh);
        for flags in [libc::O_WRONLY, libc::O_RDWR] {
            assert_eq!(
                errno("write-open of a backup", t.fs.open(OWNER, ino, flags)),
                libc::EROFS
            );
        }
        let r = t.fs.setattr(
            OWNER,
            ino,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        );
        assert_eq!(errno("truncate of a backup", r), libc::EROFS);
    }
    let dir_ino = t.ino(&format!("backups/{id}")).unwrap();
    assert_eq!(
        errno(
            "lookup of a volume not backed up",
            t.fs.lookup(dir_ino, name("nope"))
        ),
        libc::ENOENT
    );
    for (parent, what) in [(inode::BACKUPS, id.as_str()), (dir_ino, vols[0].0.as_str())] {
        assert_eq!(
            errno("unlink", t.fs.unlink(parent, name(what))),
            libc::EROFS
        );
        assert_eq!(errno("rmdir", t.fs.rmdir(parent, name(what))), libc::EROFS);
    }
}

#[test]
fn a_repository_that_is_not_there_is_eio_under_backups() {
    let t = Fs::with(roomy(), |dir| Some(dir.join("no-repo-here")));
    assert_eq!(
        errno("readdir of backups/", t.fs.readdir(inode::BACKUPS, 0)),
        libc::EIO
    );
    assert_eq!(
        errno("lookup in backups/", t.fs.lookup(inode::BACKUPS, name("x"))),
        libc::EIO
    );
    // The rest of the mount is not affected.
    t.volume("v", b"fine");
    assert_eq!(t.read("live/v"), b"fine");
}

#[test]
fn statfs_reports_the_store_filesystem() {
    let t = Fs::new();
    let s = t.fs.statfs().unwrap();
    assert!(s.blocks > 0 && s.bsize > 0 && s.bfree <= s.blocks, "{s:?}");
    assert_eq!(s.namelen, 255);
}
