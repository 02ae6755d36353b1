//! The disk behind the power-cut filesystem, as plain Rust: every inode's current contents
//! (what programs see now) and what of it is durable (what a power cut leaves).
//!
//! The rules are POSIX's, read strictly, as LazyFS models them:
//! * a file's data, size and attributes are durable as of its last fsync or fdatasync;
//! * a directory entry change (create, mkdir, unlink, rmdir, rename) is durable once the
//!   directory it changes was fsynced after it; a rename across two directories needs both
//!   (until then it is undone on both sides, which loses more than either half);
//! * an entry change that depends on one that is lost (the same name, or the same inode) is
//!   lost too, so a cut never produces a state no disk could (an inode in two places);
//! * whatever is not reachable from the root through durable entries is gone: a file that
//!   was fsynced but whose name never was, an unlinked file still open.
//!
//! [`Model::cut`] computes that image. With a random generator it is harsher, as real disks
//! that reorder writes are: every lost change survives with probability one half, file data
//! page by page, so a file can come back with some of its unsynced pages and not others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rand::Rng;

/// An inode number; [`ROOT`] is the root directory.
pub type Ino = u64;
/// The root directory's inode.
pub const ROOT: Ino = 1;
/// Granularity at which unsynced data is torn.
const PAGE: u64 = 4096;

/// An errno.
pub type Errno = i32;
/// Result of a model operation.
pub type Res<T> = Result<T, Errno>;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A Unix socket's name (bind(2) makes one).
    Socket,
}

/// Attributes kept per inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last data change.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

impl Attr {
    fn new(perm: u16, uid: u32, gid: u32) -> Attr {
        let now = SystemTime::now();
        Attr {
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
        }
    }
}

/// A data change not yet made durable.
#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// One inode.
#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    attr: Attr,
    nlink: u32,
    data: Vec<u8>,
    entries: BTreeMap<OsString, Ino>,
    /// Data and attributes as of the last fsync.
    durable_data: Arc<Vec<u8>>,
    durable_attr: Attr,
    /// Data changes since the last fsync, in order (for torn cuts).
    pending: Vec<DataOp>,
    /// Sequence number of this directory's last fsync (0: never).
    synced_at: u64,
}

impl Node {
    fn new(kind: Kind, attr: Attr) -> Node {
        Node {
            kind,
            attr,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Vec::new(),
            entries: BTreeMap::new(),
            durable_data: Arc::new(Vec::new()),
            durable_attr: attr,
            pending: Vec::new(),
            synced_at: 0,
        }
    }
}

/// One directory entry change: the entries it sets (`None` removes) and the inodes whose
/// links it changes.
#[derive(Clone, Debug)]
struct MetaOp {
    seq: u64,
    sets: Vec<(Ino, OsString, Option<Ino>)>,
    inos: Vec<Ino>,
}

/// One inode of an [`Image`].
#[derive(Clone, Debug)]
pub struct ImageNode {
    /// What it is.
    pub kind: Kind,
    /// Its attributes.
    pub attr: Attr,
    /// File contents.
    pub data: Arc<Vec<u8>>,
    /// Directory entries.
    pub entries: BTreeMap<OsString, Ino>,
}

/// What a disk holds after a power cut: every inode reachable from the root.
#[derive(Clone, Debug)]
pub struct Image {
    /// Inodes by number.
    pub nodes: BTreeMap<Ino, ImageNode>,
}

impl Image {
    /// Paths of every file and folder (folders end in `/`), sorted, with file sizes.
    pub fn listing(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.walk(ROOT, String::new(), &mut |path, node| {
            if node.kind == Kind::Dir {
                out.push((format!("{path}/"), 0));
            } else {
                out.push((path.to_string(), node.data.len() as u64));
            }
        });
        out.sort();
        out
    }

    /// The node at a relative path, if any.
    pub fn get(&self, path: &str) -> Option<&ImageNode> {
        let mut ino = ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = *self.nodes.get(&ino)?.entries.get(OsStr::new(part))?;
        }
        self.nodes.get(&ino)
    }

    /// A fingerprint of the whole image (names, kinds, modes, contents), to skip checking
    /// the same image twice.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        self.walk(ROOT, String::new(), &mut |path, node| {
            h.update(path.as_bytes());
            h.update(&[0, node.kind as u8]);
            h.update(&node.attr.perm.to_le_bytes());
            h.update(&(node.data.len() as u64).to_le_bytes());
            h.update(&node.data);
        });
        *h.finalize().as_bytes()
    }

    fn walk(&self, ino: Ino, path: String, f: &mut dyn FnMut(&str, &ImageNode)) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        f(&path, node);
        for (name, child) in &node.entries {
            self.walk(*child, format!("{path}/{}", name.to_string_lossy()), f);
        }
    }

    /// Writes the image into an empty real directory (to look at a failing cut by hand).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        let mut result = Ok(());
        self.walk(ROOT, String::new(), &mut |path, node| {
            if result.is_err() || path.is_empty() {
                return;
            }
            let target = dir.join(path.trim_start_matches('/'));
            result = match node.kind {
                Kind::Dir => std::fs::create_dir_all(&target),
                Kind::File => std::fs::write(&target, &node.data[..]),
                Kind::Socket => Ok(()),
            };
        });
        result
    }
}

/// Counts of the operations the model served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// fsync and fdatasync of files.
    pub file_syncs: u64,
    /// fsync of directories.
    pub dir_syncs: u64,
    /// Directory entry changes.
    pub entry_changes: u64,
    /// Writes and truncations.
    pub data_changes: u64,
}

/// The filesystem's state.
#[derive(Debug)]
pub struct Model {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    seq: u64,
    /// Durable entries of every directory when this model started.
    base: HashMap<Ino, BTreeMap<OsString, Ino>>,
    /// Entry changes since then.
    log: Vec<MetaOp>,
    /// What was served.
    pub counters: Counters,
}

impl Model {
    /// An empty filesystem (a root folder), all durable.
    pub fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Kind::Dir, Attr::new(0o755, 0, 0)));
        Model::with_nodes(nodes)
    }

    fn with_nodes(mut nodes: HashMap<Ino, Node>) -> Model {
        // No hard links: a file has one name; a folder has its own, "." and its subfolders'.
        let subdirs: HashMap<Ino, u32> = nodes
            .iter()
            .map(|(i, n)| {
                let k = n
                    .entries
                    .values()
                    .filter(|c| nodes.get(c).is_some_and(|c| c.kind == Kind::Dir))
                    .count() as u32;
                (*i, k)
            })
            .collect();
        for (i, n) in nodes.iter_mut() {
            n.nlink = match n.kind {
                Kind::Dir => 2 + subdirs.get(i).copied().unwrap_or(0),
                _ => 1,
            };
        }
        let base = nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::Dir)
            .map(|(i, n)| (*i, n.entries.clone()))
            .collect();
        let next_ino = nodes.keys().max().copied().unwrap_or(ROOT) + 1;
        Model {
            nodes,
            next_ino,
            seq: 1,
            base,
            log: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The filesystem a power cut left: everything in `image` is durable.
    pub fn from_image(image: &Image) -> Model {
        let mut nodes = HashMap::new();
        for (ino, n) in &image.nodes {
            let mut node = Node::new(n.kind, n.attr);
            node.data = n.data.to_vec();
            node.durable_data = n.data.clone();
            node.entries = n.entries.clone();
            nodes.insert(*ino, node);
        }
        Model::with_nodes(nodes)
    }

    /// A filesystem holding a copy of a real directory tree (files and folders), all
    /// durable: an existing repository to crash from.
    pub fn from_dir(dir: &Path) -> std::io::Result<Model> {
        let mut m = Model::new();
        m.load_dir(dir, ROOT)?;
        Ok(Model::with_nodes(m.nodes))
    }

    fn load_dir(&mut self, dir: &Path, ino: Ino) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let perm = (meta.permissions().mode() & 0o7777) as u16;
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            let child = self.next_ino;
            self.next_ino += 1;
            let mut node = Node::new(kind, Attr::new(perm, 0, 0));
            if kind == Kind::File {
                node.data = std::fs::read(entry.path())?;
                node.durable_data = Arc::new(node.data.clone());
            }
            self.nodes.insert(child, node);
            self.node_mut(ino)
                .map_err(std::io::Error::from_raw_os_error)?
                .entries
                .insert(entry.file_name(), child);
            if kind == Kind::Dir {
                self.load_dir(&entry.path(), child)?;
            }
        }
        Ok(())
    }

    fn node(&self, ino: Ino) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Res<&Node> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn record(&mut self, sets: Vec<(Ino, OsString, Option<Ino>)>, inos: Vec<Ino>) {
        let seq = self.next_seq();
        self.counters.entry_changes += 1;
        for (dir, _, _) in &sets {
            if let Some(d) = self.nodes.get_mut(dir) {
                let now = SystemTime::now();
                d.attr.mtime = now;
                d.attr.ctime = now;
            }
        }
        self.log.push(MetaOp { seq, sets, inos });
    }

    /// The inode `name` in `parent` names.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Res<Ino> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Kind, attributes, size and link count of an inode.
    pub fn stat(&self, ino: Ino) -> Res<(Kind, Attr, u64, u32)> {
        let n = self.node(ino)?;
        Ok((n.kind, n.attr, n.data.len() as u64, n.nlink))
    }

    /// Creates a file, folder or socket name.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Res<Ino> {
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(kind, Attr::new(perm, uid, gid)));
        self.node_mut(parent)?.entries.insert(name.to_owned(), ino);
        if kind == Kind::Dir {
            self.node_mut(parent)?.nlink += 1;
        }
        self.record(vec![(parent, name.to_owned(), Some(ino))], vec![ino]);
        Ok(ino)
    }

    /// Adds the name `new_name` in `new_parent` for the file `ino`, as link(2) does: a name
    /// change of `new_parent`, durable once that folder is fsynced.
    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Res<()> {
        if new_name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.node(ino)?.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(new_parent)?.entries.contains_key(new_name) {
            return Err(libc::EEXIST);
        }
        self.node_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        let node = self.node_mut(ino)?;
        node.nlink += 1;
        node.attr.ctime = SystemTime::now();
        self.record(
            vec![(new_parent, new_name.to_owned(), Some(ino))],
            vec![ino],
        );
        Ok(())
    }

    /// Removes a name that is not a folder (`dir` false) or an empty folder (`dir` true).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (dir, node.kind == Kind::Dir) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !node.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.node_mut(parent)?.entries.remove(name);
        let node = self.node_mut(ino)?;
        // A file keeps its other names (hard links).
        node.nlink = if dir { 0 } else { node.nlink.saturating_sub(1) };
        node.attr.ctime = SystemTime::now();
        if dir {
            self.node_mut(parent)?.nlink -= 1;
        }
        self.record(vec![(parent, name.to_owned(), None)], vec![ino]);
        Ok(())
    }

    /// Renames, replacing a target as rename(2) does (`noreplace`: refuse to).
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        if new_name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let is_dir = self.node(ino)?.kind == Kind::Dir;
        if is_dir && self.is_ancestor(ino, new_parent) {
            return Err(libc::EINVAL);
        }
        let replaced = self.dir(new_parent)?.entries.get(new_name).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        let mut inos = vec![ino];
        if let Some(old) = replaced {
            if noreplace {
                return Err(libc::EEXIST);
            }
            let old_node = self.node(old)?;
            match (is_dir, old_node.kind == Kind::Dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !old_node.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            let old_node = self.node_mut(old)?;
            old_node.nlink = 0;
            if is_dir {
                self.node_mut(new_parent)?.nlink -= 1;
            }
            inos.push(old);
        }
        self.node_mut(parent)?.entries.remove(name);
        self.node_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if is_dir && parent != new_parent {
            self.node_mut(parent)?.nlink -= 1;
            self.node_mut(new_parent)?.nlink += 1;
        }
        self.node_mut(ino)?.attr.ctime = SystemTime::now();
        self.record(
            vec![
                (parent, name.to_owned(), None),
                (new_parent, new_name.to_owned(), Some(ino)),
            ],
            inos,
        );
        Ok(())
    }

    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        // Folders have one name each, so walking up by searching parents terminates.
        let mut guard = 0;
        while ino != ROOT && guard < 10_000 {
            if ino == ancestor {
                return true;
            }
            match self
                .nodes
                .iter()
                .find(|(_, n)| n.kind == Kind::Dir && n.entries.values().any(|c| *c == ino))
            {
                Some((p, _)) => ino = *p,
                None => return false,
            }
            guard += 1;
        }
        ino == ancestor
    }

    /// Writes bytes into a file.
    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Res<()> {
        let end = offset.checked_add(bytes.len() as u64).ok_or(libc::EFBIG)?;
        if end > 1 << 40 {
            return Err(libc::EFBIG);
        }
        let node = self.node_mut(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        if node.data.len() < end as usize {
            node.data.resize(end as usize, 0);
        }
        node.data[offset as usize..end as usize].copy_from_slice(bytes);
        node.pending.push(DataOp::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        let now = SystemTime::now();
        node.attr.mtime = now;
        node.attr.ctime = now;
        self.counters.data_changes += 1;
        Ok(())
    }

    /// Reads up to `size` bytes of a file at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Res<&[u8]> {
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let start = (offset as usize).min(node.data.len());
        let end = start.saturating_add(size as usize).min(node.data.len());
        Ok(&node.data[start..end])
    }

    /// Sets a file's length.
    pub fn set_len(&mut self, ino: Ino, len: u64) -> Res<()> {
        if len > 1 << 40 {
            return Err(libc::EFBIG);
        }
        let node = self.node_mut(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        node.data.resize(len as usize, 0);
        node.pending.push(DataOp::SetLen(len));
        let now = SystemTime::now();
        node.attr.mtime = now;
        node.attr.ctime = now;
        self.counters.data_changes += 1;
        Ok(())
    }

    /// Changes mode, owner or times.
    pub fn set_attr(
        &mut self,
        ino: Ino,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> Res<()> {
        let node = self.node_mut(ino)?;
        if let Some(p) = perm {
            node.attr.perm = p;
        }
        if let Some(u) = uid {
            node.attr.uid = u;
        }
        if let Some(g) = gid {
            node.attr.gid = g;
        }
        if let Some(t) = mtime {
            node.attr.mtime = t;
        }
        node.attr.ctime = SystemTime::now();
        Ok(())
    }

    /// fsync, fdatasync (modelled as fsync: the size is the metadata that matters) or, for a
    /// folder, fsync of its entries.
    pub fn fsync(&mut self, ino: Ino) -> Res<()> {
        let seq = self.next_seq();
        let node = self.node_mut(ino)?;
        node.durable_attr = node.attr;
        if node.kind == Kind::Dir {
            node.synced_at = seq;
            self.counters.dir_syncs += 1;
        } else {
            if !node.pending.is_empty() {
                node.durable_data = Arc::new(node.data.clone());
                node.pending.clear();
            }
            self.counters.file_syncs += 1;
        }
        Ok(())
    }

    /// The path of an inode as programs see it now ("/" for the root), if it has a name.
    pub fn path(&self, ino: Ino) -> Option<String> {
        if ino == ROOT {
            return Some("/".into());
        }
        let mut todo = vec![(ROOT, String::new())];
        while let Some((dir, prefix)) = todo.pop() {
            for (name, child) in &self.nodes.get(&dir)?.entries {
                let p = format!("{prefix}/{}", name.to_string_lossy());
                if *child == ino {
                    return Some(p);
                }
                if self.nodes.get(child).is_some_and(|c| c.kind == Kind::Dir) {
                    todo.push((*child, p));
                }
            }
        }
        None
    }

    /// A folder's entries with their kinds, sorted by name.
    pub fn entries(&self, ino: Ino) -> Res<Vec<(OsString, Ino, Kind)>> {
        let d = self.dir(ino)?;
        Ok(d.entries
            .iter()
            .map(|(n, i)| {
                let kind = self.nodes.get(i).map(|c| c.kind).unwrap_or(Kind::File);
                (n.clone(), *i, kind)
            })
            .collect())
    }

    /// What a power cut now leaves: exactly what was made durable, or with `torn`, that and
    /// a random part of the rest.
    pub fn cut(&self, mut torn: Option<&mut dyn rand::RngCore>) -> Image {
        let mut entries = self.base.clone();
        let mut lost_keys: HashSet<(Ino, OsString)> = HashSet::new();
        let mut lost_inos: HashSet<Ino> = HashSet::new();
        for op in &self.log {
            let durable = op
                .sets
                .iter()
                .all(|(dir, _, _)| self.nodes.get(dir).is_some_and(|d| d.synced_at > op.seq));
            let survives = durable || torn.as_mut().is_some_and(|r| r.random_bool(0.5));
            let blocked = op
                .sets
                .iter()
                .any(|(d, n, _)| lost_keys.contains(&(*d, n.clone())))
                || op.inos.iter().any(|i| lost_inos.contains(i));
            if survives && !blocked {
                for (dir, name, target) in &op.sets {
                    let e = entries.entry(*dir).or_default();
                    match target {
                        Some(i) => {
                            e.insert(name.clone(), *i);
                        }
                        None => {
                            e.remove(name);
                        }
                    }
                }
            } else {
                for (dir, name, _) in &op.sets {
                    lost_keys.insert((*dir, name.clone()));
                }
                lost_inos.extend(op.inos.iter().copied());
            }
        }
        let mut nodes = BTreeMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if nodes.contains_key(&ino) {
                continue;
            }
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            let data = match (&mut torn, node.kind) {
                (Some(rng), Kind::File) if !node.pending.is_empty() => {
                    Arc::new(torn_data(&node.durable_data, &node.pending, &mut **rng))
                }
                _ => node.durable_data.clone(),
            };
            let ents = if node.kind == Kind::Dir {
                entries.get(&ino).cloned().unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            todo.extend(ents.values().copied());
            nodes.insert(
                ino,
                ImageNode {
                    kind: node.kind,
                    attr: node.durable_attr,
                    data,
                    entries: ents,
                },
            );
        }
        Image { nodes }
    }
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// Durable data plus a random part of the unsynced changes, page by page, in order.
fn torn_data(durable: &[u8], pending: &[DataOp], rng: &mut dyn rand::RngCore) -> Vec<u8> {
    let mut d = durable.to_vec();
    for op in pending {
        match op {
            DataOp::SetLen(len) => {
                if rng.random_bool(0.5) {
                    d.resize(*len as usize, 0);
                }
            }
            DataOp::Write { offset, bytes } => {
                let mut at = *offset;
                let end = offset + bytes.len() as u64;
                while at < end {
                    let piece_end = ((at / PAGE + 1) * PAGE).min(end);
                    if rng.random_bool(0.5) {
                        if d.len() < piece_end as usize {
                            d.resize(piece_end as usize, 0);
                        }
                        let src = &bytes[(at - offset) as usize..(piece_end - offset) as usize];
                        d[at as usize..piece_end as usize].copy_from_slice(src);
                    }
                    at = piece_end;
                }
            }
        }
    }
    d
}
