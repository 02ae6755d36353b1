//! Repositories on S3 (`s3://bucket/prefix`) against a real S3-compatible server on loopback
//! (moto's, tests/common/s3server.rs): the backend's object semantics (create-only, ranged
//! reads, multipart uploads, listings that skip names snarf does not make); plain and
//! encrypted repositories from the command line (init, backup, incremental, restore
//! byte-exact, check --read-data, prune); the lease lock refused while another process
//! holds it and taken over when that process dies; a flipped byte detected; the server
//! vanishing mid-backup (nothing committed, the next backup fine); two hosts backing up to
//! one repository at once (the second refused, or waiting its turn with --lock-wait).

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::snarf_env;
use s3server::{Proxy, S3Server};
use snarf::repo::backend::{Backend, Created, Key, Kind, S3Backend, S3Url, StateName};
use snarf::repo::ids::PackId;
use snarf::repo::v2::{InitOptions, NewBackup, Repository};
use snarf::repo::Error;

const SNARF: u32 = 16 << 10;
const SNARFS: u64 = 300;

fn opts() -> InitOptions {
    InitOptions {
        compression: 3,
        pack_target: 256 << 10,
        frame_bytes: 4 * u64::from(SNARF),
        gc_grace_secs: 0,
        encryption: None,
    }
}

/// The S3 backend of `url` on the test server at `server_port`.
fn connect(server_port: u16, url: &str) -> S3Backend {
    S3Backend::connect(
        &S3Url::parse(url).unwrap(),
        &S3Server::settings_at(server_port),
    )
    .unwrap()
}

fn backend(server_port: u16, url: &str) -> Arc<S3Backend> {
    Arc::new(connect(server_port, url))
}

/// Snarf `s` of generation `g`: a third are holes, every 10th changes each generation.
fn snarf(g: u64, s: u64) -> Option<Vec<u8>> {
    if s % 3 == 1 {
        return None;
    }
    let gen = if s.is_multiple_of(10) { g } else { 0 };
    let mut x = (gen << 32 | s) ^ 0x9e37_79b9_7f4a_7c15;
    let mut d = Vec::with_capacity(SNARF as usize);
    while d.len() < SNARF as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(if d.len() % 2 == 0 { x as u8 } else { b'a' });
    }
    Some(d)
}

fn volume(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; (SNARFS * u64::from(SNARF)) as usize];
    for s in 0..SNARFS {
        if let Some(d) = snarf(g, s) {
            let at = (s * u64::from(SNARF)) as usize;
            v[at..at + d.len()].copy_from_slice(&d);
        }
    }
    v
}

/// Backs up generation `g` (incremental over the newest backup, if any).
fn backup(repo: &Repository, g: u64) -> Result<String, Error> {
    let mut new = NewBackup::new(&format!("gen{g}"), serde_json::json!({ "g": g }));
    new.lock_wait = Some(Duration::from_secs(20));
    let base = repo.list_backups()?.pop();
    let w = repo.begin_backup(new)?;
    let slot = w.add_volume(
        "vm1",
        SNARFS * u64::from(SNARF),
        SNARF,
        base.as_ref().map(|b| (b, "vm1")),
    )?;
    for s in 0..SNARFS {
        let changed = base.is_none() || s.is_multiple_of(10);
        if let (true, Some(d)) = (changed, snarf(g, s)) {
            w.put(slot, s, &d)?;
        }
    }
    Ok(w.commit()?.to_string())
}

fn restored(repo: &Repository, id: &str, dest: &Path) -> Vec<u8> {
    repo.restore(id, None, dest, &mut |_| {}).unwrap();
    std::fs::read(dest.join("vm1")).unwrap()
}

/// A raw client of the server's bucket, for what snarf itself never writes.
fn raw(server: &S3Server, bucket: &str) -> (tokio::runtime::Runtime, object_store::aws::AmazonS3) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_access_key_id(s3server::ACCESS_KEY)
        .with_secret_access_key(s3server::SECRET_KEY)
        .build()
        .unwrap();
    (rt, store)
}

#[test]
fn the_backend_keeps_object_semantics_on_a_real_s3_server() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("objects");
    let b = backend(server.port, "s3://objects/some/prefix");
    let k = Key::State(StateName::LastFinishing);
    assert_eq!(b.read(&k, 100).unwrap(), None);
    assert_eq!(b.size(&k).unwrap(), None);
    assert_eq!(b.create(&k, b"one").unwrap(), Created::Created);
    assert_eq!(b.create(&k, b"two").unwrap(), Created::AlreadyExists);
    assert_eq!(b.read(&k, 100).unwrap().as_deref(), Some(&b"one"[..]));
    b.write(&k, b"three!").unwrap();
    assert_eq!(b.size(&k).unwrap(), Some(6));
    assert_eq!(b.read_range(&k, 1, 3).unwrap(), b"hre");
    assert!(
        b.read_range(&k, 4, 10).is_err(),
        "a short range is an error"
    );
    let e = b.read(&k, 3).unwrap_err().to_string();
    assert!(
        e.contains("larger than 3 bytes")
            && e.contains("s3://objects/some/prefix/state/last-finishing"),
        "{e}"
    );

    // A small pack goes up in one request, a large one in parts; both byte-exact, ranges
    // across part boundaries too, and an upload dropped unfinished leaves nothing.
    let small = PackId::generate();
    let big = PackId::generate();
    let data: Vec<u8> = (0..20u64 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    let mut u = b.upload(&Key::Pack(small)).unwrap();
    u.write(&data[..1000]).unwrap();
    u.finish().unwrap();
    let mut u = b.upload(&Key::Pack(big)).unwrap();
    for chunk in data.chunks(3 << 20) {
        u.write(chunk).unwrap();
    }
    assert_eq!(u.len(), data.len() as u64);
    u.finish().unwrap();
    let mut u = b.upload(&Key::Pack(PackId::generate())).unwrap();
    u.write(&data[..9 << 20]).unwrap();
    drop(u);
    let mut packs = b.list(Kind::Pack).unwrap();
    packs.sort();
    let mut want = vec![
        (Key::Pack(small), 1000),
        (Key::Pack(big), data.len() as u64),
    ];
    want.sort();
    assert_eq!(packs, want);
    assert_eq!(b.read(&Key::Pack(big), 1 << 30).unwrap().unwrap(), data);
    let at = (8 << 20) - 5;
    assert_eq!(
        b.read_range(&Key::Pack(big), at, 10).unwrap(),
        &data[at as usize..at as usize + 10]
    );
    assert_eq!(
        b.read_range(&Key::Pack(small), 0, 1000).unwrap(),
        &data[..1000]
    );

    // Objects snarf never names are skipped by listings, never returned as keys.
    let (rt, store) = raw(&server, "objects");
    use object_store::ObjectStore;
    for name in [
        "some/prefix/packs/zz/notapack",
        "some/prefix/packs/ABCDEF",
        "some/prefix/index/..evil",
        "some/prefix/backups/20260101-000000-zzzz",
        "some/prefix/state/other",
    ] {
        rt.block_on(store.put(&object_store::path::Path::from(name), b"x".to_vec().into()))
            .unwrap();
    }
    assert_eq!(b.list(Kind::Pack).unwrap().len(), 2);
    assert!(b.list(Kind::Index).unwrap().is_empty());
    assert!(b.list(Kind::Backup).unwrap().is_empty());
    assert_eq!(b.list(Kind::State).unwrap(), vec![(k.clone(), 6)]);
    // Another prefix of the bucket is another repository.
    let other = backend(server.port, "s3://objects/some");
    assert!(other.list(Kind::Pack).unwrap().is_empty());
    assert!(b.delete(&k).unwrap());
    assert!(!b.delete(&k).unwrap());

    // A missing bucket is named with the fix.
    let none = backend(server.port, "s3://no-such-bucket/r");
    let e = none.write(&k, b"x").unwrap_err().to_string();
    assert!(
        e.contains("no-such-bucket") && e.contains("create it"),
        "{e}"
    );
}

#[test]
fn plain_and_encrypted_s3_repositories_back_up_restore_check_and_prune_from_the_cli() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("snarf-cli");
    for (repo, encrypted) in [
        ("s3://snarf-cli/plain", false),
        ("s3://snarf-cli/hosts/enc", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let store_s = store.to_str().unwrap();
        let mut env = server.env();
        if encrypted {
            env.push(("SNARF_PASSWORD", "correct horse battery".into()));
        }
        let mut init = vec!["repo", "init", repo];
        if encrypted {
            init.extend(["--encryption", "--kdf-memory", "8M"]);
        }
        let (code, out, err) = snarf_env(&init, &env);
        assert_eq!(code, 0, "{out}{err}");
        // A second init of the same prefix is refused.
        let (code, _, err) = snarf_env(&init, &env);
        assert_ne!(code, 0);
        assert!(err.contains(repo), "{err}");
        assert_eq!(snarf_env(&["init", store_s, "--repo", repo], &env).0, 0);
        let a = common::volume_data(31, 3 << 20);
        std::fs::write(store.join("volumes/a.img"), &a).unwrap();
        let (code, out, err) = snarf_env(&["backup", store_s, "first"], &env);
        assert_eq!(code, 0, "{out}{err}");
        let id1 = common::backup_id(&out);
        let b = common::volume_data(32, 1 << 20);
        std::fs::write(store.join("volumes/b.img"), &b).unwrap();
        let (code, out, err) = snarf_env(&["backup", store_s, "second"], &env);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("incremental from"), "{out}");
        let id2 = common::backup_id(&out);
        let (code, out, err) = snarf_env(&["backups", repo], &env);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&id1) && out.contains(&id2), "{out}");
        for (id, want) in [
            (&id1, vec![("a.img", &a)]),
            (&id2, vec![("a.img", &a), ("b.img", &b)]),
        ] {
            let dest = dir.path().join(format!("out-{id}"));
            let (code, _, err) = snarf_env(&["restore", repo, id, dest.to_str().unwrap()], &env);
            assert_eq!(code, 0, "{err}");
            for (name, data) in want {
                assert!(
                    &std::fs::read(dest.join(name)).unwrap() == data,
                    "{repo} {id} {name} restores byte-exact"
                );
            }
        }
        let (code, out, err) = snarf_env(&["check", repo, "--read-data"], &env);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = snarf_env(&["prune", repo, "--keep-last", "1"], &env);
        assert_eq!(code, 0, "{out}{err}");
        let (_, out, _) = snarf_env(&["backups", repo], &env);
        assert!(!out.contains(&id1) && out.contains(&id2), "{out}");
        let (code, out, err) = snarf_env(&["check", repo, "--read-data"], &env);
        assert_eq!(code, 0, "{out}{err}");
        if encrypted {
            let mut wrong = server.env();
            wrong.push(("SNARF_PASSWORD", "wrong".into()));
            let (code, _, err) = snarf_env(&["backups", repo], &wrong);
            assert_ne!(code, 0);
            assert!(err.contains("passphrase") && err.contains(repo), "{err}");
        }
    }
    // Plain http to a host other than this one is refused before anything is sent.
    let mut far = server.env();
    far.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    far.push(("AWS_ENDPOINT_URL", "http://192.0.2.1:9000".into()));
    let (code, _, err) = snarf_env(&["backups", "s3://snarf-cli/plain"], &far);
    assert_ne!(code, 0);
    assert!(
        err.contains("AWS_ENDPOINT_URL") && err.contains("https://"),
        "{err}"
    );
}

/// Not a test of its own: the lock holder the lock test starts as another process.
#[test]
fn helper_process_holding_an_s3_lock() {
    let Ok(port) = std::env::var("SNARF_TEST_S3_HOLD_PORT") else {
        return;
    };
    let b = backend(port.parse().unwrap(), "s3://locks/r");
    let _guard = b.lock("snarf test holder", None).unwrap();
    println!("HELD");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn the_lease_lock_is_refused_while_another_process_holds_it_and_taken_over_when_it_dies() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("locks");
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_holding_an_s3_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SNARF_TEST_S3_HOLD_PORT", server.port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HELD") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the holder process ended before it held the lock");
    }
    let b = backend(server.port, "s3://locks/r");
    let e = b.lock("snarf second", None).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Locked { .. })
            && msg.contains("snarf test holder")
            && msg.contains(&format!("pid {}", holder.id())),
        "{msg}"
    );
    let e = b
        .lock("snarf second", Some(Duration::from_secs(1)))
        .unwrap_err();
    assert!(matches!(e, Error::LockTimeout { .. }), "{e}");
    // Another prefix is another repository with its own lock.
    drop(
        backend(server.port, "s3://locks/other")
            .lock("x", None)
            .unwrap(),
    );

    // kill -9 of the holder: its lease names a dead pid of this host and is taken over.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let guard = b.lock("snarf second", None).unwrap();
    let again = backend(server.port, "s3://locks/r");
    assert!(matches!(
        again.lock("third", None).unwrap_err(),
        Error::Locked { .. }
    ));
    drop(guard);
    drop(again.lock("third", None).expect("released on drop"));

    // A lease of another host: refused while it lasts, taken over once expired.
    let (rt, store) = raw(&server, "locks");
    use object_store::ObjectStore;
    let lease = |expires: u64| {
        let doc = serde_json::json!({"holder": "snarf backup", "host": "elsewhere.example", "pid": 1, "token": "t", "expires": expires});
        rt.block_on(store.put(
            &object_store::path::Path::from("r/lock"),
            serde_json::to_vec(&doc).unwrap().into(),
        ))
        .unwrap();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    lease(now + 600);
    let msg = b.lock("snarf second", None).unwrap_err().to_string();
    assert!(msg.contains("elsewhere.example"), "{msg}");
    lease(now - 1);
    drop(
        b.lock("snarf second", None)
            .expect("an expired lease is taken over"),
    );
}

#[test]
fn a_flipped_byte_in_an_s3_object_is_detected() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("flips");
    let b = backend(server.port, "s3://flips/r");
    let repo = Repository::init(b.clone(), &opts()).unwrap();
    let id = backup(&repo, 1).unwrap();
    let dest = tempfile::tempdir().unwrap();
    assert!(restored(&repo, &id, &dest.path().join("ok")) == volume(1));
    drop(repo);
    let (key, size) = b
        .list(Kind::Pack)
        .unwrap()
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap();
    let mut data = b.read(&key, 1 << 30).unwrap().unwrap();
    data[(size / 2) as usize] ^= 0x20;
    b.write(&key, &data).unwrap();
    let repo = Repository::open(b.clone()).unwrap();
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(!report.is_ok(), "check --read-data finds the flipped byte");
    let shown = format!("{:?}", report.problems);
    let pack = match &key {
        Key::Pack(p) => p.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(shown.contains(&pack), "the damaged pack is named: {shown}");
    let err = repo
        .restore(&id, None, &dest.path().join("bad"), &mut |_| {})
        .unwrap_err();
    let msg = snarf::chain::Chain::new(&err).to_string();
    assert!(msg.contains(&pack) || msg.contains("damaged"), "{msg}");
}

#[test]
fn the_server_vanishing_mid_backup_commits_nothing_and_the_next_backup_is_fine() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("cuts");
    let mut proxy = Proxy::start(server.port);
    let via_proxy = backend(proxy.port, "s3://cuts/r");
    let repo = Repository::init(via_proxy.clone(), &opts()).unwrap();
    let first = backup(&repo, 1).unwrap();

    let base = repo.backup(&first).unwrap();
    let mut new = NewBackup::new("gen2", serde_json::json!({}));
    new.lock_wait = Some(Duration::from_secs(20));
    let w = repo.begin_backup(new).unwrap();
    let slot = w
        .add_volume(
            "vm1",
            SNARFS * u64::from(SNARF),
            SNARF,
            Some((&base, "vm1")),
        )
        .unwrap();
    let mut failed = None;
    for s in 0..SNARFS {
        if s == SNARFS / 2 {
            proxy.cut();
        }
        let d = snarf(2, s).unwrap_or_else(|| vec![7; SNARF as usize]);
        if let Err(e) = w.put(slot, s, &d) {
            failed = Some(e);
            break;
        }
    }
    // The server comes back (on the same address) before the writer gives up its lock.
    let (err, _back) = match failed {
        Some(e) => {
            let back = Proxy::on(proxy.port, server.port);
            drop(w);
            (e, back)
        }
        None => (w.commit().unwrap_err(), Proxy::on(proxy.port, server.port)),
    };
    let msg = snarf::chain::Chain::new(&err).to_string();
    assert!(
        msg.contains("s3://cuts/r"),
        "the repository is named: {msg}"
    );
    drop(repo);

    let direct = backend(server.port, "s3://cuts/r");
    let repo = Repository::open(direct).unwrap();
    assert_eq!(
        repo.backup_ids().unwrap().len(),
        1,
        "the cut-off backup never committed"
    );
    let id = backup(&repo, 3).unwrap();
    let dest = tempfile::tempdir().unwrap();
    assert!(restored(&repo, &id, dest.path()) == volume(3));
    let report = repo.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn a_server_without_conditional_writes_is_refused_before_anything_is_committed() {
    if !s3server::available() {
        return;
    }
    let server = S3Server::start();
    server.create_bucket("nocond");
    let proxy = Proxy::without_conditional_writes(server.port);
    let b = backend(proxy.port, "s3://nocond/r");
    let k = Key::State(StateName::GcPending);
    for e in [
        b.create(&k, b"x").unwrap_err(),
        b.lock("snarf test", None).unwrap_err(),
        Repository::init(b.clone(), &opts()).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(
            matches!(e, Error::NoConditionalWrites { .. })
                && msg.contains("If-None-Match")
                && msg.contains("s3://nocond/r"),
            "{msg}"
        );
    }
    assert_eq!(b.size(&k).unwrap(), None, "nothing was created");
    assert_eq!(
        b.size(&Key::Config).unwrap(),
        None,
        "no repository was made"
    );
    // The same server reached directly has them.
    assert_eq!(
        backend(server.port, "s3://nocond/r")
            .create(&k, b"x")
            .unwrap(),
        Created::Created
    );
}

/// `snarf ARGS` as a process of another host: in a UTS namespace of its own whose host name
/// is `host` (needs root), so its lease names that host and no pid of it can be checked here.
fn snarf_on(host: &str, args: &[&str], env: &[(&str, String)]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::snarf_cmd(args, env);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let host = host.as_bytes().to_vec();
    // SAFETY: between fork and exec only two system calls, on memory allocated before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUTS) != 0
                || libc::sethostname(host.as_ptr().cast(), host.len()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn two_hosts_backing_up_to_one_s3_repository_at_once_take_turns_and_lose_nothing() {
    if !s3server::available() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a host per process needs a UTS namespace, which needs root");
        return;
    }
    let server = S3Server::start();
    server.create_bucket("shared");
    let proxy = Proxy::start(server.port);
    let repo = "s3://shared/hosts";
    let direct = server.env();
    // Host A reaches the server through the relay, so the test can stall it mid-backup.
    let mut relayed = server.env();
    relayed.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    relayed.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    ));
    let (code, out, err) = snarf_env(&["repo", "init", repo], &direct);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    for (host, seed) in [("host-a", 51u64), ("host-b", 52)] {
        let store = dir.path().join(host);
        let s = store.to_str().unwrap().to_string();
        assert_eq!(snarf_env(&["init", &s, "--repo", repo], &direct).0, 0);
        let data = common::volume_data(seed, 24 << 20);
        std::fs::write(store.join(format!("volumes/{host}.img")), &data).unwrap();
        stores.push((host, s, data));
    }
    let a = snarf_on("host-a", &["backup", &stores[0].1, "nightly"], &relayed)
        .spawn()
        .unwrap();
    // Once A holds the lease, stall it there.
    let (rt, raw_store) = raw(&server, "shared");
    let lease = || {
        use object_store::ObjectStore;
        let path = object_store::path::Path::from("hosts/lock");
        rt.block_on(async { raw_store.get(&path).await?.bytes().await })
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !lease().is_some_and(|l| l.contains("host-a")) {
        assert!(
            std::time::Instant::now() < deadline,
            "host A never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.pause(true);
    // Host B, not waiting: refused, naming the host that holds the lock.
    let refused = snarf_on("host-b", &["backup", &stores[1].1, "nightly"], &direct)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "host B backed up beside host A");
    assert!(msg.contains("locked") && msg.contains("host-a"), "{msg}");
    // Host B, waiting for its turn: still waiting while A holds the lock.
    let mut b = snarf_on(
        "host-b",
        &["backup", &stores[1].1, "nightly", "--lock-wait", "120"],
        &direct,
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        b.try_wait().unwrap().is_none(),
        "host B did not wait for host A's lock"
    );
    assert!(lease().is_some_and(|l| l.contains("host-a")));
    proxy.pause(false);
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = b.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));

    // Both backups are committed, each restores byte-exact, and the repository checks clean.
    let (code, listed, err) = snarf_env(&["backups", repo], &direct);
    assert_eq!(code, 0, "{err}");
    for (out, (host, _, data)) in [(&a, &stores[0]), (&b, &stores[1])] {
        let id = common::backup_id(&String::from_utf8_lossy(&out.stdout));
        assert!(listed.contains(&id), "{listed}");
        let dest = dir.path().join(format!("restored-{host}"));
        let (code, _, err) = snarf_env(&["restore", repo, &id, dest.to_str().unwrap()], &direct);
        assert_eq!(code, 0, "{err}");
        assert!(
            std::fs::read(dest.join(format!("{host}.img"))).unwrap() == *data,
            "{host}'s backup restores byte-exact"
        );
    }
    assert_eq!(
        listed.lines().filter(|l| l.contains("nightly")).count(),
        2,
        "{listed}"
    );
    let (code, out, err) = snarf_env(&["check", repo, "--read-data"], &direct);
    assert_eq!(code, 0, "{out}{err}");
    assert!(lease().is_none(), "the lock was left behind");
}

/// The kill -9 census of the fault-injection suite, over S3 (issue 16: finishing stays
/// crash-safe at every step without a filesystem). A child process runs two backups, a
/// prune and a third backup through the fault decorator wrapping the S3 backend, and is
/// killed after each durable S3 operation in turn (a pack's upload finished, a backup
/// object created, a finishing record written or deleted...); then a new process takes
/// over the dead holder's lease, completes what was cut short (mid-finishing: forward),
/// checks clean with every byte read, restores every listed backup byte-exact, and backs up
/// again.
#[cfg(feature = "fault-injection")]
mod census {
    use super::*;
    use snarf::repo::backend::faulty::Faulty;
    use snarf::repo::Policy;
    use std::os::unix::process::ExitStatusExt;

    const PORT_ENV: &str = "SNARF_TEST_S3_CENSUS_PORT";
    const URL_ENV: &str = "SNARF_TEST_S3_CENSUS_URL";

    /// Packs of 1 MiB: a few per backup, so the census stays short enough to kill at each.
    fn census_opts() -> InitOptions {
        InitOptions {
            pack_target: 1 << 20,
            ..opts()
        }
    }

    fn scenario(repo: &Repository) {
        backup(repo, 1).unwrap();
        backup(repo, 2).unwrap();
        snarf::repo::v2::gc::prune(
            repo,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            false,
        )
        .unwrap();
        backup(repo, 3).unwrap();
    }

    /// Not a test of its own: the child the census kills.
    #[test]
    fn s3_census_child() {
        let (Ok(port), Ok(url)) = (std::env::var(PORT_ENV), std::env::var(URL_ENV)) else {
            return;
        };
        let inner = connect(port.parse().unwrap(), &url);
        scenario(&Repository::open(Arc::new(Faulty::new(inner))).unwrap());
    }

    #[test]
    fn every_durable_s3_operation_killed_leaves_a_repository_that_completes_forward() {
        if !s3server::available() {
            return;
        }
        let server = S3Server::start();
        server.create_bucket("census");
        Repository::init(backend(server.port, "s3://census/all"), &census_opts()).unwrap();
        // Counted as the child counts: from its open on (each name's #N is per process).
        let faulty = Arc::new(Faulty::with_census(connect(server.port, "s3://census/all")));
        scenario(&Repository::open(faulty.clone()).unwrap());
        let census = faulty.census();
        for kind in [
            "finish.packs",
            "create.backups",
            "write.state",
            "delete.state",
        ] {
            assert!(
                census.iter().any(|p| p.starts_with(kind)),
                "{kind} not in {census:?}"
            );
        }
        let exe = std::env::current_exe().unwrap();
        for (n, point) in census.iter().enumerate() {
            let url = format!("s3://census/kill{n}");
            Repository::init(backend(server.port, &url), &census_opts()).unwrap();
            let status = std::process::Command::new(&exe)
                .args(["--exact", "census::s3_census_child", "--test-threads=1"])
                .env(PORT_ENV, server.port.to_string())
                .env(URL_ENV, &url)
                .env("SNARF_FAULT_POINT", point)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "point {point} was not reached ({status})"
            );
            let repo = Repository::open(backend(server.port, &url)).unwrap();
            // Taking the lock over from the dead child completes its finishing.
            drop(repo.lock("census", None).unwrap());
            snarf::repo::v2::gc::adopt(&repo).unwrap();
            let report = repo.check(true, &mut |_| {}).unwrap();
            assert!(
                report.is_ok(),
                "after a kill at {point}: {:?}",
                report.problems
            );
            for b in repo.list_backups().unwrap() {
                let g = b.source["g"].as_u64().unwrap();
                let dest = tempfile::tempdir().unwrap();
                assert!(
                    restored(&repo, &b.id.to_string(), dest.path()) == volume(g),
                    "backup gen{g} after a kill at {point}"
                );
            }
            let id = backup(&repo, 4).unwrap();
            let dest = tempfile::tempdir().unwrap();
            assert!(
                restored(&repo, &id, dest.path()) == volume(4),
                "the next backup after a kill at {point}"
            );
        }
        eprintln!("S3 census: {} durable operations killed", census.len());
    }
}
