//! The inode table: which inode number stands for which object on the mount. Fixed numbers
//! for the skeleton (root, `live/`, `snapshots/`, `backups/`, `control/` and its files);
//! dynamic ones for volumes (by volume id, so a rename keeps the inode), snapshot
//! directories and snapshot files (by snapshot epoch and volume name). The kernel's lookup
//! counts are kept, so an entry goes once the kernel forgets it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::control::ControlFile;
use crate::repo::BackupInfo;
use crate::snapshot::Snapshot;
use crate::store::{Volume, VolumeId};

/// Inode of the mount's root.
pub const ROOT: u64 = 1;
/// Inode of `live/`.
pub const LIVE: u64 = 2;
/// Inode of `snapshots/`.
pub const SNAPSHOTS: u64 = 3;
/// Inode of `backups/`.
pub const BACKUPS: u64 = 4;
/// Inode of `control/`.
pub const CONTROL: u64 = 5;
/// Inodes of the control files: this plus their index in `ControlFile::ALL`.
const CONTROL_FILES: u64 = 16;
/// First inode handed out for volumes and snapshots.
const FIRST_DYNAMIC: u64 = 1024;

/// What an inode stands for.
#[derive(Debug, Clone)]
pub enum Node {
    /// The root directory.
    Root,
    /// `live/`.
    LiveDir,
    /// `snapshots/`.
    SnapshotsDir,
    /// `backups/`.
    BackupsDir,
    /// `control/`.
    ControlDir,
    /// A file under `control/`.
    Control(ControlFile),
    /// A live volume under `live/`.
    Volume(Arc<Volume>),
    /// A snapshot's directory under `snapshots/`.
    SnapDir(Arc<Snapshot>),
    /// A frozen volume under `snapshots/NAME/`.
    SnapFile(Arc<Snapshot>, String),
    /// A committed backup's directory under `backups/`.
    BackupDir(Arc<BackupInfo>),
    /// A backed-up volume under `backups/ID/`.
    BackupFile(Arc<BackupInfo>, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Volume(VolumeId),
    SnapDir(u64),
    SnapFile(u64, String),
    BackupDir(String),
    BackupFile(String, String),
}

impl Node {
    fn key(&self) -> Option<Key> {
        match self {
            Node::Volume(v) => Some(Key::Volume(v.id())),
            Node::SnapDir(s) => Some(Key::SnapDir(s.epoch())),
            Node::SnapFile(s, name) => Some(Key::SnapFile(s.epoch(), name.clone())),
            Node::BackupDir(m) => Some(Key::BackupDir(m.id.to_string())),
            Node::BackupFile(m, name) => Some(Key::BackupFile(m.id.to_string(), name.clone())),
            _ => None,
        }
    }

    fn fixed_ino(&self) -> Option<u64> {
        Some(match self {
            Node::Root => ROOT,
            Node::LiveDir => LIVE,
            Node::SnapshotsDir => SNAPSHOTS,
            Node::BackupsDir => BACKUPS,
            Node::ControlDir => CONTROL,
            Node::Control(f) => {
                CONTROL_FILES + ControlFile::ALL.iter().position(|x| x == f)? as u64
            }
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
struct Table {
    nodes: HashMap<u64, (Node, u64)>,
    keys: HashMap<Key, u64>,
    next: u64,
}

/// The table; cheap shared reads, short exclusive writes.
#[derive(Debug)]
pub struct Inodes {
    table: RwLock<Table>,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes {
            table: RwLock::new(Table {
                next: FIRST_DYNAMIC,
                ..Table::default()
            }),
        }
    }
}

impl Inodes {
    /// What inode `ino` stands for.
    pub fn get(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => return Some(Node::Root),
            LIVE => return Some(Node::LiveDir),
            SNAPSHOTS => return Some(Node::SnapshotsDir),
            BACKUPS => return Some(Node::BackupsDir),
            CONTROL => return Some(Node::ControlDir),
            _ => {}
        }
        if (CONTROL_FILES..CONTROL_FILES + ControlFile::ALL.len() as u64).contains(&ino) {
            return Some(Node::Control(
                ControlFile::ALL[(ino - CONTROL_FILES) as usize],
            ));
        }
        self.table.read().nodes.get(&ino).map(|(n, _)| n.clone())
    }

    /// The inode number a directory listing shows for a node: its inode if the kernel
    /// knows it, else a stable stand-in. Listings never create entries, because the
    /// kernel would never forget them.
    pub fn peek(&self, node: &Node) -> u64 {
        if let Some(ino) = node.fixed_ino() {
            return ino;
        }
        let Some(key) = node.key() else {
            return 0;
        };
        if let Some(&ino) = self.table.read().keys.get(&key) {
            return ino;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (1 << 62) | (h.finish() >> 2)
    }

    /// The inode for a node, counting one kernel lookup of it.
    pub fn lookup(&self, node: &Node) -> u64 {
        if let Some(ino) = node.fixed_ino() {
            return ino;
        }
        self.insert(node, 1)
    }

    fn insert(&self, node: &Node, lookups: u64) -> u64 {
        let key = node.key();
        let mut t = self.table.write();
        if let Some(&ino) = key.as_ref().and_then(|k| t.keys.get(k)) {
            if let Some(entry) = t.nodes.get_mut(&ino) {
                // Refresh the node: a volume renamed keeps its inode but not its old Arc.
                entry.0 = node.clone();
                entry.1 += lookups;
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(ino, (node.clone(), lookups));
        if let Some(k) = key {
            t.keys.insert(k, ino);
        }
        ino
    }

    /// The kernel forgot `n` lookups of `ino`; drops the entry when none are left.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.table.write();
        let gone = match t.nodes.get_mut(&ino) {
            Some(entry) => {
                entry.1 = entry.1.saturating_sub(n);
                entry.1 == 0
            }
            None => false,
        };
        if gone {
            if let Some((node, _)) = t.nodes.remove(&ino) {
                if let Some(k) = node.key() {
                    t.keys.remove(&k);
                }
            }
        }
    }

    /// Number of dynamic entries held (for tests and status).
    pub fn len(&self) -> usize {
        self.table.read().nodes.len()
    }

    /// Whether no dynamic entries are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
