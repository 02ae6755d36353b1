//! Runs power-cut cases on a few worker threads and keeps the tally: every cut checked is a
//! power-cut point that passed or failed with its reason; a case may also report which
//! fault points it reached, so the suite can prove it covered all of them.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// What one case found.
#[derive(Default)]
pub struct Found {
    /// (cut name, Ok or what was wrong) for every cut checked.
    pub cuts: Vec<(String, Result<(), String>)>,
    /// Fault points the case's process was killed at.
    pub reached: Vec<&'static str>,
    /// Cases to run next (say, the checks of cuts this case took), so they spread over the
    /// workers.
    pub more: Vec<(String, Case)>,
    /// Torn cuts checked, and how many of them kept some change a strict cut loses.
    pub torn: (usize, usize),
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
    /// Torn cuts checked, and how many kept some change a strict cut loses.
    pub torn: (usize, usize),
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
        // Rounded down, so one failure never shows as 100%.
        let pct = (passed * 100).checked_div(n).unwrap_or(0);
        format!("power-cut points: {n}, passed: {passed} ({pct}%)")
    }
}

/// The work left: queued cases and how many are running (they may queue more).
struct Work {
    queue: VecDeque<(String, Case)>,
    running: usize,
    next_dir: usize,
}

/// Runs `cases` on `threads` workers; a case that panics counts as one failed cut.
pub fn run(cases: Vec<(String, Case)>, threads: usize, scratch: &Path) -> Tally {
    let work = Arc::new((
        Mutex::new(Work {
            queue: cases.into_iter().collect(),
            running: 0,
            next_dir: 0,
        }),
        Condvar::new(),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let work = work.clone();
            let tally = tally.clone();
            let scratch: PathBuf = scratch.to_path_buf();
            std::thread::spawn(move || loop {
                let (name, case, n) = {
                    let (lock, cv) = &*work;
                    let mut w = lock.lock();
                    loop {
                        if let Some((name, case)) = w.queue.pop_front() {
                            w.running += 1;
                            w.next_dir += 1;
                            break (name, case, w.next_dir);
                        }
                        if w.running == 0 {
                            return;
                        }
                        cv.wait(&mut w);
                    }
                };
                let dir = scratch.join(format!("case{n}"));
                let found = match std::fs::create_dir_all(&dir) {
                    Ok(()) => catch_unwind(AssertUnwindSafe(|| case(&dir))),
                    Err(e) => Ok(Found {
                        cuts: vec![(name.clone(), Err(format!("scratch folder: {e}")))],
                        ..Found::default()
                    }),
                };
                let _ = std::fs::remove_dir_all(&dir);
                let more = {
                    let mut t = tally.lock();
                    match found {
                        Ok(f) => {
                            t.cuts.extend(f.cuts);
                            t.reached.extend(f.reached);
                            t.torn.0 += f.torn.0;
                            t.torn.1 += f.torn.1;
                            f.more
                        }
                        Err(p) => {
                            t.cuts
                                .push((name, Err(format!("case panicked: {}", panic_text(&p)))));
                            Vec::new()
                        }
                    }
                };
                let (lock, cv) = &*work;
                let mut w = lock.lock();
                w.running -= 1;
                // Follow-ups first: they finish what is already under way.
                for c in more.into_iter().rev() {
                    w.queue.push_front(c);
                }
                cv.notify_all();
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

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs `f`, turning a panic into an error (the shared helpers panic on failure).
pub fn checked<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(panic_text(&p)),
    }
}
