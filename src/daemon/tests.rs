//! Tests of what a daemon finds when it starts: the backup jobs an earlier mount left
//! running are failed, with the reason in their report files and in `control/status`.

use std::sync::Arc;

use super::*;
use crate::jobs::report::{report_path, reports_dir, JobReport};
use crate::jobs::JobState;
use crate::snapshot::EngineOptions;
use crate::store::{InitOptions, Store};

fn report(state: JobState) -> JobReport {
    JobReport {
        state,
        done_bytes: 5,
        total_bytes: Some(10),
        rate_bytes_per_sec: None,
        backup_id: None,
        error: None,
        summary: None,
        pruned: None,
    }
}

#[test]
fn jobs_the_last_mount_left_running_are_failed_with_the_reason_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let store = Store::open(&root, "test").unwrap();
    let run = store.run_dir();
    std::fs::create_dir_all(reports_dir(&run)).unwrap();
    report(JobState::Running)
        .write(&report_path(&run, "100-1"))
        .unwrap();
    report(JobState::Finishing)
        .write(&report_path(&run, "100-2"))
        .unwrap();
    report(JobState::Done)
        .write(&report_path(&run, "100-3"))
        .unwrap();
    // A damaged report and a stray name are left alone.
    std::fs::write(report_path(&run, "100-4"), b"{damaged").unwrap();
    std::fs::write(reports_dir(&run).join("100-1.log"), b"output").unwrap();
    let opts = EngineOptions::from_store(&store);
    let engine = Arc::new(Engine::new(store, opts).unwrap());
    let mut daemon = Daemon::new(engine);
    daemon.note_interrupted_jobs();
    let jobs = daemon.status().recovery.interrupted_jobs;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs[0].starts_with("100-1: the mount stopped while it ran"),
        "{jobs:?}"
    );
    assert!(
        jobs[1].starts_with("100-2: ") && jobs[1].contains("snarf finishing"),
        "{jobs:?}"
    );
    let failed = JobReport::read(&report_path(&run, "100-1")).unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed
        .error
        .unwrap()
        .contains("nothing of it was committed"));
    let done = JobReport::read(&report_path(&run, "100-3")).unwrap();
    assert_eq!(done, report(JobState::Done));
    // The text of control/status says it too.
    let text = crate::control::render_status(&daemon.status());
    assert!(text.contains("interrupted-jobs"), "{text}");
}
