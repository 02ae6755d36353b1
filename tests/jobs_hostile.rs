//! A hostile client on the mount's job socket, speaking the raw protocol: acknowledgements
//! for snarfs never handed out, for snarf 2^61, naming a cached chunk with the wrong length;
//! truncated frames, huge length prefixes, a thousand connections. The mount stays up, its
//! thread count stays bounded, every snapshot reads the bytes it froze, and a real backup
//! works afterwards.

mod mounted;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mounted::{read, snarf_ok, Mounted};
use snarf::jobs::proto::{self, AckItem, Msg, StoredChunk};
use snarf::jobs::{Mode, PlanRequest};
use snarf::repo::ChunkRef;

const SNARF: usize = 64 << 10;
/// 16 whole snarfs and a 1000-byte tail.
const SIZE: usize = 16 * SNARF + 1000;

fn contents(seed: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Reads a snapshot file past the kernel's page cache, so the daemon answers every byte.
fn read_uncached(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).expect("open snapshot file");
    // SAFETY: advice on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    drop(f);
    read(path)
}

fn connect(m: &Mounted) -> UnixStream {
    let s = UnixStream::connect(m.store.join("run/daemon.sock")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn send(s: &mut UnixStream, msg: &Msg, payload: &[u8]) {
    proto::write_frame(s, msg, payload).expect("send a frame");
}

/// The next frame from the daemon; `None` once it closed the connection.
fn answer(s: &mut UnixStream) -> Option<Msg> {
    match proto::read_frame(s) {
        Ok(Some((m, _))) => Some(m),
        Ok(None) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("reading the daemon's answer: {e}"),
    }
}

/// Hello, describe and a full plan of `snapshot`'s v.img into `repo`: the start of a job.
fn planned(m: &Mounted, snapshot: &str, repo: &Path) -> UnixStream {
    let mut s = connect(m);
    send(
        &mut s,
        &Msg::Hello {
            version: proto::VERSION,
            job: "hostile".into(),
            pid: std::process::id(),
        },
        &[],
    );
    assert!(matches!(answer(&mut s), Some(Msg::Welcome { .. })));
    send(
        &mut s,
        &Msg::Describe {
            snapshot: snapshot.into(),
        },
        &[],
    );
    assert!(matches!(answer(&mut s), Some(Msg::Snapshot { .. })));
    send(
        &mut s,
        &Msg::Plan {
            request: PlanRequest {
                snapshot: snapshot.into(),
                volumes: Some(vec!["v.img".into()]),
                mode: Mode::Full,
                bases: vec![],
            },
            repo: repo.to_path_buf(),
        },
        &[],
    );
    assert!(matches!(answer(&mut s), Some(Msg::Planned { .. })));
    s
}

/// Sends one ack and expects the daemon to refuse it and end the connection.
fn refused_ack(m: &Mounted, snapshot: &str, repo: &Path, item: AckItem, what: &str) {
    let mut s = planned(m, snapshot, repo);
    send(
        &mut s,
        &Msg::Ack {
            count: 1,
            format: item.chunk.format(),
        },
        &proto::encode_acks(&[item]),
    );
    match answer(&mut s) {
        Some(Msg::Error { message }) => assert!(
            message.contains("refused"),
            "{what}: the daemon said {message:?}"
        ),
        other => panic!("{what}: the ack was not refused ({other:?})"),
    }
    assert_eq!(answer(&mut s), None, "{what}: the connection stayed open");
}

fn threads_of(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

fn assert_serving(m: &Mounted, snap: &Path, expected: &[u8], after: &str) {
    assert!(m.daemon_alive(), "the daemon died after {after}");
    assert!(m.is_mounted(), "the mount went away after {after}");
    assert!(
        read_uncached(snap) == expected,
        "snapshot reads are wrong after {after}"
    );
}

#[test]
fn a_hostile_job_client_cannot_crash_the_mount_or_corrupt_a_snapshot() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo = m.dir.path().join("repo");
    // Format 1: the forged acks below are format 1 chunk references (format 2's refusals
    // are jobs::ack_v2_tests).
    snarf_ok(&["repo", "init", repo.to_str().unwrap(), "--format", "1"]);
    let orig = contents(1);
    fs::write(m.path("live/v.img"), &orig).unwrap();
    fs::create_dir(m.path("snapshots/s")).unwrap();
    let snap = m.path("snapshots/s/v.img");
    // Overwrite snarf 3 and the tail after the snapshot: their pre-images are captured.
    let live = fs::OpenOptions::new()
        .write(true)
        .open(m.path("live/v.img"))
        .unwrap();
    live.write_all_at(&vec![0xee; SNARF], 3 * SNARF as u64)
        .unwrap();
    live.write_all_at(&[0xdd; 1000], 16 * SNARF as u64).unwrap();
    live.sync_all().unwrap();
    assert_serving(&m, &snap, &orig, "the setup");

    // 1. An ack for a snarf never handed out, with a zero chunk.
    refused_ack(
        &m,
        "s",
        &repo,
        AckItem {
            vol: 0,
            snarf: 5,
            chunk: StoredChunk::V1(ChunkRef::zero(SNARF as u32)),
        },
        "a zero chunk for a snarf never handed out",
    );
    assert_serving(&m, &snap, &orig, "a zero ack for snarf 5");

    // 2. An ack for snarf 2^61 (its record offset would wrap to snarf 0's).
    refused_ack(
        &m,
        "s",
        &repo,
        AckItem {
            vol: 0,
            snarf: 1 << 61,
            chunk: StoredChunk::V1(ChunkRef::zero(SNARF as u32)),
        },
        "snarf 2^61",
    );
    assert_serving(&m, &snap, &orig, "an ack for snarf 2^61");

    // A real backup frees the captured pre-images; reading the snapshot then reads the
    // tail and snarf 3 back from the repository, which caches their chunks.
    let out = snarf_ok(&[
        "backup",
        "--repo",
        repo.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
        "s",
    ]);
    assert!(out.contains("backup "), "{out}");
    assert_serving(&m, &snap, &orig, "a real backup");
    // The tail's chunk, as the backup stored it.
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let restored = m.dir.path().join("restored");
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        &id,
        restored.to_str().unwrap(),
    ]);
    assert!(read(&restored.join("v.img")) == orig);
    let tail = {
        let reader = snarf::repo::Repo::open(&repo)
            .unwrap()
            .volume_reader(&id, "v.img")
            .unwrap();
        reader.chunk_ref(16).unwrap()
    };
    assert_eq!(tail.raw_len, 1000);

    // 3. An ack naming the cached tail chunk with a whole snarf's length, for snarf 3.
    let forged = ChunkRef {
        raw_len: SNARF as u32,
        ..tail
    };
    for snarf in [3, 7] {
        refused_ack(
            &m,
            "s",
            &repo,
            AckItem {
                vol: 0,
                snarf,
                chunk: StoredChunk::V1(forged),
            },
            "a cached chunk with the wrong length",
        );
        assert_serving(&m, &snap, &orig, "an ack with a wrong chunk length");
    }

    // An older job (protocol version 1, format 1 acks only) is welcomed in its own
    // version; a version this mount does not know is refused by a message naming both.
    for (version, welcomed) in [(1u32, true), (proto::VERSION, true), (99, false)] {
        let mut s = connect(&m);
        send(
            &mut s,
            &Msg::Hello {
                version,
                job: "other version".into(),
                pid: std::process::id(),
            },
            &[],
        );
        match answer(&mut s) {
            Some(Msg::Welcome { version: v, .. }) if welcomed => assert_eq!(v, version),
            Some(Msg::Error { message }) if !welcomed => {
                assert!(message.contains("versions 1 to 2"), "{message}")
            }
            other => panic!("a hello of version {version} was answered {other:?}"),
        }
    }

    // 4. Truncated frames and lying length prefixes end their connection only.
    let head = |hlen: u32, plen: u32| {
        let mut b = proto::MAGIC.to_vec();
        b.extend_from_slice(&hlen.to_le_bytes());
        b.extend_from_slice(&plen.to_le_bytes());
        b
    };
    let hello = br#"{"msg":"hello","version":1,"job":"x","pid":1}"#;
    for (what, bytes) in [
        ("a cut head", head(10, 0)[..7].to_vec()),
        ("a cut header", {
            let mut b = head(hello.len() as u32, 0);
            b.extend_from_slice(&hello[..10]);
            b
        }),
        ("a 64 MiB payload on a hello", {
            let mut b = head(hello.len() as u32, 64 << 20);
            b.extend_from_slice(hello);
            b
        }),
        ("a 4 GiB header", head(u32::MAX, 0)),
        ("not a frame", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let mut s = connect(&m);
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The daemon answers with an error or just closes; either way it ends.
        let start = Instant::now();
        while answer(&mut s).is_some() {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        }
        assert_serving(&m, &snap, &orig, what);
    }

    // 5. A thousand connections that each announce a 64 MiB frame and stall.
    let pid = m.daemon_pid.unwrap();
    let before = threads_of(pid);
    let mut stalled = Vec::new();
    for _ in 0..1000 {
        let mut s = UnixStream::connect(m.store.join("run/daemon.sock")).unwrap();
        let _ = s.write_all(&head(1 << 20, 64 << 20));
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = threads_of(pid);
    assert!(
        during <= before + 40,
        "{during} daemon threads with 1000 stalled connections (before: {before})"
    );
    assert_serving(&m, &snap, &orig, "1000 stalled connections");
    drop(stalled);

    // 6. A connection that never says hello is closed after the hello deadline.
    let mut mute = connect(&m);
    let start = Instant::now();
    while let Some(msg) = answer(&mut mute) {
        // Turned away at once if the stalled connections still hold every slot.
        assert!(matches!(msg, Msg::Error { .. }), "{msg:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(19));

    // After all of it, a real backup of another snapshot works and restores exactly.
    fs::create_dir(m.path("snapshots/t")).unwrap();
    let now = read(&m.path("snapshots/t/v.img"));
    let start = Instant::now();
    let out = loop {
        let out = mounted::snarf(&[
            "backup",
            "--repo",
            repo.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
            "t",
        ]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        // Stalled connections are let go as their threads notice; a job may be turned away
        // meanwhile, told why.
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("at most") && start.elapsed() < Duration::from_secs(40),
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("backup "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let dest = m.dir.path().join("restored-t");
    snarf_ok(&[
        "restore",
        repo.to_str().unwrap(),
        &id,
        dest.to_str().unwrap(),
    ]);
    assert!(read(&dest.join("v.img")) == now);
    assert_serving(&m, &snap, &orig, "everything");
}
