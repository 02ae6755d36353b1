//! The host-wide registry: where the local ends of `snarf backup --host` jobs (type
//! `sshpipe`) register, since the host that starts a job on another host may have no store
//! of its own. It is `/run/snarf/pids` for root and `$XDG_RUNTIME_DIR/snarf/pids` for
//! anyone else: a tmpfs that starts empty at each boot and belongs to that user, so
//! entries of another boot never linger and no user can plant entries in another's file.
//! The file format, locking and cleaning are those of a store's registry ([`Registry`]).

use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, Registry, Result};

/// The run folder of root's host-wide registry.
pub const ROOT_RUN_DIR: &str = "/run/snarf";
/// The folder under `$XDG_RUNTIME_DIR` that holds a user's host-wide registry.
pub const USER_SUBDIR: &str = "snarf";

/// The host-wide run folder for a process of effective uid `euid`, whose
/// `XDG_RUNTIME_DIR` is `xdg`: `/run/snarf` for root, `$XDG_RUNTIME_DIR/snarf` otherwise.
/// A missing, empty or relative `XDG_RUNTIME_DIR` is refused for a user other than root
/// (a relative one would put the registry wherever the command happens to run).
pub fn run_dir_for(euid: u32, xdg: Option<&OsStr>) -> Result<PathBuf> {
    if euid == 0 {
        return Ok(PathBuf::from(ROOT_RUN_DIR));
    }
    match xdg.map(Path::new) {
        Some(dir) if dir.is_absolute() => Ok(dir.join(USER_SUBDIR)),
        Some(dir) if !dir.as_os_str().is_empty() => Err(Error::NoHostRunDir {
            why: format!("XDG_RUNTIME_DIR={} is not an absolute path", dir.display()),
        }),
        _ => Err(Error::NoHostRunDir {
            why: "XDG_RUNTIME_DIR is not set".into(),
        }),
    }
}

/// The host-wide run folder of this process (see [`run_dir_for`]).
pub fn run_dir() -> Result<PathBuf> {
    run_dir_for(
        crate::sys::proc::euid(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )
}

/// This process's host-wide registry, its folder made (mode 0700) if missing. The folder
/// must belong to this user and be writable by no one else, or it is refused: a registry
/// another user can write would let them name processes for this user's commands.
pub fn registry() -> Result<Registry> {
    let dir = run_dir()?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::io(
                format!("creating the host-wide run folder {}", dir.display()),
                e,
            ))
        }
    }
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    if let Some(why) = refused_folder(
        meta.is_dir(),
        meta.uid(),
        meta.permissions().mode(),
        crate::sys::proc::euid(),
    ) {
        return Err(Error::NoHostRunDir {
            why: format!("{} {why}", dir.display()),
        });
    }
    Ok(Registry::new(dir))
}

/// Why a folder of these properties cannot hold `euid`'s host-wide registry, if it cannot.
fn refused_folder(is_dir: bool, owner: u32, mode: u32, euid: u32) -> Option<&'static str> {
    if !is_dir {
        Some("is not a folder (a symbolic link or a file is there)")
    } else if owner != euid {
        Some("belongs to another user")
    } else if mode & 0o022 != 0 {
        Some("is writable by other users")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_run_snarf_whatever_xdg_says() {
        for xdg in [None, Some("/run/user/0"), Some("relative"), Some("")] {
            assert_eq!(
                run_dir_for(0, xdg.map(OsStr::new)).unwrap(),
                PathBuf::from("/run/snarf")
            );
        }
    }

    #[test]
    fn a_user_uses_their_runtime_dir() {
        assert_eq!(
            run_dir_for(1000, Some(OsStr::new("/run/user/1000"))).unwrap(),
            PathBuf::from("/run/user/1000/snarf")
        );
        // The registry file itself is pids in that folder.
        assert_eq!(
            Registry::new(run_dir_for(1000, Some(OsStr::new("/run/user/1000"))).unwrap()).path(),
            PathBuf::from("/run/user/1000/snarf/pids")
        );
    }

    #[test]
    fn a_user_without_an_absolute_runtime_dir_is_told_so() {
        for (xdg, want) in [
            (None, "XDG_RUNTIME_DIR is not set"),
            (Some(""), "XDG_RUNTIME_DIR is not set"),
            (Some("run/user/1000"), "is not an absolute path"),
        ] {
            let e = run_dir_for(1000, xdg.map(OsStr::new))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("snarf pids"), "{e}");
        }
    }

    #[test]
    fn folders_others_could_write_are_refused() {
        assert_eq!(refused_folder(true, 1000, 0o40700, 1000), None);
        assert_eq!(refused_folder(true, 1000, 0o40755, 1000), None);
        assert!(refused_folder(false, 1000, 0o120777, 1000).is_some());
        assert!(refused_folder(true, 0, 0o40700, 1000).is_some());
        assert!(refused_folder(true, 1000, 0o40777, 1000).is_some());
        assert!(refused_folder(true, 1000, 0o40720, 1000).is_some());
    }
}
