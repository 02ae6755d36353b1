//! Randomized model test of the engine against the oracle of `oracle.rs`: plain in-memory
//! copies of every volume, and of every volume at every snapshot. Random unaligned writes
//! crossing snarfs, takes, releases, reads, resizes, renames, deletes and backup
//! acknowledgements, with tiny budgets that force spilling and breaking. Any mismatch fails with the seed, which
//! replays with `SNARF_MODEL_SEED=<seed> cargo test model_`.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::oracle::{expected, Oracle};
use super::*;
use crate::store::{InitOptions, Store, VolumeId};

const SNARF: u64 = 4096;

struct Model {
    rng: ChaCha8Rng,
    seed: u64,
    engine: Engine,
    /// What the engine should show.
    oracle: Oracle,
    next_vol: u64,
    next_snap: u64,
    /// Engine volume id for each oracle volume id.
    ids: BTreeMap<u64, VolumeId>,
    /// Most spill space seen in use, to prove spilling was exercised.
    peak_disk: u64,
    /// Captures announced to the capture watcher since the last write was checked.
    captures: Arc<parking_lot::Mutex<Vec<Capture>>>,
    _dir: tempfile::TempDir,
}

fn engine_with(
    dir: &std::path::Path,
    mem_snarfs: u64,
    disk_snarfs: u64,
    break_after: f64,
) -> Engine {
    let root = dir.join("store");
    let opts = InitOptions {
        snarf_size: SNARF,
        budgets: Budgets {
            memory: mem_snarfs * SNARF,
            disk: disk_snarfs * SNARF,
            break_after_secs: break_after,
        },
        repository: None,
        // The volatile tier is what these tests are about.
        snapshots: crate::store::Durability::Volatile,
    };
    Store::init(&root, &opts).unwrap();
    let store = Store::open(&root, "model test").unwrap();
    let mut eo = EngineOptions::from_store(&store);
    eo.pace_from = 1.0;
    Engine::new(store, eo).unwrap()
}

impl Model {
    fn new(seed: u64, mem_snarfs: u64, disk_snarfs: u64) -> Model {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_with(dir.path(), mem_snarfs, disk_snarfs, 0.0);
        let captures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = captures.clone();
        engine.watch_captures(Arc::new(move |c: &Capture| log.lock().push(*c)));
        Model {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            engine,
            oracle: Oracle::default(),
            next_vol: 0,
            next_snap: 0,
            ids: BTreeMap::new(),
            peak_disk: 0,
            captures,
            _dir: dir,
        }
    }

    fn fail(&self, step: usize, what: String) -> ! {
        panic!("model mismatch with seed {} at step {step}: {what}\nreplay: SNARF_MODEL_SEED={} cargo test model_", self.seed, self.seed)
    }

    fn pick_live(&mut self) -> Option<String> {
        if self.oracle.live.is_empty() {
            return None;
        }
        let n = self.rng.random_range(0..self.oracle.live.len());
        self.oracle.live.keys().nth(n).cloned()
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        match self.rng.random_range(0..4) {
            0 => {} // zeros: exercises zero pre-images
            1 => v.fill(self.rng.random()),
            _ => self.rng.fill(&mut v[..]),
        }
        v
    }

    fn step(&mut self, step: usize) {
        let op = self.rng.random_range(0..100);
        match op {
            0..=34 => self.op_write(step),
            35..=39 => self.op_create(step),
            40..=47 => self.op_take(step),
            48..=52 => self.op_release(step),
            53..=69 => self.op_read_snapshot(step),
            70..=74 => self.op_read_live(step),
            75..=80 => self.op_resize(step),
            81..=83 => self.op_rename(step),
            84..=85 => self.op_delete(step),
            86..=91 => self.op_ack(step),
            92..=96 => self.op_changed(step),
            _ => self.op_verify_all(step),
        }
        self.peak_disk = self.peak_disk.max(self.engine.stats().cache.disk_used);
    }

    fn op_create(&mut self, step: usize) {
        if self.oracle.live.len() >= 4 {
            return;
        }
        let name = format!("v{}", self.next_vol);
        self.next_vol += 1;
        let size = self.rng.random_range(0..12 * SNARF);
        let vol = self
            .engine
            .create_volume(&name, size)
            .unwrap_or_else(|e| self.fail(step, format!("create {name}: {e}")));
        let id = self.oracle.create(&name, size);
        self.ids.insert(id, vol.id());
    }

    fn op_write(&mut self, step: usize) {
        let Some(name) = self.pick_live() else {
            return self.op_create(step);
        };
        let size = self.oracle.live[&name].data.len() as u64;
        let len = self.rng.random_range(1..3 * SNARF + 100) as usize;
        let offset = if self.rng.random_ratio(1, 10) || size == 0 {
            size + self.rng.random_range(0..2 * SNARF) // extending, maybe with a gap
        } else {
            self.rng.random_range(0..size)
        };
        let data = self.random_bytes(len);
        let vol = self.engine.volume(&name).unwrap();
        let held_before = self.held_by_live_snapshots(vol.id());
        self.captures.lock().clear();
        if let Err(e) = self.engine.write(&vol, offset, &data) {
            self.fail(step, format!("write {name} @{offset}+{len}: {e}"));
        }
        self.check_captures_announced(step, vol.id(), &held_before);
        self.oracle.write(&name, offset, &data);
    }

    fn op_take(&mut self, step: usize) {
        if self.oracle.snaps.len() >= 5 {
            return self.op_release(step);
        }
        let name = format!("s{}", self.next_snap);
        self.next_snap += 1;
        if let Err(e) = self.engine.take(&name) {
            self.fail(step, format!("take {name}: {e}"));
        }
        self.oracle.take(&name);
    }

    fn op_release(&mut self, step: usize) {
        if self.oracle.snaps.is_empty() {
            return;
        }
        let n = self.rng.random_range(0..self.oracle.snaps.len());
        let s = self.oracle.release_at(n);
        if let Err(e) = self.engine.release(&s.name) {
            self.fail(step, format!("release {}: {e}", s.name));
        }
    }

    /// For each live snapshot: the snarfs of volume `vol` holding a pre-image it sees.
    fn held_by_live_snapshots(&self, vol: VolumeId) -> Vec<(String, u64, Vec<u64>)> {
        self.engine
            .list()
            .into_iter()
            .filter(|i| i.state == SnapState::Live)
            .filter_map(|i| self.engine.snapshot(&i.name).ok())
            .map(|s| {
                let held = self.engine.held_snarfs(&s, vol);
                (
                    s.name().to_string(),
                    s.epoch(),
                    held.into_iter().map(|(i, _)| i).collect(),
                )
            })
            .collect()
    }

    /// Every pre-image a write added for a live snapshot was announced to the capture
    /// watchers, with the right epochs and location; every announced one was kept.
    fn check_captures_announced(
        &mut self,
        step: usize,
        vol: VolumeId,
        before: &[(String, u64, Vec<u64>)],
    ) {
        let log = std::mem::take(&mut *self.captures.lock());
        if self.engine.stats().broken > 0 {
            // A break during the write frees pre-images that were announced.
            return;
        }
        for c in &log {
            if c.volume != vol {
                self.fail(step, format!("capture announced for another volume: {c:?}"));
            }
        }
        for (name, epoch, held) in self.held_by_live_snapshots(vol) {
            let old: &[u64] = before
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or(&[], |(_, _, h)| h.as_slice());
            let snap = self.engine.snapshot(&name).unwrap();
            for i in held.iter().filter(|i| !old.contains(i)) {
                let Some(c) = log.iter().find(|c| c.snarf == *i && c.covers(epoch)) else {
                    self.fail(
                        step,
                        format!(
                            "pre-image of snarf {i} for snapshot {name} was kept but not announced"
                        ),
                    );
                };
                if self.engine.preimage_location(&snap, vol, *i) != Some(c.location) {
                    self.fail(
                        step,
                        format!("capture of snarf {i} announced at {:?}", c.location),
                    );
                }
            }
            for c in log.iter().filter(|c| c.covers(epoch)) {
                if snap.needs(vol, c.snarf) && !held.contains(&c.snarf) {
                    self.fail(
                        step,
                        format!("announced capture {c:?} is not held for snapshot {name}"),
                    );
                }
            }
        }
    }

    /// Picks up snapshots the engine broke (it may, with tiny budgets).
    fn sync_broken(&mut self) {
        for info in self.engine.list() {
            if let SnapState::Broken(_) = info.state {
                if let Some(s) = self.oracle.snaps.iter_mut().find(|s| s.name == info.name) {
                    s.broken = true;
                }
            }
        }
    }

    fn check_snapshot_range(
        &mut self,
        step: usize,
        si: usize,
        vname: &str,
        offset: u64,
        len: usize,
    ) {
        self.sync_broken();
        let s = &self.oracle.snaps[si];
        let snap = self.engine.snapshot(&s.name).unwrap();
        let mut buf = vec![0xAAu8; len];
        let got = self.engine.read_snapshot(&snap, vname, offset, &mut buf);
        let ov = &s.volumes[vname];
        let want = expected(&ov.data, offset, len);
        if s.broken {
            if !matches!(got, Err(Error::Broken { .. })) {
                self.fail(
                    step,
                    format!("broken snapshot {} read gave {:?}", s.name, got.map(|_| ())),
                );
            }
            return;
        }
        match got {
            Ok(0) if want.is_empty() => {}
            Ok(n) if n == want.len() => {
                if &buf[..n] != want {
                    let first = buf[..n]
                        .iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    self.fail(
                        step,
                        format!(
                            "snapshot {} volume {vname} differs at byte {} (snarf {})",
                            s.name,
                            offset as usize + first,
                            (offset as usize + first) as u64 / SNARF
                        ),
                    );
                }
            }
            Ok(n) => self.fail(
                step,
                format!(
                    "snapshot {} {vname} @{offset}: read {n} bytes, want {}",
                    s.name,
                    want.len()
                ),
            ),
            Err(Error::StoredInBackup { snarf, .. }) => {
                if !s.acked.contains(&(ov.id, snarf)) {
                    self.fail(
                        step,
                        format!(
                            "snapshot {} {vname}: snarf {snarf} claimed stored but never acked",
                            s.name
                        ),
                    );
                }
            }
            Err(e) => self.fail(
                step,
                format!("snapshot {} {vname} @{offset}+{len}: {e}", s.name),
            ),
        }
    }

    fn op_read_snapshot(&mut self, step: usize) {
        if self.oracle.snaps.is_empty() {
            return;
        }
        let si = self.rng.random_range(0..self.oracle.snaps.len());
        let vols: Vec<String> = self.oracle.snaps[si].volumes.keys().cloned().collect();
        if vols.is_empty() {
            return;
        }
        let vname = vols[self.rng.random_range(0..vols.len())].clone();
        let size = self.oracle.snaps[si].volumes[&vname].data.len() as u64;
        let offset = self.rng.random_range(0..size + 10);
        let len = self.rng.random_range(1..3 * SNARF as usize + 50);
        self.check_snapshot_range(step, si, &vname, offset, len);
    }

    fn op_verify_all(&mut self, step: usize) {
        for si in 0..self.oracle.snaps.len() {
            let vols: Vec<(String, usize)> = self.oracle.snaps[si]
                .volumes
                .iter()
                .map(|(n, v)| (n.clone(), v.data.len()))
                .collect();
            for (vname, size) in vols {
                if self.oracle.snaps[si].acked.iter().any(|_| true) {
                    // Snarf by snarf, so acked snarfs are told apart from the rest.
                    let mut off = 0;
                    while off < size {
                        self.check_snapshot_range(step, si, &vname, off as u64, SNARF as usize);
                        off += SNARF as usize;
                    }
                } else {
                    self.check_snapshot_range(step, si, &vname, 0, size + 1);
                }
            }
        }
        for name in self.oracle.live.keys().cloned().collect::<Vec<_>>() {
            self.check_live(step, &name, 0, self.oracle.live[&name].data.len() + 1);
        }
    }

    fn check_live(&mut self, step: usize, name: &str, offset: u64, len: usize) {
        let vol = self.engine.volume(name).unwrap();
        let mut buf = vec![0u8; len];
        let n = self
            .engine
            .read(&vol, offset, &mut buf)
            .unwrap_or_else(|e| self.fail(step, format!("live read {name}: {e}")));
        let data = &self.oracle.live[name].data;
        if buf[..n] != *expected(data, offset, len) {
            self.fail(step, format!("live volume {name} differs @{offset}+{len}"));
        }
        if vol.size() != data.len() as u64 {
            self.fail(
                step,
                format!("live volume {name} size {} want {}", vol.size(), data.len()),
            );
        }
    }

    fn op_read_live(&mut self, step: usize) {
        let Some(name) = self.pick_live() else { return };
        let size = self.oracle.live[&name].data.len() as u64;
        let offset = self.rng.random_range(0..size + 10);
        let len = self.rng.random_range(1..3 * SNARF as usize);
        self.check_live(step, &name, offset, len);
    }

    fn op_resize(&mut self, step: usize) {
        let Some(name) = self.pick_live() else { return };
        let size = self.oracle.live[&name].data.len() as u64;
        let new_size = match self.rng.random_range(0..3) {
            0 => self.rng.random_range(0..size + 1),
            1 => size + self.rng.random_range(0..4 * SNARF),
            _ => self.rng.random_range(0..14 * SNARF),
        };
        let vol = self.engine.volume(&name).unwrap();
        if let Err(e) = self.engine.resize(&vol, new_size) {
            self.fail(step, format!("resize {name} to {new_size}: {e}"));
        }
        self.oracle.resize(&name, new_size);
    }

    fn op_rename(&mut self, step: usize) {
        let Some(from) = self.pick_live() else { return };
        let to = if self.rng.random_bool(0.3) {
            self.pick_live().unwrap_or_else(|| "r".into())
        } else {
            let n = format!("v{}", self.next_vol);
            self.next_vol += 1;
            n
        };
        if let Err(e) = self.engine.rename_volume(&from, &to) {
            self.fail(step, format!("rename {from} to {to}: {e}"));
        }
        self.oracle.rename(&from, &to);
    }

    fn op_delete(&mut self, step: usize) {
        let Some(name) = self.pick_live() else { return };
        if let Err(e) = self.engine.delete_volume(&name) {
            self.fail(step, format!("delete {name}: {e}"));
        }
        self.oracle.delete(&name);
    }

    fn op_ack(&mut self, _step: usize) {
        if self.oracle.snaps.is_empty() {
            return;
        }
        let si = self.rng.random_range(0..self.oracle.snaps.len());
        let vols: Vec<(String, u64, usize)> = self.oracle.snaps[si]
            .volumes
            .iter()
            .map(|(n, v)| (n.clone(), v.id, v.data.len()))
            .collect();
        if vols.is_empty() {
            return;
        }
        let (_, oid, size) = vols[self.rng.random_range(0..vols.len())].clone();
        let count = (size as u64).div_ceil(SNARF);
        if count == 0 {
            return;
        }
        let index = self.rng.random_range(0..count);
        let snap = self.engine.snapshot(&self.oracle.snaps[si].name).unwrap();
        self.engine
            .release_snarf(&snap, self.ids[&oid], index)
            .unwrap();
        self.oracle.snaps[si].acked.push((oid, index));
    }

    /// Every snarf whose contents differ between an older and a newer snapshot must be
    /// reported changed (no false negatives).
    fn op_changed(&mut self, step: usize) {
        self.sync_broken();
        if self.oracle.snaps.len() < 2 {
            return;
        }
        let a = self.rng.random_range(0..self.oracle.snaps.len() - 1);
        let b = self.rng.random_range(a + 1..self.oracle.snaps.len());
        if self.oracle.snaps[b].broken {
            return;
        }
        let since = self
            .engine
            .snapshot(&self.oracle.snaps[a].name)
            .unwrap()
            .epoch();
        let snap_b = self.engine.snapshot(&self.oracle.snaps[b].name).unwrap();
        for (vname, vb) in &self.oracle.snaps[b].volumes {
            let Some(va) = self.oracle.snaps[a]
                .volumes
                .values()
                .find(|v| v.id == vb.id)
            else {
                continue;
            };
            let changed = match self.engine.changed_snarfs(&snap_b, vname, since) {
                Ok(Changed::Snarfs(set)) => set,
                Ok(Changed::Lost { reason }) => {
                    self.fail(step, format!("tracking lost within a session: {reason}"))
                }
                Err(e) => self.fail(step, format!("changed_snarfs: {e}")),
            };
            let common = va.data.len().min(vb.data.len());
            let mut i = 0;
            while (i * SNARF as usize) < common {
                let lo = i * SNARF as usize;
                let hi = ((i + 1) * SNARF as usize).min(common);
                // Only the part both sizes cover; size changes are the job layer's to handle.
                let full = (i + 1) * SNARF as usize <= common;
                if full && va.data[lo..hi] != vb.data[lo..hi] && !changed.contains(i as u64) {
                    self.fail(
                        step,
                        format!(
                            "snarf {i} of {vname} differs between {} and {} but is not reported changed",
                            self.oracle.snaps[a].name, self.oracle.snaps[b].name
                        ),
                    );
                }
                i += 1;
            }
        }
    }
}

fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SNARF_MODEL_SEED") {
        return vec![s.parse().expect("SNARF_MODEL_SEED must be a number")];
    }
    let count = std::env::var("SNARF_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_count);
    (1..=count).collect()
}

/// Runs the model over many seeds; returns (snapshots broken, peak spill bytes) summed.
fn run_model(seed_base: u64, steps: usize, mem: u64, disk: u64) -> (u64, u64) {
    let mut totals = (0, 0);
    for seed in seeds(24) {
        let seed = seed_base + seed;
        let mut m = Model::new(seed, mem, disk);
        for step in 0..steps {
            m.step(step);
        }
        m.op_verify_all(steps);
        let names: Vec<String> = m.oracle.snaps.iter().map(|s| s.name.clone()).collect();
        for n in names {
            m.engine.release(&n).unwrap();
        }
        let stats = m.engine.stats();
        totals.0 += stats.broken;
        totals.1 += m.peak_disk;
        assert_eq!(
            stats.cache.held, 0,
            "seed {seed}: pre-images left after releasing every snapshot"
        );
        assert_eq!(stats.cache.mem_used, 0, "seed {seed}: memory left in use");
        assert_eq!(stats.cache.disk_used, 0, "seed {seed}: spill left in use");
    }
    totals
}

#[test]
fn model_roomy_budgets_never_break() {
    let (broken, _) = run_model(1000, 1500, 64, 256);
    assert_eq!(broken, 0, "roomy budgets should never break a snapshot");
}

#[test]
fn model_tiny_budgets_spill_and_break() {
    let (broken, spilled) = run_model(2000, 1500, 2, 6);
    if std::env::var("SNARF_MODEL_SEED").is_err() {
        assert!(
            broken > 0 && spilled > 0,
            "tiny budgets must spill and break (broken {broken}, spilled {spilled})"
        );
    }
}

#[test]
fn model_memory_only_budget() {
    run_model(3000, 800, 8, 0);
}

#[test]
fn model_spill_only_budget() {
    let (_, spilled) = run_model(4000, 800, 0, 12);
    assert!(spilled > 0, "nothing was spilled");
}

/// Without any reader, writers held up by full budgets break a snapshot and go on.
#[test]
fn break_after_limit_lets_writer_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), 1, 1, 0.2);
    let vol = engine.create_volume("v", 8 * SNARF).unwrap();
    engine
        .write(&vol, 0, &vec![1u8; 8 * SNARF as usize])
        .unwrap();
    engine.take("a").unwrap();
    let start = std::time::Instant::now();
    engine
        .write(&vol, 0, &vec![2u8; 8 * SNARF as usize])
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "the writer did not wait"
    );
    match engine.snapshot("a").unwrap().state() {
        SnapState::Broken(reason) => assert!(reason.contains("waited"), "{reason}"),
        s => panic!("snapshot not broken: {s:?}"),
    }
    let snap = engine.snapshot("a").unwrap();
    let e = engine
        .read_snapshot(&snap, "v", 0, &mut [0u8; 10])
        .unwrap_err();
    assert!(e.to_string().contains("broken"), "{e}");
    assert_eq!(engine.stats().broken, 1);
}
