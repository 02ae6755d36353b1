//! The mount's rules, decided here and asked for by the FUSE adapter: who may command the
//! daemon through the control files. `fuse/` turns a refusal into its errno and holds no
//! rule of its own, so a rule is changed (and tested) in one place, without a kernel.

use crate::control::ControlFile;

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
}
