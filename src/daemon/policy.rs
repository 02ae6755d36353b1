//! The mount's rules, decided here and asked for by the FUSE adapter: who may command the
//! daemon through the control files, which owner and mode live volumes keep, and how much a
//! reader of `backups/` may cache. `fuse/` turns a refusal into its errno and holds no
//! rule of its own, so a rule is changed (and tested) in one place, without a kernel.

use crate::control::ControlFile;

/// Permission bits of every live volume: owner-only, since a volume holds a whole disk.
pub const VOLUME_PERM: u16 = 0o600;

/// Bytes of decompressed chunks each open file of `backups/` may cache: enough that a
/// reader going through a file in kernel-sized pieces decompresses each chunk once, small
/// enough that many open files do not crowd the daemon's memory.
pub const BACKUP_READ_CACHE: usize = 16 << 20;

/// How long after a failed attempt to reach the mount's repository (an ssh host that is
/// down) readers are answered with that failure before a new connection is tried: long
/// enough that a `ls -R backups/` does not start an ssh per lookup, short enough that the
/// mount recovers soon after the host is back.
pub const REPO_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// A request the mount's rules refuse, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Only the mount's owner and root may command the daemon.
    #[error("uid {uid} may not write {file}: only the mount's owner or root may")]
    ControlWriter {
        /// Who asked.
        uid: u32,
        /// The control file.
        file: ControlFile,
    },
    /// Live volumes keep [`VOLUME_PERM`] and the mount's owner.
    #[error("live volumes keep owner-only permissions and the mount owner; chmod and chown are not supported")]
    VolumeAttrs,
}

/// The user who mounted the store: the owner of everything the mount shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The owner's user id.
    pub uid: u32,
    /// The owner's group id.
    pub gid: u32,
}

impl Owner {
    /// Whether `uid` may write commands to `file`. Commands start backups and release
    /// snapshots others may be reading, so only the mount's owner and root may, even under
    /// `allow_other` (where the kernel already checks the permission bits).
    pub fn may_command(&self, uid: u32, file: ControlFile) -> Result<(), Denied> {
        if uid == 0 || uid == self.uid {
            Ok(())
        } else {
            Err(Denied::ControlWriter { uid, file })
        }
    }

    /// Whether a chmod or chown of a live volume keeps its rules: mode [`VOLUME_PERM`] and
    /// the mount owner's ids. One that keeps them (as `cp -p` or `rsync -a` ask) is allowed
    /// and changes nothing; the file type bits of `mode` are not a permission.
    pub fn may_set_volume_attrs(
        &self,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Denied> {
        if mode.is_some_and(|m| m & 0o7777 != u32::from(VOLUME_PERM))
            || uid.is_some_and(|u| u != self.uid)
            || gid.is_some_and(|g| g != self.gid)
        {
            return Err(Denied::VolumeAttrs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner = Owner {
        uid: 1000,
        gid: 1000,
    };

    #[test]
    fn the_owner_and_root_may_command_and_no_one_else() {
        for file in [ControlFile::Snapshot, ControlFile::Jobs] {
            assert_eq!(OWNER.may_command(1000, file), Ok(()));
            assert_eq!(OWNER.may_command(0, file), Ok(()));
            for uid in [1, 999, 1001, 65534, u32::MAX] {
                let e = OWNER.may_command(uid, file).unwrap_err();
                assert_eq!(e, Denied::ControlWriter { uid, file });
                let text = e.to_string();
                assert!(text.contains(&format!("uid {uid}")), "{text}");
                assert!(text.contains(file.name()), "{text}");
            }
        }
        // A mount owned by root is commanded by root only.
        let root = Owner { uid: 0, gid: 0 };
        assert!(root.may_command(0, ControlFile::Jobs).is_ok());
        assert!(root.may_command(1000, ControlFile::Jobs).is_err());
    }

    #[test]
    fn volumes_keep_owner_only_mode_and_the_mount_owner() {
        let ok = |mode, uid, gid| OWNER.may_set_volume_attrs(mode, uid, gid);
        assert_eq!(ok(None, None, None), Ok(()));
        assert_eq!(ok(Some(0o600), Some(1000), Some(1000)), Ok(()));
        // The file type bits a chmod carries are not permissions.
        assert_eq!(ok(Some(libc::S_IFREG | 0o600), None, None), Ok(()));
        for mode in [0o644, 0o400, 0o700, 0o4600, 0o1600, 0o2600, 0, 0o7777] {
            assert_eq!(
                ok(Some(mode), None, None),
                Err(Denied::VolumeAttrs),
                "{mode:o}"
            );
        }
        for id in [0, 999, 1001, u32::MAX] {
            assert_eq!(ok(None, Some(id), None), Err(Denied::VolumeAttrs));
            assert_eq!(ok(None, None, Some(id)), Err(Denied::VolumeAttrs));
        }
        assert!(Denied::VolumeAttrs.to_string().contains("chmod and chown"));
    }
}
