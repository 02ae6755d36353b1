//! Paths given relative to the current directory, as a user types them (`snarf init store`,
//! `snarf repo init repo`): the parent of a one-word path is the current directory, which
//! must be synced like any other parent.

mod mounted;

use std::process::Command;

use mounted::snarf_bin;

#[test]
fn init_and_repo_init_take_a_bare_relative_name() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["init", "store"][..], &["repo", "init", "repo"]] {
        let out = Command::new(snarf_bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "snarf {args:?} in {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.path().join("store/snarf.toml").is_file());
    assert!(dir.path().join("repo").is_dir());
}
