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

#[test]
fn an_encrypted_repository_reads_back_through_the_mount_with_its_password_file() {
    use snarf::repo::passphrase::Passphrase;
    use snarf::repo::v2::{keyslot::Cost, InitOptions, NewKey, Repository};
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    let repo_dir = m.dir.path().join("repo");
    let backend = snarf::repo::Location::local(&repo_dir)
        .backend_for_init()
        .unwrap();
    let repo = Repository::init(
        backend,
        &InitOptions {
            encryption: Some(NewKey {
                passphrase: std::sync::Arc::new(Passphrase::new(b"mount secret")),
                cost: Cost {
                    m_cost_kib: 8 << 10,
                    t_cost: 1,
                    p_cost: 1,
                },
                label: String::new(),
            }),
            ..InitOptions::default()
        },
    )
    .unwrap();
    let id = common::write_backup_v2(&repo, 9, 2 << 20).to_string();
    let pw = m.dir.path().join("pw");
    fs::write(&pw, "mount secret\n").unwrap();
    let repo_arg = repo_dir.to_str().unwrap();

    // Without the passphrase backups/ cannot be read, and says why (EACCES), not EIO.
    m.unmount();
    m.mount(&["--repo", repo_arg]);
    let e = fs::read_dir(m.path("backups")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(
        e.err().and_then(|e| e.raw_os_error()),
        Some(libc::EACCES),
        "backups/ of an encrypted repository without a passphrase"
    );
    m.unmount();
    let opt = format!("password_file={}", pw.display());
    m.mount(&["--repo", repo_arg, "-o", &opt]);
    for (name, data) in common::volumes_for(9, 2 << 20) {
        let through_mount = m.path(&format!("backups/{id}/{name}"));
        assert!(read(&through_mount) == data, "backups/{id}/{name} differs");
    }
    // The passphrase is not written into the store.
    let secret = b"mount secret";
    for f in walk(&m.store) {
        let bytes = fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{} holds the passphrase",
            f.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}
