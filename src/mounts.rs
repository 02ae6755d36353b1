//! The system's mount table (`/proc/self/mountinfo`): is a directory a mount point, of which
//! filesystem, from which source, and is its FUSE daemon still there.

use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// The filesystem type snarf mounts show in the mount table.
pub const FSTYPE: &str = "fuse.snarf";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type, e.g. `fuse.snarf`.
    pub fstype: String,
    /// Source, for snarf the store's path.
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes in mount paths.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + (d - b'0') as u32);
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// The mount table now.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The topmost mount at exactly `path` (already canonical), if any.
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mountpoint == path))
}

/// Whether a FUSE mount's daemon is gone: the kernel answers "transport endpoint is not
/// connected" for it.
pub fn is_stale(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        Ok(_) => false,
    }
}

/// Unmounts `path`: umount(2) as root, `fusermount3 -u` otherwise. With `lazy`, a busy
/// mount is detached now and goes once its last file is closed.
pub fn unmount(path: &Path, lazy: bool) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if crate::sys::proc::euid() == 0 {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte")
        })?;
        let flags = if lazy {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        return Ok(rustix::mount::unmount(c.as_c_str(), flags)?);
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(path).output()?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let kind = if text.contains("busy") {
        std::io::Error::from_raw_os_error(libc::EBUSY)
    } else {
        std::io::Error::other(text.trim().to_string())
    };
    Err(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines_with_escapes() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - fuse.snarf /srv/my\\040store rw,user_id=0\n\
                    22 1 8:1 / / rw - ext4 /dev/vda rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "fuse.snarf");
        assert_eq!(m[0].source, "/srv/my store");
        assert_eq!(m[1].fstype, "ext4");
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(mount_at(Path::new("/")).unwrap().is_some());
    }
}
