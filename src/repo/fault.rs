//! Fault injection for crash tests. Built with the cargo feature `fault-injection` (the test
//! command `scripts/test.sh` passes it), the environment variable named by [`ENV`] arms a
//! point: the process kills itself with SIGKILL the first time it reaches that point, so a
//! test can stop a backup or prune at every step where a crash could leave a partial state
//! and prove that the next open completes it. Without the feature, [`point`] compiles to
//! nothing and no build reads the variable, so release builds hold no fault points. Unit
//! tests of error paths can also make the I/O step after a point fail once on their own
//! thread ([`fail_once_after`]), e.g. a folder fsync after a rename.

/// The environment variable that arms one fault point (read only with `fault-injection`).
#[cfg(feature = "fault-injection")]
pub const ENV: &str = "SNARF_FAULT_POINT";

/// Every fault point, in roughly the order a backup followed by a prune reaches them.
pub const POINTS: &[&str] = &[
    // Transfer: a pack is sealed (trailer written, fsynced, logged, renamed, dir fsynced).
    "pack.written",
    "pack.synced",
    "pack.logged",
    "pack.renamed",
    // Commit, before finishing: tables fsynced, draft manifest written, finishing record.
    "commit.tables-synced",
    "draft.written",
    "draft.renamed",
    "record.manifest.written",
    "record.manifest.renamed",
    // Finishing of a backup.
    "finish.manifest",
    "finish.manifest.table-moved",
    "manifest.written",
    "manifest.renamed",
    "finish.manifest.tmp-removed",
    "record.index.written",
    "record.index.renamed",
    "finish.index",
    "index.written",
    "index.renamed",
    "compact.written",
    "compact.renamed",
    "compact.removed",
    "record.current.written",
    "record.current.renamed",
    "finish.current",
    "current.written",
    "current.renamed",
    "record.retention.written",
    "record.retention.renamed",
    "finish.retention",
    "record.retention-selected.written",
    "record.retention-selected.renamed",
    "retention.manifest-removed",
    "retention.removed",
    "record.gc.written",
    "record.gc.renamed",
    "finish.gc",
    "gc.index.written",
    "gc.index.renamed",
    "gc.index.removed",
    "gc.pack-removed",
    "record.done.written",
    "record.done.renamed",
    "finish.done",
    "last.written",
    "last.renamed",
    "record.removed",
    // Prune: its record, then the same retention, gc and done steps as above.
    "record.prune.written",
    "record.prune.renamed",
    // Recovery at open: an interrupted finishing marked resumed; an abandoned transfer's
    // sealed packs adopted into the index and its folder removed.
    "record.resumed.written",
    "record.resumed.renamed",
    "adopt.written",
    "adopt.renamed",
    "adopt.tmp-removed",
];

#[cfg(test)]
thread_local! {
    /// A point after which the next I/O step fails, on this thread only (so tests running
    /// side by side in one process do not disturb each other).
    static FAIL_AFTER: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Makes the I/O step that follows point `name` (in `fsx`, the directory fsync after a
/// rename) fail once with EIO on this thread: tests of what a failing disk leaves behind.
#[cfg(test)]
pub fn fail_once_after(name: &'static str) {
    debug_assert!(is_point(name), "fault point {name} is not a fault point");
    FAIL_AFTER.with(|f| f.set(Some(name)));
}

/// The injected error armed by [`fail_once_after`] for `name` on this thread, disarming it.
#[cfg(test)]
pub(crate) fn injected(name: Option<&'static str>) -> std::io::Result<()> {
    let hit = FAIL_AFTER.with(|f| {
        let hit = name.is_some() && f.get() == name;
        if hit {
            f.set(None);
        }
        hit
    });
    if hit {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// No error is ever injected outside unit tests.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn injected(_name: Option<&'static str>) -> std::io::Result<()> {
    Ok(())
}

/// True for a name in [`POINTS`] or [`REPAIR_POINTS`].
fn is_point(name: &str) -> bool {
    POINTS.contains(&name) || REPAIR_POINTS.contains(&name)
}

/// The points `snarf repair index` reaches, apart from a backup's and a prune's: each
/// rebuilt index run written and renamed, the first old run removed, `repo.json` rebuilt.
pub const REPAIR_POINTS: &[&str] = &[
    "repair.run.written",
    "repair.run.renamed",
    "repair.old-removed",
    "repair.config.written",
    "repair.config.renamed",
];

/// The armed point, read once per process.
#[cfg(feature = "fault-injection")]
fn armed() -> Option<&'static str> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Kills the process with SIGKILL if `name` is the armed point (a no-op without the
/// `fault-injection` feature).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(name: &'static str) {
    debug_assert!(is_point(name), "fault point {name} is not a fault point");
}

/// Kills the process with SIGKILL if `name` is the armed point.
#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) {
    debug_assert!(is_point(name), "fault point {name} is not a fault point");
    if armed() == Some(name) {
        log::warn!("fault point {name} reached: killing this process");
        let _ = crate::sys::proc::kill(std::process::id(), crate::sys::proc::Signal::KILL);
        // SIGKILL cannot be caught; this only runs if kill(2) itself failed.
        std::process::abort();
    }
}

/// The environment variable that slows every backup job down (read only with
/// `fault-injection`): milliseconds to sleep before each batch of snarfs the job asks for,
/// so a test can watch, list and kill a job while it runs.
#[cfg(feature = "fault-injection")]
pub const SLOW_ENV: &str = "SNARF_FAULT_SLOW_MS";

/// Sleeps as [`SLOW_ENV`] says before a job asks for its next batch of snarfs.
#[cfg(feature = "fault-injection")]
pub fn slow_batch() {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *MS.get_or_init(|| {
        std::env::var(SLOW_ENV)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    });
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Does nothing: release builds are never slowed.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn slow_batch() {}

/// The environment variable naming a file to which every dynamic point reached is
/// appended, one name a line: the census of a scenario run as its own process.
#[cfg(feature = "fault-injection")]
pub const CENSUS_ENV: &str = "SNARF_FAULT_CENSUS";

/// Kills the process with SIGKILL if `name`, a point the backend decorator numbers as it
/// goes (`create.backups#1`, see `backend::faulty`), is the armed point; records it in the
/// census file first if one is named ([`CENSUS_ENV`]).
#[cfg(feature = "fault-injection")]
pub fn dynamic_point(name: &str) {
    if let Some(path) = std::env::var_os(CENSUS_ENV) {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{name}");
        }
    }
    if armed() == Some(name) {
        log::warn!("fault point {name} reached: killing this process");
        let _ = crate::sys::proc::kill(std::process::id(), crate::sys::proc::Signal::KILL);
        // SIGKILL cannot be caught; this only runs if kill(2) itself failed.
        std::process::abort();
    }
}

/// A pair of points around one durable file replacement: after the data is written but before
/// its fsync, and after the rename but before the directory fsync.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilePoints {
    /// Reached after write, before fsync.
    pub written: Option<&'static str>,
    /// Reached after rename, before the directory fsync.
    pub renamed: Option<&'static str>,
}

impl FilePoints {
    /// No fault points.
    pub const NONE: FilePoints = FilePoints {
        written: None,
        renamed: None,
    };

    /// Points `PREFIX.written` and `PREFIX.renamed`; both must be in [`POINTS`].
    pub const fn pair(written: &'static str, renamed: &'static str) -> FilePoints {
        FilePoints {
            written: Some(written),
            renamed: Some(renamed),
        }
    }

    /// Reaches the "written" point.
    pub fn written(&self) {
        if let Some(p) = self.written {
            point(p);
        }
    }

    /// Reaches the "renamed" point.
    pub fn renamed(&self) {
        if let Some(p) = self.renamed {
            point(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_are_unique() {
        let mut names: Vec<&str> = POINTS.iter().chain(REPAIR_POINTS).copied().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len() + REPAIR_POINTS.len());
    }

    #[test]
    #[cfg(feature = "fault-injection")]
    fn unarmed_points_do_nothing() {
        for p in POINTS {
            if armed() != Some(p) {
                point(p);
            }
        }
    }
}
