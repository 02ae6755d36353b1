//! The mount(8) option words of a snarf mount (`-o threads=8,preimage_mem=512M`, fstab's
//! fourth field): one table, [`OPTIONS`], that `snarf mount -o` parses, `mount.snarf` hands
//! its options to, and `snarf generate man` documents in snarf(8), so the three never drift.
//! Generic mount(8) words ([`GENERIC`]) are accepted and left to mount(8).

use std::path::PathBuf;

use clap::ValueEnum;

use super::mount_cmds::MountArgs;
use super::numbers;
use crate::daemon::FileIo;

/// One snarf mount option.
pub struct MountOption {
    /// The word before `=` (or the whole word for a flag).
    pub name: &'static str,
    /// What follows `=` as shown to users (`N`, `SIZE`), or `None` for a flag.
    pub value: Option<&'static str>,
    /// The `snarf mount` flag it stands for.
    pub flag: &'static str,
    /// What it does, one sentence for snarf(8).
    pub help: &'static str,
    /// Sets the option in the mount's arguments, or says why the value is refused.
    apply: fn(&mut MountArgs, &str) -> Result<(), String>,
}

/// Every snarf mount option, in the order snarf(8) lists them.
pub const OPTIONS: &[MountOption] = &[
    MountOption {
        name: "threads",
        value: Some("N"),
        flag: "--threads",
        help: "FUSE worker threads, 1 to 256.",
        apply: |a, v| {
            a.threads = v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=numbers::MAX_THREADS).contains(n))
                .ok_or_else(|| format!("'{v}' is not a number of threads from 1 to 256"))?
                as usize;
            Ok(())
        },
    },
    MountOption {
        name: "allow_other",
        value: None,
        flag: "--allow-other",
        help: "Let other users in; permission bits still apply (volumes stay owner-only, only the owner writes control files).",
        apply: |a, _| {
            a.allow_other = true;
            Ok(())
        },
    },
    MountOption {
        name: "preimage_mem",
        value: Some("SIZE"),
        flag: "--preimage-mem",
        help: "Memory for pre-images before they spill to disk, 0 to 1P (overrides the store's setting).",
        apply: |a, v| {
            a.preimage_mem = Some(numbers::budget(v)?);
            Ok(())
        },
    },
    MountOption {
        name: "preimage_disk",
        value: Some("SIZE"),
        flag: "--preimage-disk",
        help: "Disk for spilled pre-images before writers are slowed, 0 to 1P (overrides the store's setting).",
        apply: |a, v| {
            a.preimage_disk = Some(numbers::budget(v)?);
            Ok(())
        },
    },
    MountOption {
        name: "break_after",
        value: Some("SECONDS"),
        flag: "--break-after",
        help: "Seconds a writer may wait for pre-image room before a snapshot is broken, 0 to 86400.",
        apply: |a, v| {
            a.break_after = Some(numbers::break_after(v)?);
            Ok(())
        },
    },
    MountOption {
        name: "snapshots",
        value: Some("persistent|volatile"),
        flag: "--snapshots",
        help: "What mkdir snapshots/NAME takes: persistent (outlives the mount and a crash) or volatile (memory first, gone at unmount); overrides the store's setting.",
        apply: |a, v| {
            a.snapshots = Some(numbers::durability(v)?);
            Ok(())
        },
    },
    MountOption {
        name: "repo",
        value: Some("PATH"),
        flag: "--repo",
        help: "Repository shown under backups/ and used by jobs started from control/jobs.",
        apply: |a, v| {
            if v.is_empty() {
                return Err("repo= needs a path".to_string());
            }
            a.repo = Some(PathBuf::from(v));
            Ok(())
        },
    },
    MountOption {
        name: "password_file",
        value: Some("FILE"),
        flag: "--password-file",
        help: "File holding the passphrase of an encrypted repository, for backups/ and the jobs (or SNARF_PASSWORD in the mount's environment); never copied into the store.",
        apply: |_, v| {
            if v.is_empty() {
                return Err("password_file= needs a file".to_string());
            }
            crate::repo::passphrase::set_password_file(std::path::Path::new(v));
            Ok(())
        },
    },
    MountOption {
        name: "live_io",
        value: Some("direct|buffered"),
        flag: "--live-io",
        help: "direct (default): each write(2) of up to 1 MiB is entirely in or out of a snapshot; buffered: through the page cache.",
        apply: |a, v| {
            a.live_io = file_io(v)?;
            Ok(())
        },
    },
    MountOption {
        name: "snapshot_io",
        value: Some("direct|buffered"),
        flag: "--snapshot-io",
        help: "direct (default): snapshot reads go to the daemon, not cached twice; buffered: through the page cache.",
        apply: |a, v| {
            a.snapshot_io = file_io(v)?;
            Ok(())
        },
    },
    MountOption {
        name: "foreground",
        value: None,
        flag: "--foreground",
        help: "Stay in the foreground and log to stderr too (for systemd and debugging).",
        apply: |a, _| {
            a.foreground = true;
            Ok(())
        },
    },
];

/// Generic mount(8) words accepted and left to mount(8) (a trailing `*` matches any rest).
pub const GENERIC: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "sync",
    "async",
    "x-*",
    "comment=*",
];

/// Why a snarf mount cannot be read-only; said for `ro` and `-r`.
pub const READ_WRITE_ONLY: &str =
    "snarf mounts are read-write; snapshots and backups under them are read-only by themselves";

/// The accepted options as one line, for error messages.
pub fn accepted() -> String {
    OPTIONS
        .iter()
        .map(|o| match o.value {
            Some(v) => format!("{}={v}", o.name),
            None => o.name.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_generic(word: &str) -> bool {
    GENERIC.iter().any(|g| match g.strip_suffix('*') {
        Some(prefix) => word.starts_with(prefix),
        None => word == *g,
    })
}

/// Applies comma-separated mount options (each `-o` value) to `args`, left to right.
pub fn apply(args: &mut MountArgs, lists: &[String]) -> Result<(), String> {
    for word in lists.iter().flat_map(|l| l.split(',')) {
        if word.is_empty() || is_generic(word) {
            continue;
        }
        if word == "ro" {
            return Err(READ_WRITE_ONLY.to_string());
        }
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let Some(option) = OPTIONS.iter().find(|o| o.name == name) else {
            return Err(format!(
                "unknown option '{word}'; snarf takes {}",
                accepted()
            ));
        };
        let value = match (option.value, value) {
            (Some(_), Some(v)) => v,
            (None, None) => "",
            (Some(shape), None) => {
                return Err(format!("mount option {name} needs a value: {name}={shape}"))
            }
            (None, Some(_)) => {
                return Err(format!("mount option {name} takes no value: write {name}"))
            }
        };
        (option.apply)(args, value).map_err(|e| format!("mount option {word}: {e}"))?;
    }
    Ok(())
}

/// An I/O mode of `live_io=` or `snapshot_io=`.
fn file_io(v: &str) -> Result<FileIo, String> {
    FileIo::from_str(v, false).map_err(|_| format!("'{v}' is not direct or buffered"))
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::{CommandFactory, Parser};

    fn args(opts: &str) -> Result<MountArgs, String> {
        let cli = Cli::try_parse_from(["snarf", "mount", "/s", "/m"]).unwrap();
        let Command::Mount(mut a) = cli.command else {
            unreachable!()
        };
        apply(&mut a, &[opts.to_string()])?;
        Ok(a)
    }

    #[test]
    fn every_option_sets_what_its_flag_sets() {
        let a = args("defaults,threads=3,allow_other,preimage_mem=64M,preimage_disk=1G,break_after=2.5,repo=/r x,live_io=buffered,snapshot_io=buffered,snapshots=volatile,foreground,_netdev,x-systemd.automount,noatime").unwrap();
        assert_eq!(a.threads, 3);
        assert!(a.allow_other && a.foreground);
        assert_eq!(a.preimage_mem, Some(64 << 20));
        assert_eq!(a.preimage_disk, Some(1 << 30));
        assert_eq!(a.break_after, Some(2.5));
        assert_eq!(a.repo, Some(PathBuf::from("/r x")));
        assert_eq!(a.live_io, FileIo::Buffered);
        assert_eq!(a.snapshot_io, FileIo::Buffered);
        assert_eq!(a.snapshots, Some(crate::store::Durability::Volatile));
    }

    #[test]
    fn bad_words_and_values_are_refused_with_the_accepted_form() {
        let e = args("bogus=1").unwrap_err();
        assert!(
            e.contains("unknown option 'bogus=1'") && e.contains("preimage_mem=SIZE"),
            "{e}"
        );
        for bad in [
            "threads=0",
            "threads=257",
            "threads=-5",
            "threads=",
            "preimage_mem=NaN",
            "preimage_disk=2P",
            "break_after=inf",
            "break_after=-1",
            "live_io=mmap",
            "snapshot_io=",
            "snapshots=durable",
            "repo=",
        ] {
            let e = args(bad).unwrap_err();
            assert!(e.starts_with("mount option "), "{bad}: {e}");
        }
        assert!(args("threads").unwrap_err().contains("threads=N"));
        assert!(args("allow_other=1")
            .unwrap_err()
            .contains("takes no value"));
        assert!(args("ro").unwrap_err().contains("read-write"));
    }

    #[test]
    fn every_option_names_a_real_mount_flag() {
        let mut cmd = Cli::command();
        // Built, so the global flags (--remote-path, --password-file) are the mount's too.
        cmd.build();
        let mount = cmd.find_subcommand("mount").unwrap();
        for o in OPTIONS {
            let long = o.flag.trim_start_matches("--");
            assert!(
                mount.get_arguments().any(|a| a.get_long() == Some(long)),
                "{} maps to {} which snarf mount lacks",
                o.name,
                o.flag
            );
        }
    }
}
