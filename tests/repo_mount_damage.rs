//! `backups/` on the mount while the repository is damaged: a garbage manifest followed by
//! a prune, and a finishing that cannot complete, leave the committed backups listed and
//! readable (never EIO for the whole folder).

mod common;
mod mounted;

use std::fs;

use mounted::{read, snarf, Mounted};
use snarf::repo::{Repo, RepoInitOptions};

fn listed(m: &Mounted) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.path("backups"))
        .unwrap_or_else(|e| panic!("listing backups/: {e}"))
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    v.sort();
    v
}

#[test]
fn backups_stay_listed_and_readable_through_damage_and_a_stuck_finishing() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo_dir = m.dir.path().join("repo");
    let r = repo_dir.to_str().expect("utf8");
    let repo = Repo::init(
        &repo_dir,
        &RepoInitOptions {
            compression: 3,
            pack_target: 128 << 10,
        },
    )
    .expect("init");
    let ids: Vec<String> = (1..=3)
        .map(|seed| common::write_backup(&repo, seed, 300_000, None).to_string())
        .collect();
    m.unmount();
    m.mount(&["--repo", r]);

    // The case: a garbage manifest, then a prune.
    let manifest = repo_dir.join("backups").join(&ids[1]).join("manifest.json");
    fs::write(&manifest, b"garbage").expect("garbage");
    let out = snarf(&["prune", r, "--keep-last", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed(&m), vec![ids[2].clone()]);
    let data = &common::volumes_for(3, 300_000)[1].1;
    assert!(read(&m.path(&format!("backups/{}/own.img", ids[2]))) == *data);

    // A finishing that cannot complete: backup 3's index step for a pack that is gone.
    let record = serde_json::json!({
        "kind": "backup", "backup": ids[2], "step": "index", "started": 1,
        "resumed": false, "pid": 1, "host": "h", "policy": null, "doomed": null,
        "new_packs": ["07070707070707070707070707070707"],
    });
    fs::remove_file(repo_dir.join("index").join(format!("b-{}.idx", ids[2]))).expect("rm run");
    fs::write(
        repo_dir.join("finishing.json"),
        serde_json::to_vec(&record).expect("json"),
    )
    .expect("record");
    assert_eq!(listed(&m), vec![ids[2].clone()]);
    assert!(read(&m.path(&format!("backups/{}/own.img", ids[2]))) == *data);
    let out = snarf(&["check", r]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("cannot be completed"),
        "{text}"
    );
}
