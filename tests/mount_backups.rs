//! `backups/` on the mount: committed backups of the default repository as read-only files,
//! equal to what `snarf restore` writes, copyable with cp and rsync, holes where the
//! backup recorded zero snarfs, and EROFS on every write.

mod common;
mod mounted;

use std::fs;

use mounted::{have_tool, read, sh, snarf_ok, Mounted};
use snarf::repo::{Repo, RepoInitOptions};

#[test]
fn committed_backups_read_back_through_the_mount() {
    if !have_tool("rsync") {
        return;
    }
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo_dir = m.dir.path().join("repo");
    let repo = Repo::init(&repo_dir, &RepoInitOptions::default()).unwrap();
    let id = common::write_backup(&repo, 7, 3 << 20, None).to_string();
    m.unmount();
    m.mount(&["--repo", repo_dir.to_str().unwrap()]);

    let listed: Vec<String> = fs::read_dir(m.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec![id.clone()]);
    let restored = m.dir.path().join("restored");
    snarf_ok(&[
        "restore",
        repo_dir.to_str().unwrap(),
        &id,
        restored.to_str().unwrap(),
    ]);
    for (name, data) in common::volumes_for(7, 3 << 20) {
        let through_mount = m.path(&format!("backups/{id}/{name}"));
        assert_eq!(
            fs::metadata(&through_mount).unwrap().len(),
            data.len() as u64
        );
        assert!(
            read(&through_mount) == data,
            "backups/{id}/{name} differs from what was backed up"
        );
        assert!(
            read(&restored.join(&name)) == data,
            "restore of {name} differs"
        );
        let cp = m.dir.path().join(format!("cp-{name}"));
        sh(&format!(
            "cp --sparse=always {} {}",
            through_mount.display(),
            cp.display()
        ));
        assert!(
            read(&cp) == read(&restored.join(&name)),
            "cp of backups/{id}/{name} differs from restore"
        );
        let rs = m.dir.path().join(format!("rsync-{name}"));
        sh(&format!(
            "rsync {} {}",
            through_mount.display(),
            rs.display()
        ));
        assert!(read(&rs) == data, "rsync of backups/{id}/{name} differs");
    }
    let f = m.path(&format!("backups/{id}/own.img"));
    assert_eq!(
        fs::write(&f, b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fs::remove_file(&f).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fs::create_dir(m.path("backups/new"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fs::remove_dir(m.path(&format!("backups/{id}")))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    // A backup committed while mounted appears without a remount.
    let second = common::write_backup(&repo, 8, 1 << 20, None).to_string();
    assert!(m.path(&format!("backups/{second}/own.img")).exists());
}
