//! A panic on a FUSE thread unmounts cleanly and the log says why. The panic comes from the
//! test hook `SNARF_TEST_PANIC_ON_LOOKUP`, which only builds with the cargo feature
//! `fault-injection` have (Cargo.toml makes this test require it; scripts/test.sh passes it).

mod mounted;

use std::fs;
use std::time::{Duration, Instant};

use mounted::{read, Mounted};

/// Starts the daemon of `m`'s store with extra environment (for the test hooks).
fn mount_with_env(m: &mut Mounted, env: &[(&str, &str)]) {
    let out = std::process::Command::new(mounted::snarf_bin())
        .args(["mount", m.store.to_str().unwrap(), m.mnt.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    m.daemon_pid = text
        .split("daemon pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok());
    assert!(m.daemon_pid.is_some(), "{text}");
}

#[test]
fn a_panic_on_a_fuse_thread_unmounts_cleanly_and_the_log_says_why() {
    let Some(mut m) = Mounted::new(&[], &[]) else {
        return;
    };
    m.unmount();
    mount_with_env(&mut m, &[("SNARF_TEST_PANIC_ON_LOOKUP", "boom")]);
    let data = vec![0x5au8; 200_000];
    fs::write(m.path("live/v.img"), &data).unwrap();
    // The request that panics is answered (EIO), not left hanging.
    let e = fs::metadata(m.path("live/boom")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Then the mount goes away by itself: unmounted, not dead (ENOTCONN).
    let start = Instant::now();
    while m.is_mounted() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still mounted after the panic"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.wait_daemon_gone(Duration::from_secs(20)));
    m.daemon_pid = None;
    let log = fs::read_to_string(m.store.join("snarf.log")).unwrap();
    assert!(
        log.contains("(lookup) panicked") && log.contains("test hook"),
        "{log}"
    );
    assert!(log.contains("store closed cleanly"), "{log}");
    assert!(
        log.contains("the FUSE session ended with an error"),
        "the log must not pretend the session ended normally: {log}"
    );
    // Everything written is there, and the store mounts again.
    m.mount(&[]);
    assert!(read(&m.path("live/v.img")) == data);
    m.unmount();
}
