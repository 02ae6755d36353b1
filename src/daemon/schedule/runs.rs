//! What the scheduler remembers of each schedule line across mounts, in
//! `STORE/state/schedule-runs.json` (replaced durably at every change): when the line was
//! first seen, up to when its due times are dealt with, its last run and that run's result,
//! the run still going (its job and the snapshot taken for it). Lines are keyed by their
//! text, so editing one line keeps the history of the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::durable;

/// The file's name under `STORE/state/`.
pub const FILE: &str = "schedule-runs.json";

/// Prefix of the snapshots the scheduler takes; only such names are ever released from
/// what this file says, so a damaged file cannot make the daemon release a user's snapshot.
pub const SNAPSHOT_PREFIX: &str = "cron-";

/// The run of a line that has not been seen to end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The job's id in control/jobs (empty while it is being started).
    pub job: String,
    /// The snapshot taken for it, to release when it ends.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Whether it runs for due times missed (the daemon was down at them).
    #[serde(default)]
    pub caught_up: bool,
}

/// What is remembered of one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRuns {
    /// When the line was first seen (its due times before this are not its own).
    pub seen: u64,
    /// Due times up to this instant are dealt with (run, skipped or caught up).
    #[serde(default)]
    pub handled_until: Option<u64>,
    /// When its last run started.
    #[serde(default)]
    pub last_run: Option<u64>,
    /// How its last run went.
    #[serde(default)]
    pub result: String,
    /// Its run still going, if any.
    #[serde(default)]
    pub running: Option<Running>,
    /// Due times skipped because the last run was still going.
    #[serde(default)]
    pub skipped: u64,
    /// When the last of those was.
    #[serde(default)]
    pub last_skipped: Option<u64>,
}

/// Every line's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs {
    /// Records by line text.
    pub lines: BTreeMap<String, LineRuns>,
}

/// The path of the file in a store.
pub fn path(store_root: &Path) -> PathBuf {
    store_root.join("state").join(FILE)
}

impl Runs {
    /// Reads the records; none if the file is missing. A damaged file is reported and
    /// read as none, so every line counts as new: nothing runs twice for it, a missed
    /// time is just not caught up.
    pub fn load(path: &Path) -> (Runs, Option<String>) {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Runs::default(), None),
            Err(e) => {
                return (
                    Runs::default(),
                    Some(format!("cannot read {}: {e}", path.display())),
                )
            }
        };
        match serde_json::from_slice::<Runs>(&text) {
            Ok(mut runs) => {
                // A snapshot name that is not one the scheduler makes is not acted on.
                for r in runs.lines.values_mut() {
                    if let Some(run) = r.running.as_mut() {
                        if run.snapshot.as_deref().is_some_and(|s| !is_ours(s)) {
                            run.snapshot = None;
                        }
                    }
                }
                (runs, None)
            }
            Err(e) => (
                Runs::default(),
                Some(format!(
                    "{} is damaged ({e}); the schedule's run history starts afresh",
                    path.display()
                )),
            ),
        }
    }

    /// Writes the records durably.
    pub fn save(&self, path: &Path) -> crate::sys::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        durable::replace(path, &text, durable::PRIVATE)
    }
}

/// Whether `name` is a valid snapshot name of the kind the scheduler takes.
pub fn is_ours(name: &str) -> bool {
    name.starts_with(SNAPSHOT_PREFIX) && crate::store::validate_name("snapshot", name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        assert_eq!(Runs::load(&p), (Runs::default(), None));
        let mut runs = Runs::default();
        runs.lines.insert(
            "@daily backup snapshot=auto".into(),
            LineRuns {
                seen: 5,
                handled_until: Some(7),
                running: Some(Running {
                    job: "1-1".into(),
                    snapshot: Some("cron-x".into()),
                    caught_up: true,
                }),
                ..Default::default()
            },
        );
        runs.save(&p).unwrap();
        assert_eq!(Runs::load(&p), (runs.clone(), None));
        std::fs::write(&p, b"{\"lines\": {\"x\": {\"seen\": \"no\"}}").unwrap();
        let (r, why) = Runs::load(&p);
        assert_eq!(r, Runs::default());
        assert!(why.unwrap().contains("damaged"));
        // A snapshot name the scheduler never takes is dropped, never released.
        let mut hostile = runs.clone();
        for name in ["nightly", "cron-../x", "cron-a/b"] {
            hostile.lines.values_mut().next().unwrap().running = Some(Running {
                job: "1-1".into(),
                snapshot: Some(name.into()),
                caught_up: false,
            });
            hostile.save(&p).unwrap();
            let (r, _) = Runs::load(&p);
            let run = r.lines.values().next().unwrap().running.clone().unwrap();
            assert_eq!(run.snapshot, None, "{name}");
        }
    }
}
