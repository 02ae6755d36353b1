//! The Debian package, end to end on this machine: `scripts/package.sh` builds the .deb,
//! `dpkg -i` installs it, a store is mounted with the installed snarf through
//! `mount -t fuse.snarf` and through an /etc/fstab line, `man snarf` resolves, and
//! `dpkg --purge` leaves nothing behind.
//!
//! It changes the machine (a package, /etc/fstab for a moment), so it runs only as root with
//! dpkg, when SNARF_TEST_PACKAGE=1 or SNARF_REQUIRE_FUSE=1 (CI) asks for it, and it refuses to
//! run over a snarf package it did not install. Every path restores /etc/fstab byte for byte,
//! unmounts and purges what it installed.

mod mounted;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const FSTAB: &str = "/etc/fstab";

/// Files the package must hold (and purge must remove).
const EXPECTED: &[&str] = &[
    "/usr/bin/snarf",
    "/sbin/mount.fuse.snarf",
    "/sbin/mount.snarf",
    "/lib/systemd/system/snarf-mount@.service",
    "/lib/systemd/system/snarf-backup@.service",
    "/lib/systemd/system/snarf-backup@.timer",
    "/usr/share/man/man1/snarf.1.gz",
    "/usr/share/man/man1/snarf-mount.1.gz",
    "/usr/share/man/man1/snarf-repo-init.1.gz",
    "/usr/share/man/man8/snarf.8.gz",
    "/usr/share/bash-completion/completions/snarf",
    "/usr/share/zsh/vendor-completions/_snarf",
    "/usr/share/fish/vendor_completions.d/snarf.fish",
    "/usr/share/doc/snarf/README.md",
];

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn on_path(tool: &str) -> bool {
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}")))
    .status
    .success()
}

/// Whether dpkg has a `snarf` package installed (or half-installed).
fn snarf_package_present() -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "--", "snarf"]));
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("not-installed")
}

fn mounted_at(mnt: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == mnt.to_str())
}

/// Waits until the daemon has closed the store (its lock is free).
fn wait_store_free(store: &Path) {
    let start = Instant::now();
    loop {
        let out = run(Command::new("flock")
            .args(["-n", "-x"])
            .arg(store.join("run/store.lock"))
            .arg("true"));
        if out.status.success() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not exit after umount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the test changed on the machine, undone on drop in reverse order.
struct Machine {
    /// Purge the package at the end (set just before `dpkg -i`).
    purge: bool,
    /// /etc/fstab as it was (`None`: there was none), while the test's line is in it.
    fstab: Option<Option<Vec<u8>>>,
    /// Mount points to unmount if still mounted.
    mounts: Vec<PathBuf>,
}

impl Machine {
    fn restore_fstab(&mut self) {
        match self.fstab.take() {
            Some(Some(bytes)) => fs::write(FSTAB, bytes).expect("restoring /etc/fstab"),
            Some(None) => {
                let _ = fs::remove_file(FSTAB);
            }
            None => {}
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for mnt in &self.mounts {
            if mounted_at(mnt) {
                let _ = Command::new("umount").arg("-l").arg(mnt).status();
            }
        }
        self.restore_fstab();
        if self.purge {
            let _ = Command::new("dpkg").args(["--purge", "snarf"]).status();
        }
    }
}

fn wanted() -> bool {
    let asked = std::env::var("SNARF_TEST_PACKAGE").as_deref() == Ok("1")
        || std::env::var("SNARF_REQUIRE_FUSE").as_deref() == Ok("1");
    let why = if !asked {
        Some("set SNARF_TEST_PACKAGE=1 to build and install the Debian package")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("installing a package needs root")
    } else if !on_path("dpkg") || !on_path("dpkg-query") {
        Some("dpkg is not installed")
    } else {
        None
    };
    if let Some(why) = why {
        eprintln!("skipping the package test: {why}");
        return false;
    }
    true
}

#[test]
fn the_deb_installs_mounts_through_fstab_and_purges_cleanly() {
    if !wanted() || !mounted::fuse_available() {
        return;
    }
    assert!(
        !snarf_package_present(),
        "a snarf package is installed already; this test installs and purges its own, so it refuses to touch that one (dpkg --purge snarf first)"
    );
    for path in EXPECTED {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{path} exists already and is not the test's; remove it before running the package test"
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = run(Command::new("bash")
        .arg(root.join("scripts/package.sh"))
        .current_dir(&root));
    assert!(
        out.status.success(),
        "scripts/package.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("package.sh printed no path")
            .trim(),
    );
    assert!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "{deb:?}"
    );
    let fields = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Depends"]));
    assert!(
        fields.contains("Package: snarf") && fields.contains("fuse3"),
        "{fields}"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut machine = Machine {
        purge: true,
        fstab: None,
        mounts: vec![mnt.clone()],
    };
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let listed = ok(Command::new("dpkg").args(["-L", "snarf"]));
    for path in EXPECTED {
        assert!(
            listed.lines().any(|l| l == *path),
            "{path} not in the package:\n{listed}"
        );
        assert!(fs::symlink_metadata(path).is_ok(), "{path} not installed");
    }
    assert_eq!(
        fs::read_link("/sbin/mount.snarf").unwrap(),
        Path::new("mount.fuse.snarf")
    );
    let unit = fs::read_to_string("/lib/systemd/system/snarf-mount@.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/snarf mount"), "{unit}");
    // Every packaged unit runs a program the package installed (none under /usr/local).
    for name in ["snarf-mount@.service", "snarf-backup@.service"] {
        let unit = fs::read_to_string(format!("/lib/systemd/system/{name}")).unwrap();
        for line in unit.lines().filter(|l| l.starts_with("ExecStart=")) {
            let program = line["ExecStart=".len()..].split(' ').next().unwrap();
            assert!(
                Path::new(program).is_file() && !program.starts_with("/usr/local"),
                "{name} runs {program}, which the package did not install"
            );
        }
    }
    // man finds the installed pages by name.
    let page = ok(Command::new("man").args(["-w", "snarf"]));
    assert_eq!(page.trim(), "/usr/share/man/man1/snarf.1.gz");
    let page = ok(Command::new("man").args(["-w", "8", "snarf"]));
    assert_eq!(page.trim(), "/usr/share/man/man8/snarf.8.gz");
    let text = ok(Command::new("man")
        .args(["8", "snarf"])
        .env("MANPAGER", "cat"));
    assert!(text.contains("preimage_mem"), "{text}");
    let completion = ok(Command::new("bash")
        .arg("-c")
        .arg("source /usr/share/bash-completion/completions/snarf && complete -p snarf"));
    assert!(completion.contains("snarf"), "{completion}");

    // The installed snarf, found by the installed helper through mount(8).
    let installed = |args: &[&str]| {
        ok(Command::new("/usr/bin/snarf")
            .args(args)
            .env_remove("SNARF_BIN"))
    };
    installed(&["init", store.to_str().unwrap()]);
    ok(Command::new("mount")
        .args(["-t", "fuse.snarf"])
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "threads=2,preimage_mem=32M"])
        .env_remove("SNARF_BIN"));
    assert!(mounted_at(&mnt));
    fs::write(mnt.join("live/v.img"), b"installed from the .deb").unwrap();
    ok(Command::new("umount").arg(&mnt));
    assert!(!mounted_at(&mnt));
    wait_store_free(&store);

    // An fstab line with a marker, mounted by its mount point.
    let original = match fs::read(FSTAB) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {FSTAB}: {e}"),
    };
    machine.fstab = Some(original.clone());
    let marker = format!(
        "snarf-package-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut with_line = original.clone().unwrap_or_default();
    if !with_line.is_empty() && !with_line.ends_with(b"\n") {
        with_line.push(b'\n');
    }
    with_line.extend_from_slice(
        format!(
            "{} {} fuse.snarf defaults,noauto,threads=2,_netdev 0 0 # {marker}\n",
            store.display(),
            mnt.display()
        )
        .as_bytes(),
    );
    fs::write(FSTAB, &with_line).unwrap();
    ok(Command::new("mount").arg(&mnt).env_remove("SNARF_BIN"));
    assert!(mounted_at(&mnt));
    assert_eq!(
        fs::read(mnt.join("live/v.img")).unwrap(),
        b"installed from the .deb"
    );
    ok(Command::new("umount").arg(&mnt));
    wait_store_free(&store);
    machine.restore_fstab();
    assert_eq!(fs::read(FSTAB).ok(), original, "/etc/fstab not restored");

    // Purge: no package, no file left.
    ok(Command::new("dpkg").args(["--purge", "snarf"]));
    machine.purge = false;
    assert!(!snarf_package_present(), "dpkg still knows snarf");
    assert!(!run(Command::new("dpkg").args(["-L", "snarf"]))
        .status
        .success());
    for path in listed.lines().filter(|l| l.starts_with('/')) {
        // Shared folders such as /usr/share/man/man1 stay (and /sbin, /lib may be links
        // to folders under /usr).
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{path} is left after dpkg --purge"
        );
    }
    for own in ["/usr/share/doc/snarf", "/usr/share/snarf"] {
        assert!(
            fs::symlink_metadata(own).is_err(),
            "{own} is left after dpkg --purge"
        );
    }
    assert!(!on_path("snarf") || which_snarf() != "/usr/bin/snarf");
}

fn which_snarf() -> String {
    String::from_utf8_lossy(&run(Command::new("sh").arg("-c").arg("command -v snarf")).stdout)
        .trim()
        .to_string()
}
