//! The backup writer over uploads that finish from a thread of their own: a snarf is
//! acknowledged only once its pack is durable, at most [`IN_FLIGHT`] sealed packs wait for
//! that while the writer goes on, and an upload failing mid-way fails the backup with the
//! backend's error and acknowledges nothing of its pack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::pack::IN_FLIGHT;
use super::tests::opts;
use super::*;
use crate::chain::ErrorChain;
use crate::repo::backend::pipelined::gated::Gated;
use crate::repo::backend::{Backend, Key};

const SNARF: u32 = 4096;
const SNARFS: u64 = 200;

/// Snarf `s`: noise, so every pack of 64 KiB holds about 16 of them.
fn data(s: u64) -> Vec<u8> {
    let mut x = s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..SNARF)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn writer(repo: &Repository) -> (Writer, Slot) {
    let mut new = NewBackup::new("s", serde_json::json!({}));
    new.report_durable = true;
    let w = repo.begin_backup(new).unwrap();
    let slot = w
        .add_volume("v", SNARFS * u64::from(SNARF), SNARF, None)
        .unwrap();
    (w, slot)
}

/// Every acknowledged snarf's pack is finished and visible in the backend.
fn all_durable(g: &Gated, acked: &[Durable]) {
    let finished = g.finished.lock().clone();
    for d in acked {
        let key = Key::Pack(d.chunk.pack);
        assert!(
            finished.contains(&key),
            "snarf {} acknowledged before its pack was durable",
            d.snarf
        );
        assert!(g.inner.size(&key).unwrap().is_some());
    }
}

#[test]
fn snarfs_are_acknowledged_only_once_their_pack_is_durable_and_few_packs_wait_for_that() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(Gated::new(dir.path()));
    let repo = Repository::init(g.clone(), &opts()).unwrap();
    let (w, slot) = writer(&repo);
    g.finish.set(false);
    // Four snarfs a frame, four frames a pack: the first pack is sealed when the 17th
    // snarf is put, the second not before the 33rd.
    let mut s = 0;
    while s < 24 {
        w.put(slot, s, &data(s)).unwrap();
        s += 1;
    }
    // Frames are compressed on other threads and appended at a later put: wait for them,
    // as a job's next batches would (under load the fourth frame was still out).
    w.flush_frames().unwrap();
    Gated::eventually("the first pack is sealed and its finish requested", || {
        g.requested.load(Ordering::SeqCst) == 1
    });
    // Sealed and handed over, not yet durable: nothing of it is acknowledged.
    assert!(w.take_durable().unwrap().is_empty());
    g.finish.set(true);
    let mut acked = Vec::new();
    Gated::eventually("the first pack's snarfs are acknowledged", || {
        acked.extend(w.take_durable().unwrap());
        !acked.is_empty()
    });
    all_durable(&g, &acked);
    assert!(acked.iter().all(|d| d.snarf < s));

    // With the far side stalled the writer goes on while IN_FLIGHT packs wait, and waits
    // when one more is sealed.
    g.finish.set(false);
    let put = AtomicU64::new(s);
    let waiting = || g.requested.load(Ordering::SeqCst) - g.finished.lock().len() as u64;
    let (stalled_at, waited, went_on) = std::thread::scope(|scope| {
        let rest = scope.spawn(|| {
            for s in s..SNARFS {
                w.put(slot, s, &data(s)).unwrap();
                put.store(s + 1, Ordering::SeqCst);
            }
        });
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while waiting() < IN_FLIGHT as u64 + 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let at = put.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let result = (at, waiting(), put.load(Ordering::SeqCst) != at);
        // Opened before any assertion, so a failure cannot leave the writer waiting.
        g.finish.set(true);
        rest.join().unwrap();
        result
    });
    assert_eq!(
        waited,
        IN_FLIGHT as u64 + 1,
        "sealed packs not durable while the writer waits"
    );
    assert!(!went_on, "the writer went on past the bound");
    assert!(stalled_at < SNARFS, "the bound was never reached");
    let (id, last) = w.commit_reporting().unwrap();
    acked.extend(last);
    all_durable(&g, &acked);
    let mut snarfs: Vec<u64> = acked.iter().map(|d| d.snarf).collect();
    snarfs.sort_unstable();
    assert_eq!(snarfs, (0..SNARFS).collect::<Vec<_>>());
    let r = repo.volume_reader(id.as_str(), "v").unwrap();
    for s in 0..SNARFS {
        let mut buf = vec![0u8; SNARF as usize];
        r.read_at(s * u64::from(SNARF), &mut buf).unwrap();
        assert_eq!(buf, data(s), "snarf {s}");
    }
}

#[test]
fn an_upload_failing_midway_fails_the_backup_and_acknowledges_nothing_of_its_pack() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(Gated::new(dir.path()));
    let repo = Repository::init(g.clone(), &opts()).unwrap();
    let (w, slot) = writer(&repo);
    // The first pack (64 KiB and a bit) goes through, the second fails in its middle.
    g.fail_after.store(100 << 10, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failed = None;
    for s in 0..SNARFS {
        if let Err(e) = w
            .put(slot, s, &data(s))
            .and_then(|()| w.take_durable())
            .map(|d| acked.extend(d))
        {
            failed = Some(e);
            break;
        }
        // Let the thread keep up, so the failure is met mid-way, not at the commit.
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = match failed {
        Some(e) => e,
        None => w.commit_reporting().map(|_| ()).unwrap_err(),
    };
    assert!(
        e.chain().to_string().contains("the far disk is on fire"),
        "{}",
        e.chain()
    );
    assert!(!acked.is_empty(), "the first pack was never acknowledged");
    all_durable(&g, &acked);
    assert_eq!(g.finished.lock().len(), 1, "{:?}", g.finished.lock());
    assert!(repo.backup_ids().unwrap().is_empty());
}
