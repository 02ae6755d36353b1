//! `snarf generate`: every man page it writes renders with `man -l` without a groff warning,
//! snarf(8) shows every mount option and control file the code parses, and the completion
//! scripts load in their shells (`complete -p snarf` in bash).

mod mounted;

use std::process::Command;

use mounted::{have_tool, snarf_bin, snarf_ok};

/// Renders a page with `man -l` (warnings on) and returns its text.
fn render(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .args(["--warnings=w", "-l", "-Tutf8"])
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "250")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("running man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l {} failed or warned: {stderr}",
        page.display()
    );
    // Bold and underline come as overstrikes (X, backspace, X); keep the plain letters.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(!text.trim().is_empty(), "{} renders empty", page.display());
    text
}

#[test]
fn every_man_page_renders_with_man_l() {
    if !have_tool("man") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listed = snarf_ok(&["generate", "man", dir.path().to_str().unwrap()]);
    let mut pages: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert_eq!(listed.lines().count(), pages.len(), "{listed}");
    assert!(pages.len() >= 20, "too few pages: {pages:?}");
    for page in &pages {
        let text = render(page);
        let name = page.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            text.contains(&name),
            "{} does not name itself",
            page.display()
        );
    }

    let top = render(&dir.path().join("snarf.1"));
    for sub in ["mount", "backup", "restore", "generate", "snarf(8)"] {
        assert!(top.contains(sub), "snarf(1) lacks {sub}:\n{top}");
    }
    let mount = render(&dir.path().join("snarf-mount.1"));
    assert!(mount.contains("--preimage-mem") && mount.contains("--options"));
    let schedule = render(&dir.path().join("snarf-schedule.1"));
    assert!(
        schedule.contains("--set") && schedule.contains("snapshot=auto"),
        "{schedule}"
    );

    // snarf(8) is made from the tables the mount parses: every option `snarf mount -o`
    // accepts and every control file is there, and an option it lists is one that works.
    let eight = render(&dir.path().join("snarf.8"));
    for word in [
        "threads=N",
        "allow_other",
        "preimage_mem=SIZE",
        "preimage_disk=SIZE",
        "break_after=SECONDS",
        "repo=PATH",
        "live_io=direct|buffered",
        "snapshot_io=direct|buffered",
        "foreground",
        "_netdev",
        "control/snapshot",
        "control/jobs",
        "control/status",
        "control/finishing",
        "control/pids.json",
        "control/schedule",
        "control/schedule-status",
        "@hourly|@daily|@weekly|@monthly|@yearly",
        "create NAME",
        "cancel JOB-ID",
        "mode=full|incremental|auto",
    ] {
        assert!(eight.contains(word), "snarf(8) lacks {word}:\n{eight}");
    }
}

#[test]
fn the_mount_refuses_what_snarf_8_does_not_list() {
    let out = Command::new(snarf_bin())
        .args([
            "mount",
            "-o",
            "threads=2,bogus=1",
            "--",
            "/nonexistent",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown option 'bogus=1'"),
        "{err}"
    );
    let out = Command::new(snarf_bin())
        .args([
            "mount",
            "-o",
            "threads=999",
            "--",
            "/nonexistent",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mount option threads=999"),
        "{err}"
    );
}

#[test]
fn bash_completion_loads() {
    if !have_tool("bash") {
        return;
    }
    let script = format!(
        "source <('{}' generate completions bash) && complete -p snarf",
        snarf_bin().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("complete") && text.contains(" snarf"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Completing `snarf mo` offers mount.
    let script = format!(
        "source <('{}' generate completions bash)
         COMP_WORDS=(snarf mo); COMP_CWORD=1; COMP_LINE='snarf mo'; COMP_POINT=8
         _snarf snarf mo snarf; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        snarf_bin().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "mount"), "{text}");
}

#[test]
fn zsh_and_fish_completions_are_scripts_for_their_shell() {
    for (shell, marker) in [("zsh", "#compdef snarf"), ("fish", "complete -c snarf")] {
        let text = snarf_ok(&["generate", "completions", shell]);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("preimage-mem"),
            "{shell} lacks mount's options"
        );
        // Syntax-check with the shell itself where it is installed.
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {shell}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &text).unwrap();
            let st = Command::new(shell)
                .arg("-n")
                .arg(file.path())
                .status()
                .unwrap();
            assert!(st.success(), "{shell} -n rejects the completions");
        }
    }
    let out = mounted::snarf(&["generate", "completions", "tcsh"]);
    assert!(!out.status.success());
}
