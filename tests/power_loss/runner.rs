//! Runs power-cut cases on a few worker threads and keeps the tally: every cut checked is a
//! power-cut point that passed or failed with its reason; a case may also report which
//! fault points it reached, so the suite can prove it covered all of them.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// What one case found.
#[derive(Default)]
pub struct Found {
    /// (cut name, Ok or what was wrong) for every cut checked.
    pub cuts: Vec<(String, Result<(), String>)>,
    /// Fault points the case's process was killed at.
    pub reached: Vec<&'static str>,
}

impl Found {
    /// Records the check of one cut.
    pub fn cut(&mut self, name: String, result: Result<(), String>) {
        self.cuts.push((name, result));
    }
}

/// A case: runs in a worker thread with a scratch folder of its own.
pub type Case = Box<dyn FnOnce(&Path) -> Found + Send>;

/// Everything the cases found.
#[derive(Default)]
pub struct Tally {
    /// Every cut checked.
    pub cuts: Vec<(String, Result<(), String>)>,
    /// Every fault point some case reached.
    pub reached: BTreeSet<&'static str>,
}

impl Tally {
    /// Cuts that failed.
    pub fn failures(&self) -> Vec<&(String, Result<(), String>)> {
        self.cuts.iter().filter(|(_, r)| r.is_err()).collect()
    }

    /// "power-cut points: N, passed: M (P%)".
    pub fn summary(&self) -> String {
        let n = self.cuts.len();
        let passed = n - self.failures().len();
        let pct = if n == 0 {
            0.0
        } else {
            passed as f64 * 100.0 / n as f64
        };
        format!("power-cut points: {n}, passed: {passed} ({pct:.0}%)")
    }
}

/// Runs `cases` on `threads` workers; a case that panics counts as one failed cut.
pub fn run(cases: Vec<(String, Case)>, threads: usize, scratch: &Path) -> Tally {
    let queue: Arc<Mutex<VecDeque<(usize, String, Case)>>> = Arc::new(Mutex::new(
        cases
            .into_iter()
            .enumerate()
            .map(|(i, (n, c))| (i, n, c))
            .collect(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let queue = queue.clone();
            let tally = tally.clone();
            let scratch: PathBuf = scratch.to_path_buf();
            std::thread::spawn(move || loop {
                let Some((i, name, case)) = queue.lock().pop_front() else {
                    return;
                };
                let dir = scratch.join(format!("case{i}"));
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tally
                        .lock()
                        .cuts
                        .push((name, Err(format!("scratch folder: {e}"))));
                    continue;
                }
                let found = catch_unwind(AssertUnwindSafe(|| case(&dir)));
                let _ = std::fs::remove_dir_all(&dir);
                let mut t = tally.lock();
                match found {
                    Ok(f) => {
                        t.cuts.extend(f.cuts);
                        t.reached.extend(f.reached);
                    }
                    Err(p) => {
                        let why = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".into());
                        t.cuts.push((name, Err(format!("case panicked: {why}"))));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Arc::try_unwrap(tally)
        .map(|m| m.into_inner())
        .unwrap_or_default()
}

/// Runs `f`, turning a panic into an error (the shared helpers panic on failure).
pub fn checked<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}
