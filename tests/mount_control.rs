//! Control files on a real mount, and the CLI that is their thin client: one command per
//! write, refusals fail the write with EINVAL and explain themselves on the same
//! descriptor, tables parse with awk, and only the owner (or root) may write — other users
//! get EACCES even under --allow-other, and can still read the tables.

mod mounted;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use mounted::{have_tool, sh, snarf, snarf_ok, Mounted};

/// Writes `command` on a fresh descriptor; returns (errno or 0, what is read back).
fn transact(path: &std::path::Path, command: &[u8]) -> (i32, String) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let errno = match f.write(command) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    (errno, back)
}

#[test]
fn commands_answers_refusals_and_tables() {
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    fs::write(m.path("live/v.img"), b"volume").unwrap();
    let mp = m.mnt.to_str().unwrap();
    assert_eq!(
        snarf_ok(&["snapshot", "create", mp, "s1"]),
        "created snapshot s1\n"
    );
    assert!(m.path("snapshots/s1/v.img").exists());
    let list = snarf_ok(&["snapshot", "list", mp]);
    assert!(
        list.starts_with("SNAPSHOT") && list.contains("\ns1 "),
        "{list}"
    );

    let snap = m.path("control/snapshot");
    let jobs = m.path("control/jobs");
    let long = format!("create {}\n", "x".repeat(5000));
    let cases: Vec<(&std::path::Path, Vec<u8>, &str)> = vec![
        (&snap, b"destroy s1\n".to_vec(), "is not a command"),
        (
            &snap,
            b"release nope\n".to_vec(),
            "no snapshot named \"nope\"",
        ),
        (&snap, b"create s1\n".to_vec(), "already exists"),
        (&snap, long.into_bytes(), "long"),
        (&snap, vec![0xff, 0xfe, 0x00, 0x17, b'\n'], "NUL byte"),
        (&snap, vec![b'c', 0xff, 0xfe, b'\n'], "UTF-8"),
        (&snap, b"create a\ncreate b\n".to_vec(), "one"),
        (
            &jobs,
            b"backup s1 repo=relative/path\n".to_vec(),
            "absolute",
        ),
        (&jobs, b"frobnicate\n".to_vec(), "is not a command"),
    ];
    for (file, command, why) in cases {
        let (errno, reason) = transact(file, &command);
        assert_eq!(
            errno,
            libc::EINVAL,
            "{:?} should fail with EINVAL",
            String::from_utf8_lossy(&command)
        );
        assert!(
            reason.to_lowercase().contains(&why.to_lowercase()) && reason.contains("accepted"),
            "{:?}: the reason {reason:?} should mention {why:?} and the accepted form",
            String::from_utf8_lossy(&command)
        );
    }
    // The CLI reports the same refusal.
    let out = snarf(&["snapshot", "release", mp, "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot named \"nope\""));

    // Tables parse with awk: fixed columns before the free-text last one.
    let states = sh(&format!(
        "awk 'NR > 1 {{ print $1, $3 }}' {}",
        snap.display()
    ));
    assert_eq!(states, "s1 ok\n");
    let vols = sh(&format!(
        "awk '$1 == \"v.img\" {{ print $1 }}' {}",
        m.path("control/status").display()
    ));
    assert_eq!(vols, "v.img\n");
    let header = sh(&format!("head -1 {}", m.path("control/jobs").display()));
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{header}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.path("control/status.json")).unwrap()).unwrap();
    assert_eq!(json["snapshots"][0]["name"], "s1");
    assert!(snarf_ok(&["status", mp]).contains("preimage-memory"));
    let pids = snarf_ok(&["pids", m.store.to_str().unwrap()]);
    assert!(pids.starts_with("PID"), "{pids}");
    assert_eq!(
        snarf_ok(&["snapshot", "release", mp, "s1"]),
        "released snapshot s1\n"
    );
    assert!(!m.path("snapshots/s1").exists());
    let out = snarf(&["status", m.dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a snarf mount point"));
}

#[test]
fn other_users_may_read_but_not_write_control_files() {
    if !have_tool("setpriv") {
        return;
    }
    let Some(m) = Mounted::new(&[], &["--allow-other"]) else {
        return;
    };
    // Let an unprivileged user reach the mount point.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.path("live/secret.img"), b"owner only").unwrap();
    let as_nobody = |script: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap()
    };
    let out = as_nobody(&format!(
        "echo 'create intruder' > {}",
        m.path("control/snapshot").display()
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(!m.path("snapshots/intruder").exists());
    let out = as_nobody(&format!("cat {}", m.path("control/status").display()));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("secret.img"),
        "{out:?}"
    );
    let out = as_nobody(&format!("cat {}", m.path("live/secret.img").display()));
    assert!(!out.status.success(), "volumes are owner-only: {out:?}");
    let out = as_nobody(&format!("mkdir {}", m.path("snapshots/intruder").display()));
    assert!(!out.status.success());
    // The owner still can.
    fs::write(m.path("control/snapshot"), b"create mine\n").unwrap();
    assert!(m.path("snapshots/mine").exists());
    let mut f = OpenOptions::new()
        .write(true)
        .open(m.path("control/snapshot"))
        .unwrap();
    f.write_all(b"release mine\n").unwrap();
}
