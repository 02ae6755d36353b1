//! The records the read side of the control files shows, as plain structs the layers above
//! fill in, and their renderers: aligned text for `control/NAME` (see [`super::table`]) and
//! JSON for `control/NAME.json`. Text shows human sizes and times; JSON keeps exact numbers
//! (bytes, bytes per second, seconds since the Unix epoch).
//!
//! In every text table the one column that may hold spaces comes last, so
//! `awk '{print $1, $4}'` picks the same columns on every line.

use serde::{Deserialize, Serialize};

use super::table::{rate, size, time, Table};
use crate::jobs::JobState;
use crate::pids::{Entry, ProcState, ProcType};

/// One line of `control/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    /// Job id, as `cancel` takes it.
    pub id: String,
    /// What the job does, e.g. `backup`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Process running it, if it has one yet.
    pub pid: Option<u32>,
    /// Where it is in its life.
    pub state: JobState,
    /// Why it failed or was cancelled; empty otherwise.
    pub reason: String,
    /// Bytes transferred so far.
    pub done_bytes: u64,
    /// Bytes to transfer in all, once known.
    pub total_bytes: Option<u64>,
    /// Recent transfer rate, once measured.
    pub rate_bytes_per_sec: Option<u64>,
    /// Start time, seconds since the Unix epoch; `None` while queued.
    pub started: Option<u64>,
    /// Snapshot being backed up.
    pub snapshot: String,
    /// Repository path.
    pub repository: String,
}

/// One line of `control/pids`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRow {
    /// Process id.
    pub pid: u32,
    /// Process type.
    #[serde(rename = "type")]
    pub kind: ProcType,
    /// What it is doing.
    pub state: ProcState,
    /// When it registered, seconds since the Unix epoch.
    pub started: u64,
    /// Job id or description; may be empty.
    pub job: String,
    /// Repository path; may be empty.
    pub repository: String,
    /// The other host of a job over ssh: who started a `remote` job, where an `sshpipe`
    /// job runs; empty for local jobs.
    #[serde(default)]
    pub host: String,
    /// Command line, one element per argument.
    pub cmdline: Vec<String>,
}

impl From<&Entry> for PidRow {
    fn from(e: &Entry) -> PidRow {
        PidRow {
            pid: e.pid,
            kind: e.kind,
            state: e.state,
            started: e.registered,
            job: e.job.clone(),
            repository: e.repo.clone(),
            host: e.host.clone(),
            cmdline: e.cmdline.clone(),
        }
    }
}

/// Whether a repository is committing a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishingState {
    /// Nothing being committed.
    Idle,
    /// A commit (of a backup, or a prune) is under way in a live process.
    Finishing,
    /// A commit was cut off (crash, kill); the next open of the repository completes it.
    Interrupted,
    /// The repository could not be read (see the note).
    Error,
}

impl FinishingState {
    /// The lowercase word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishingState::Idle => "idle",
            FinishingState::Finishing => "finishing",
            FinishingState::Interrupted => "interrupted",
            FinishingState::Error => "error",
        }
    }
}

/// One line of `control/finishing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishingRow {
    /// Repository path.
    pub repository: String,
    /// Idle or finishing.
    pub state: FinishingState,
    /// The backup being committed; empty when idle.
    pub backup_id: String,
    /// Number of the current finishing step, from 1.
    pub step: Option<u32>,
    /// Name of the current step, e.g. `merge-index`.
    pub step_name: String,
    /// When finishing started, seconds since the Unix epoch.
    pub started: Option<u64>,
    /// Whether this finishing was resumed after a crash or kill.
    pub resumed: bool,
    /// What is being finished ("backup" or "prune"), or why the repository is unreadable.
    #[serde(default)]
    pub note: String,
}

impl FinishingRow {
    /// The row for a repository from its finishing status.
    pub fn from_status(repository: &str, status: &crate::repo::FinishingStatus) -> FinishingRow {
        use crate::repo::FinishingStatus;
        match status {
            FinishingStatus::Idle(_) => FinishingRow {
                repository: repository.to_string(),
                state: FinishingState::Idle,
                backup_id: String::new(),
                step: None,
                step_name: String::new(),
                started: None,
                resumed: false,
                note: String::new(),
            },
            FinishingStatus::Upkeep {
                gc_pending,
                unadopted_packs,
            } => FinishingRow {
                repository: repository.to_string(),
                // A cut-short gc is work a cut left, like an interrupted finishing; packs
                // waiting to be adopted are not (gc or the next backup handles them).
                state: if *gc_pending {
                    FinishingState::Interrupted
                } else {
                    FinishingState::Idle
                },
                backup_id: String::new(),
                step: None,
                step_name: String::new(),
                started: None,
                resumed: false,
                note: crate::repo::report::upkeep_note(*gc_pending, *unadopted_packs),
            },
            FinishingStatus::Active {
                kind,
                backup,
                step,
                step_name,
                started,
                resumed,
                holder,
            } => FinishingRow {
                repository: repository.to_string(),
                state: if holder.is_some() {
                    FinishingState::Finishing
                } else {
                    FinishingState::Interrupted
                },
                backup_id: backup.clone().unwrap_or_default(),
                step: Some(*step),
                step_name: step_name.clone(),
                started: Some(*started),
                resumed: *resumed,
                note: match holder {
                    Some(h) => format!("{kind} by {h}"),
                    None => format!("{kind} cut off; the next open of the repository completes it"),
                },
            },
        }
    }

    /// The row for a repository that could not be read.
    pub fn unreadable(repository: &str, why: &str) -> FinishingRow {
        FinishingRow {
            repository: repository.to_string(),
            state: FinishingState::Error,
            backup_id: String::new(),
            step: None,
            step_name: String::new(),
            started: None,
            resumed: false,
            note: why.to_string(),
        }
    }
}

/// One volume in `control/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes actually allocated.
    pub allocated: u64,
}

/// Whether a snapshot still reads as it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    /// Intact.
    Ok,
    /// A pre-image it needs was lost (see the reason).
    Broken,
}

/// One snapshot in `control/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Snapshot name.
    pub name: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// Intact or broken.
    pub state: SnapshotState,
    /// Why it broke; empty when intact.
    pub broken_reason: String,
    /// Pre-images held for it.
    pub preimages_held: u64,
    /// `persistent` or `volatile`.
    #[serde(default)]
    pub kind: String,
}

/// What the mount found when it started: persistent snapshots restored after an unmount
/// or a crash, and what a crash left half done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// The store was not closed cleanly before this mount.
    pub unclean_stop: bool,
    /// Persistent snapshots restored readable.
    pub snapshots: u64,
    /// Durable pre-images restored.
    pub preimages: u64,
    /// Snapshots broken at this mount, each `NAME: reason`.
    pub broken: Vec<String>,
    /// Pre-image writes a crash cut short (their live writes never happened), dropped.
    pub torn_preimages: u64,
    /// Pre-images no snapshot needed any more, given back.
    pub discarded_preimages: u64,
    /// Regions of volumes marked as written at the crash: their snarfs count as changed.
    pub dirty_regions: u64,
    /// Backup jobs that were running when the last mount stopped, each `ID: what happened`.
    pub interrupted_jobs: Vec<String>,
}

/// A resource's use against its budget, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes in use.
    pub used: u64,
    /// Bytes allowed.
    pub budget: u64,
}

/// The whole of `control/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Live volumes.
    pub volumes: Vec<VolumeStatus>,
    /// The mount's repository, if one is configured: whether it can be read now.
    #[serde(default)]
    pub repository: Option<RepositoryStatus>,
    /// Snapshots.
    pub snapshots: Vec<SnapshotStatus>,
    /// Pre-image memory.
    pub preimage_memory: Usage,
    /// Pre-image spill space on disk.
    pub preimage_disk: Usage,
    /// Writers being slowed down right now.
    pub throttled_writers: u64,
    /// Times a writer was slowed down since the mount started.
    pub throttle_events: u64,
    /// Snapshots that broke since the mount started.
    pub snapshots_broken: u64,
    /// Jobs running now.
    pub running_jobs: u64,
    /// Schedule lines that do not run (edited on disk with a mistake) and other problems
    /// of the schedule, each naming its line.
    #[serde(default)]
    pub schedule: Vec<String>,
    /// Volumes under live restore, with whether their repository answers.
    #[serde(default)]
    pub live_restores: Vec<LiveRestoreStatus>,
    /// What this mount found when it started.
    #[serde(default)]
    pub recovery: RecoveryStatus,
}

/// A volume under live restore as `control/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LiveRestoreStatus {
    /// The volume's name.
    pub volume: String,
    /// The backup it is restored from.
    pub backup: String,
    /// Bytes local so far.
    pub local_bytes: u64,
    /// Bytes of the backup's volume.
    pub total_bytes: u64,
    /// Snarfs this mount fetched from the repository (on demand, ahead of readers and by
    /// the copy); a snarf restored before a restart is never fetched again.
    #[serde(default)]
    pub fetched: u64,
    /// `ok`; `unreachable` while reads of missing snarfs fail; `done` once every snarf is
    /// local; `damaged` when its bitmap cannot be trusted (the volume is not served).
    pub state: String,
    /// Why the repository did not answer, if it did not.
    pub reason: String,
}

/// The mount's repository as `control/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepositoryStatus {
    /// Where it is (a path or an `ssh://` URL).
    pub location: String,
    /// `ok`, `unreachable` (its host or connection is down) or `unreadable` (it answers,
    /// but cannot be opened: missing, damaged).
    pub state: String,
    /// Why not `ok`.
    pub reason: String,
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// `control/jobs`: one job per line; the failure reason is the last column.
pub fn render_jobs(rows: &[JobRow]) -> String {
    let mut t = Table::new(&[
        "ID",
        "TYPE",
        "STATE",
        "PID",
        "DONE",
        "TOTAL",
        "PERCENT",
        "RATE",
        "STARTED",
        "SNAPSHOT",
        "REPOSITORY",
        "REASON",
    ]);
    for r in rows {
        let percent = r
            .total_bytes
            .filter(|t| *t > 0)
            .map(|t| format!("{}%", (r.done_bytes.min(t) as u128 * 100 / t as u128)));
        t.push(vec![
            r.id.clone(),
            r.kind.clone(),
            r.state.as_str().to_string(),
            opt(r.pid),
            size(r.done_bytes),
            opt(r.total_bytes.map(size)),
            opt(percent),
            rate(r.rate_bytes_per_sec),
            time(r.started),
            r.snapshot.clone(),
            r.repository.clone(),
            r.reason.clone(),
        ]);
    }
    t.render()
}

/// `control/pids`: one registered process per line; the command line is the last column.
pub fn render_pids(rows: &[PidRow]) -> String {
    let mut t = Table::new(&[
        "PID",
        "TYPE",
        "STATE",
        "STARTED",
        "JOB",
        "REPOSITORY",
        "HOST",
        "COMMAND",
    ]);
    for r in rows {
        let command: Vec<String> = r
            .cmdline
            .iter()
            .map(|a| super::words::quote_word(a))
            .collect();
        t.push(vec![
            r.pid.to_string(),
            r.kind.to_string(),
            r.state.to_string(),
            time(Some(r.started)),
            r.job.clone(),
            r.repository.clone(),
            r.host.clone(),
            command.join(" "),
        ]);
    }
    t.render()
}

/// `control/finishing`: one repository per line.
pub fn render_finishing(rows: &[FinishingRow]) -> String {
    let mut t = Table::new(&[
        "REPOSITORY",
        "STATE",
        "BACKUP",
        "STEP",
        "STEP-NAME",
        "STARTED",
        "RESUMED",
        "NOTE",
    ]);
    for r in rows {
        let state = r.state.as_str();
        t.push(vec![
            r.repository.clone(),
            state.to_string(),
            r.backup_id.clone(),
            opt(r.step),
            r.step_name.clone(),
            time(r.started),
            yes_no(r.resumed),
            r.note.clone(),
        ]);
    }
    t.render()
}

/// `control/snapshot` (read without a write): one snapshot per line; the reason a
/// snapshot broke is the last column.
pub fn render_snapshots(rows: &[SnapshotStatus]) -> String {
    let mut snapshots = Table::new(&[
        "SNAPSHOT",
        "CREATED",
        "STATE",
        "PREIMAGES",
        "KIND",
        "REASON",
    ]);
    for s in rows {
        let state = match s.state {
            SnapshotState::Ok => "ok",
            SnapshotState::Broken => "broken",
        };
        snapshots.push(vec![
            s.name.clone(),
            time(Some(s.created)),
            state.to_string(),
            s.preimages_held.to_string(),
            s.kind.clone(),
            s.broken_reason.clone(),
        ]);
    }
    snapshots.render()
}

/// `control/status`: tables separated by blank lines, each with its own header (VOLUME,
/// SNAPSHOT, RESOURCE, then RECOVERY when this mount restored or repaired anything), so a
/// script can pick a section by its first header word.
pub fn render_status(report: &StatusReport) -> String {
    let mut volumes = Table::new(&["VOLUME", "SIZE", "ALLOCATED"]);
    for v in &report.volumes {
        volumes.push(vec![v.name.clone(), size(v.size), size(v.allocated)]);
    }
    let mut resources = Table::new(&["RESOURCE", "USED", "BUDGET"]);
    let budget = |name: &str, u: Usage| vec![name.to_string(), size(u.used), size(u.budget)];
    let count = |name: &str, n: u64| vec![name.to_string(), n.to_string(), String::new()];
    resources.push(budget("preimage-memory", report.preimage_memory));
    resources.push(budget("preimage-disk", report.preimage_disk));
    resources.push(count("throttled-writers", report.throttled_writers));
    resources.push(count("throttle-events", report.throttle_events));
    resources.push(count("snapshots-broken", report.snapshots_broken));
    resources.push(count("running-jobs", report.running_jobs));
    let mut out = format!(
        "{}\n{}\n{}",
        volumes.render(),
        render_snapshots(&report.snapshots),
        resources.render()
    );
    if let Some(r) = &report.repository {
        let mut t = Table::new(&["REPOSITORY", "STATE", "REASON"]);
        t.push(vec![r.location.clone(), r.state.clone(), r.reason.clone()]);
        out.push('\n');
        out.push_str(&t.render());
    }
    if !report.live_restores.is_empty() {
        let mut t = Table::new(&[
            "LIVE-RESTORE",
            "BACKUP",
            "LOCAL",
            "TOTAL",
            "FETCHED",
            "STATE",
            "REASON",
        ]);
        for r in &report.live_restores {
            t.push(vec![
                r.volume.clone(),
                r.backup.clone(),
                r.local_bytes.to_string(),
                r.total_bytes.to_string(),
                r.fetched.to_string(),
                r.state.clone(),
                r.reason.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !report.schedule.is_empty() {
        let mut t = Table::new(&["SCHEDULE-PROBLEM"]);
        for p in &report.schedule {
            t.push(vec![p.clone()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    let r = &report.recovery;
    if *r != RecoveryStatus::default() {
        let mut t = Table::new(&["RECOVERY", "COUNT", "DETAIL"]);
        let row =
            |what: &str, n: u64, detail: String| vec![what.to_string(), n.to_string(), detail];
        t.push(vec![
            "unclean-stop".into(),
            yes_no(r.unclean_stop),
            String::new(),
        ]);
        t.push(row("snapshots", r.snapshots, String::new()));
        t.push(row("preimages", r.preimages, String::new()));
        t.push(row("torn-preimages", r.torn_preimages, String::new()));
        t.push(row(
            "discarded-preimages",
            r.discarded_preimages,
            String::new(),
        ));
        t.push(row("dirty-regions", r.dirty_regions, String::new()));
        t.push(row(
            "snapshots-broken",
            r.broken.len() as u64,
            r.broken.join("; "),
        ));
        t.push(row(
            "interrupted-jobs",
            r.interrupted_jobs.len() as u64,
            r.interrupted_jobs.join("; "),
        ));
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// Pretty JSON with a final newline; these types always serialise.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    s.push('\n');
    s
}

/// `control/jobs.json`: an array of jobs.
pub fn render_jobs_json(rows: &[JobRow]) -> String {
    json(rows)
}

/// `control/pids.json`: an array of registered processes.
pub fn render_pids_json(rows: &[PidRow]) -> String {
    json(rows)
}

/// `control/finishing.json`: an array of repositories' finishing states.
pub fn render_finishing_json(rows: &[FinishingRow]) -> String {
    json(rows)
}

/// `control/status.json`: the status report as one object.
pub fn render_status_json(report: &StatusReport) -> String {
    json(report)
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::{assert_well_formed, awk_fields};
    use super::*;

    fn job(id: &str, state: JobState) -> JobRow {
        JobRow {
            id: id.into(),
            kind: "backup".into(),
            pid: Some(4242),
            state,
            reason: String::new(),
            done_bytes: 3 << 29,
            total_bytes: Some(3 << 30),
            rate_bytes_per_sec: Some(100 << 20),
            started: Some(1_714_564_800),
            snapshot: "nightly".into(),
            repository: "/srv/backups".into(),
        }
    }

    fn jobs() -> Vec<JobRow> {
        let mut queued = job("j-2", JobState::Queued);
        queued.pid = None;
        queued.started = None;
        queued.total_bytes = None;
        queued.rate_bytes_per_sec = None;
        queued.done_bytes = 0;
        queued.repository.clear();
        let mut failed = job("j-3", JobState::Failed);
        failed.reason = "repository /srv/backups is full:\nfree some space".into();
        failed.snapshot = "my snap".into();
        vec![job("j-1", JobState::Running), queued, failed]
    }

    fn pids() -> Vec<PidRow> {
        let mut entry = crate::pids::entry::tests::sample(77);
        entry.job = "backup of nightly".into();
        let mut cron = PidRow::from(&entry);
        cron.kind = ProcType::Cron;
        cron.state = ProcState::Running;
        cron.repository.clear();
        let mut remote = PidRow::from(&entry);
        remote.kind = ProcType::Remote;
        remote.host = "192.0.2.7".into();
        vec![PidRow::from(&entry), cron, remote]
    }

    fn finishing() -> Vec<FinishingRow> {
        vec![
            FinishingRow {
                repository: "/srv/backups".into(),
                state: FinishingState::Finishing,
                backup_id: "b-17".into(),
                step: Some(3),
                step_name: "move current".into(),
                started: Some(1_714_564_800),
                resumed: true,
                note: "backup by pid 42".into(),
            },
            FinishingRow {
                repository: "/srv/other".into(),
                state: FinishingState::Idle,
                backup_id: String::new(),
                step: None,
                step_name: String::new(),
                started: None,
                resumed: false,
                note: String::new(),
            },
        ]
    }

    fn status() -> StatusReport {
        StatusReport {
            repository: None,
            volumes: vec![
                VolumeStatus {
                    name: "vm1.img".into(),
                    size: 20 << 30,
                    allocated: 3 << 30,
                },
                VolumeStatus {
                    name: "a b".into(),
                    size: 0,
                    allocated: 0,
                },
            ],
            snapshots: vec![
                SnapshotStatus {
                    name: "nightly".into(),
                    created: 1_714_564_800,
                    state: SnapshotState::Ok,
                    broken_reason: String::new(),
                    preimages_held: 12,
                    kind: "persistent".into(),
                },
                SnapshotStatus {
                    name: "old".into(),
                    created: 1_714_000_000,
                    state: SnapshotState::Broken,
                    broken_reason: "spill file lost after a crash".into(),
                    preimages_held: 0,
                    kind: "volatile".into(),
                },
            ],
            preimage_memory: Usage {
                used: 12 << 20,
                budget: 256 << 20,
            },
            preimage_disk: Usage {
                used: 0,
                budget: 4 << 30,
            },
            throttled_writers: 1,
            throttle_events: 5,
            snapshots_broken: 1,
            running_jobs: 2,
            schedule: Vec::new(),
            live_restores: Vec::new(),
            recovery: RecoveryStatus::default(),
        }
    }

    /// The rows of a table as awk fields, header first.
    fn fields(text: &str) -> Vec<Vec<&str>> {
        text.lines().map(awk_fields).collect()
    }

    #[test]
    fn jobs_table() {
        let text = render_jobs(&jobs());
        assert_well_formed(&text);
        let f = fields(&text);
        assert_eq!(f[0].len(), 12);
        assert_eq!(
            f[1],
            [
                "j-1",
                "backup",
                "running",
                "4242",
                "1.5GiB",
                "3.0GiB",
                "50%",
                "100.0MiB/s",
                "2024-05-01T12:00:00Z",
                "nightly",
                "/srv/backups",
                "-"
            ]
        );
        assert_eq!(
            f[2][..9],
            ["j-2", "backup", "queued", "-", "0B", "-", "-", "-", "-"]
        );
        assert_eq!(f[3][9], "my\\040snap");
        assert!(text
            .lines()
            .nth(3)
            .unwrap()
            .ends_with("repository /srv/backups is full:\\012free some space"));
        // awk '{print $1, $3}' on every row: id and state.
        let picked: Vec<String> = f[1..]
            .iter()
            .map(|r| format!("{} {}", r[0], r[2]))
            .collect();
        assert_eq!(picked, ["j-1 running", "j-2 queued", "j-3 failed"]);
    }

    #[test]
    fn pids_table() {
        let text = render_pids(&pids());
        assert_well_formed(&text);
        let f = fields(&text);
        assert_eq!(
            f[0],
            [
                "PID",
                "TYPE",
                "STATE",
                "STARTED",
                "JOB",
                "REPOSITORY",
                "HOST",
                "COMMAND"
            ]
        );
        assert_eq!(
            f[1][..6],
            [
                "77",
                "user",
                "idle",
                "2023-11-14T22:13:20Z",
                "backup\\040of\\040nightly",
                "/srv/repo"
            ]
        );
        assert_eq!(f[2][1..3], ["cron", "running"]);
        assert_eq!(f[2][5], "-");
        assert_eq!(f[1][6], "-");
        assert_eq!((f[3][1], f[3][6]), ("remote", "192.0.2.7"));
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("snarf backup \"night ly\""));
    }

    #[test]
    fn finishing_table() {
        let text = render_finishing(&finishing());
        assert_well_formed(&text);
        let f = fields(&text);
        // NOTE is the last column and free text: "backup by pid 42" is four fields.
        assert_eq!(f.iter().map(Vec::len).collect::<Vec<_>>(), [8, 11, 8]);
        assert_eq!(f[1][7..].join(" "), "backup by pid 42");
        assert_eq!(
            f[1][..7],
            [
                "/srv/backups",
                "finishing",
                "b-17",
                "3",
                "move\\040current",
                "2024-05-01T12:00:00Z",
                "yes"
            ]
        );
        assert_eq!(f[2], ["/srv/other", "idle", "-", "-", "-", "-", "no", "-"]);
    }

    #[test]
    fn status_sections() {
        let text = render_status(&status());
        let sections: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(sections.len(), 3, "{text}");
        for s in &sections {
            assert_well_formed(&format!("{}\n", s.trim_end_matches('\n')));
        }
        let f = fields(&text);
        assert_eq!(f[0], ["VOLUME", "SIZE", "ALLOCATED"]);
        assert_eq!(f[1], ["vm1.img", "20.0GiB", "3.0GiB"]);
        assert_eq!(f[2], ["a\\040b", "0B", "0B"]);
        let snap = sections[1];
        assert!(snap.starts_with("SNAPSHOT  "));
        assert!(
            snap.contains("broken  0          volatile    spill file lost after a crash"),
            "{snap}"
        );
        let res: Vec<Vec<&str>> = sections[2].lines().map(awk_fields).collect();
        assert_eq!(res[1], ["preimage-memory", "12.0MiB", "256.0MiB"]);
        assert_eq!(res[3], ["throttled-writers", "1", "-"]);
        assert_eq!(res[6], ["running-jobs", "2", "-"]);

        // After a crash, a fourth section says what the mount found.
        let mut after = status();
        after.recovery = RecoveryStatus {
            unclean_stop: true,
            snapshots: 2,
            preimages: 40,
            broken: vec!["old: its volume \"x\" is gone from the store".into()],
            torn_preimages: 1,
            discarded_preimages: 3,
            dirty_regions: 5,
            interrupted_jobs: vec!["j-1: the mount stopped while it ran".into()],
        };
        let text = render_status(&after);
        let sections: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(sections.len(), 4, "{text}");
        assert_well_formed(&format!("{}\n", sections[3].trim_end_matches('\n')));
        let rec: Vec<Vec<&str>> = sections[3].lines().map(awk_fields).collect();
        assert_eq!(rec[0], ["RECOVERY", "COUNT", "DETAIL"]);
        assert_eq!(rec[1], ["unclean-stop", "yes", "-"]);
        assert_eq!(rec[6][..2], ["dirty-regions", "5"]);
        assert!(
            sections[3].contains("interrupted-jobs     1      j-1: the mount stopped"),
            "{text}"
        );
    }

    #[test]
    fn empty_tables_have_headers_only() {
        assert_eq!(render_jobs(&[]).lines().count(), 1);
        assert_eq!(render_pids(&[]).lines().count(), 1);
        assert_eq!(render_finishing(&[]).lines().count(), 1);
        let status = render_status(&StatusReport::default());
        assert!(
            status.starts_with("VOLUME  SIZE  ALLOCATED\n\nSNAPSHOT"),
            "{status}"
        );
    }

    #[test]
    fn json_twins_keep_exact_numbers_and_round_trip() {
        let j = render_jobs_json(&jobs());
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v[0]["done_bytes"], 3u64 << 29);
        assert_eq!(v[0]["rate_bytes_per_sec"], 100u64 << 20);
        assert_eq!(v[0]["type"], "backup");
        assert_eq!(v[1]["pid"], serde_json::Value::Null);
        assert_eq!(v[2]["state"], "failed");
        assert_eq!(serde_json::from_str::<Vec<JobRow>>(&j).unwrap(), jobs());

        let p = render_pids_json(&pids());
        assert_eq!(serde_json::from_str::<Vec<PidRow>>(&p).unwrap(), pids());
        assert!(p.contains("\"type\": \"user\""));

        let f = render_finishing_json(&finishing());
        assert_eq!(
            serde_json::from_str::<Vec<FinishingRow>>(&f).unwrap(),
            finishing()
        );

        let s = render_status_json(&status());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["preimage_disk"]["budget"], 4u64 << 30);
        assert_eq!(v["snapshots"][1]["state"], "broken");
        assert_eq!(serde_json::from_str::<StatusReport>(&s).unwrap(), status());
        for text in [j, p, f, s] {
            assert!(text.ends_with('\n'));
        }
    }
}
