//! One way to open a repository, whatever its format: [`Handle::open`] takes a
//! [`Location`], reads the format from the repository itself and returns a handle that
//! dispatches to format 1 ([`v1::Repo`]) or format 2 ([`v2::Repository`]). Every command,
//! the jobs and the mount open repositories here, so a new format or backend is wired in
//! one place. [`BackupInfo`] and [`VolumeReader`] are what callers see of a backup and of a
//! volume in it, in either format.

use std::path::Path;

use serde::Serialize;

use super::backend::Key;
use super::error::{Error, Result};
use super::ids::BackupId;
use super::location::Location;
use super::passphrase::Passphrase;
use super::report::{
    BackupStats, CheckProgress, CheckReport, FinishingStatus, RestoreProgress, RestoreSummary,
};
use super::retention::{Policy, PruneReport};
use super::{v1, v2};

/// Repository formats this build reads.
pub const FORMATS: [u32; 2] = [1, 2];

/// An open repository of either format; cheap to clone.
#[derive(Debug, Clone)]
pub enum Handle {
    /// Format 1: a folder with `repo.json`, tables and a finishing record.
    V1(v1::Repo),
    /// Format 2: objects behind a backend, tree manifests and frames.
    V2(v2::Repository),
}

/// Options of a new repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// 1 or 2.
    pub format: u32,
    /// zstd level, 1 to 19.
    pub compression: i32,
    /// Pack size at which a pack is sealed.
    pub pack_target: u64,
    /// Encrypt (format 2 only), with this first key slot.
    pub encryption: Option<v2::NewKey>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            format: 2,
            compression: v1::DEFAULT_COMPRESSION,
            pack_target: v1::DEFAULT_PACK_TARGET,
            encryption: None,
        }
    }
}

/// Whether the folder holds a format 2 repository (its `config` object exists).
fn is_v2(path: &Path) -> bool {
    v2_config_path(path).is_file()
}

fn v2_config_path(path: &Path) -> std::path::PathBuf {
    path.join(Key::Config.name())
}

impl Handle {
    /// Creates a repository of `opts.format` at `location`, which must be missing or empty.
    pub fn init(location: &Location, opts: &InitOptions) -> Result<Handle> {
        match opts.format {
            1 if opts.encryption.is_some() => Err(Error::BadArgument(format!(
                "{location}: a format 1 repository cannot be encrypted; leave out --format 1 (format 2 is the default)"
            ))),
            1 => {
                let path = location.local_path().ok_or_else(|| {
                    Error::BadArgument(format!(
                        "{location}: a format 1 repository can only be a local folder"
                    ))
                })?;
                let o = v1::RepoInitOptions {
                    compression: opts.compression,
                    pack_target: opts.pack_target,
                };
                v1::Repo::init(path, &o).map(Handle::V1)
            }
            2 => {
                let o = v2::InitOptions {
                    compression: opts.compression,
                    pack_target: opts.pack_target,
                    encryption: opts.encryption.clone(),
                    ..v2::InitOptions::default()
                };
                if let Some(path) = location.local_path() {
                    // Anything there (a format 1 repository, other files) is refused: the
                    // format 2 layout would mix with it. (`snarf serve` refuses the same.)
                    if let Ok(mut entries) = std::fs::read_dir(path) {
                        if entries.next().is_some() {
                            return Err(Error::NotEmpty {
                                path: path.to_path_buf(),
                            });
                        }
                    }
                }
                v2::Repository::init(location.backend_for_init()?, &o).map(Handle::V2)
            }
            n => Err(Error::BadArgument(format!(
                "there is no repository format {n}; snarf writes format 1 or 2"
            ))),
        }
    }

    /// Opens the repository at `location`, completing what a crashed writer left where the
    /// format does that at open (format 1's pending finishing).
    pub fn open(location: &Location) -> Result<Handle> {
        Handle::open_with(location, v1::Repo::open)
    }

    /// Opens without completing anything (for status displays and for a reader that does
    /// not own the repository, such as the mount daemon reading a job's packs).
    pub fn open_quiet(location: &Location) -> Result<Handle> {
        Handle::open_with(location, v1::Repo::open_quiet)
    }

    /// Opens like [`Handle::open`], unlocking an encrypted repository with the passphrase
    /// `ask` returns (called only then) instead of the process's passphrase sources:
    /// `snarf copy` has two repositories.
    pub fn open_asking(
        location: &Location,
        ask: &dyn Fn() -> Result<Passphrase>,
    ) -> Result<Handle> {
        Handle::open_v2_with(location, v1::Repo::open, &|b| {
            v2::Repository::open_with(b, ask)
        })
    }

    fn open_with(location: &Location, v1_open: fn(&Path) -> Result<v1::Repo>) -> Result<Handle> {
        Handle::open_v2_with(location, v1_open, &v2::Repository::open)
    }

    fn open_v2_with(
        location: &Location,
        v1_open: fn(&Path) -> Result<v1::Repo>,
        v2_open: &dyn Fn(std::sync::Arc<dyn super::backend::Backend>) -> Result<v2::Repository>,
    ) -> Result<Handle> {
        match location {
            Location::Local(path) if super::upgrade::interrupted(path) => {
                Err(Error::UpgradeInterrupted {
                    path: path.to_path_buf(),
                })
            }
            Location::Local(path) if is_v2(path) => {
                v2_open(location.backend()?).map(Handle::V2)
            }
            Location::Local(path) => v1_open(path).map(Handle::V1),
            // Only format 2 is on the backend trait, so only it is served over ssh or S3.
            Location::Ssh(_) | Location::S3(_) => match v2_open(location.backend()?) {
                Err(Error::NotARepo { .. }) => Err(Error::BadArgument(format!(
                    "{location} holds no format 2 repository: create one with `snarf repo init {location}`; a format 1 repository can be used only as a local folder on its own host"
                ))),
                r => r.map(Handle::V2),
            },
        }
    }

    /// Opens the local folder `path` (see [`Handle::open`]).
    pub fn open_path(path: &Path) -> Result<Handle> {
        Handle::open(&Location::local(path))
    }

    /// The repository's format number.
    pub fn format(&self) -> u32 {
        match self {
            Handle::V1(_) => 1,
            Handle::V2(_) => 2,
        }
    }

    /// Where it is, for messages and process records.
    pub fn location(&self) -> String {
        match self {
            Handle::V1(r) => r.path().display().to_string(),
            Handle::V2(r) => r.location(),
        }
    }

    /// The local folder holding it, if it is one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Handle::V1(r) => Some(r.path()),
            Handle::V2(r) => r.local_path(),
        }
    }

    /// Whether the repository is still where it was opened.
    pub fn is_present(&self) -> bool {
        match self {
            Handle::V1(r) => r.is_present(),
            Handle::V2(r) => matches!(r.backend().size(&Key::Config), Ok(Some(_))),
        }
    }

    /// Why the connection to the repository is gone, for one reached over a connection
    /// (ssh) that dropped: every call on this handle fails from then on, and a long-lived
    /// holder (the mount daemon) opens a new one.
    pub fn connection_lost(&self) -> Option<Error> {
        match self {
            Handle::V1(_) => None,
            Handle::V2(r) => r.backend().connection_lost(),
        }
    }

    /// Every committed backup, oldest first (damaged ones are skipped; `check` names them).
    pub fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        Ok(match self {
            Handle::V1(r) => r
                .list_backups()?
                .into_iter()
                .map(BackupInfo::from)
                .collect(),
            Handle::V2(r) => r
                .list_backups()?
                .into_iter()
                .map(BackupInfo::from)
                .collect(),
        })
    }

    /// The committed backup `id`.
    pub fn backup(&self, id: &str) -> Result<BackupInfo> {
        Ok(match self {
            Handle::V1(r) => r.backup(id)?.into(),
            Handle::V2(r) => r.backup(id)?.into(),
        })
    }

    /// A random-access reader of one volume of a committed backup.
    pub fn volume_reader(&self, backup: &str, volume: &str) -> Result<VolumeReader> {
        Ok(match self {
            Handle::V1(r) => VolumeReader::V1(r.volume_reader(backup, volume)?),
            Handle::V2(r) => VolumeReader::V2(r.volume_reader(backup, volume)?),
        })
    }

    /// Restores a backup's volumes (or one) into `dest` as sparse files, verifying every
    /// chunk.
    pub fn restore(
        &self,
        backup: &str,
        volume: Option<&str>,
        dest: &Path,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreSummary> {
        match self {
            Handle::V1(r) => r.restore(backup, volume, dest, progress),
            Handle::V2(r) => r.restore(backup, volume, dest, progress),
        }
    }

    /// Checks structure, and with `read_data` every chunk's contents.
    pub fn check(
        &self,
        read_data: bool,
        progress: &mut dyn FnMut(&CheckProgress),
    ) -> Result<CheckReport> {
        match self {
            Handle::V1(r) => r.check(read_data, progress),
            Handle::V2(r) => r.check(read_data, progress),
        }
    }

    /// Applies a retention policy, then collects garbage; with `dry_run` only reports.
    pub fn prune(&self, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
        match self {
            Handle::V1(r) => r.prune(policy, dry_run),
            Handle::V2(r) => {
                let p = v2::gc::prune(r, policy, dry_run)?;
                let gc = p.gc.unwrap_or_default();
                Ok(PruneReport {
                    decisions: p.decisions,
                    dry_run,
                    packs_removed: gc.packs_removed,
                    freed_bytes: gc.freed_bytes,
                    damaged: Vec::new(),
                })
            }
        }
    }

    /// The state of finishing. Format 2 has no finishing record (each step after its
    /// commit is redone from what is stored): it reports what a cut left instead.
    pub fn finishing_status(&self) -> Result<FinishingStatus> {
        match self {
            Handle::V1(r) => r.finishing_status(),
            Handle::V2(r) => v2::gc::upkeep(r),
        }
    }

    /// Completes what a crashed writer left, if no live writer is doing it (format 1's
    /// pending finishing; format 2 needs nothing before reading).
    pub fn complete_pending(&self) -> Result<()> {
        match self {
            Handle::V1(r) => r.complete_pending(),
            Handle::V2(_) => Ok(()),
        }
    }

    /// Why the last attempt to complete a pending finishing failed, if it did.
    pub fn stuck(&self) -> Option<String> {
        match self {
            Handle::V1(r) => r.stuck(),
            Handle::V2(_) => None,
        }
    }
}

/// A committed backup's header, in either format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupInfo {
    /// The repository format it is stored in.
    pub format: u32,
    /// The backup's id.
    pub id: BackupId,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Creation time, human readable (UTC).
    pub created_utc: String,
    /// Name of the snapshot it was taken from.
    pub snapshot: String,
    /// Host that wrote it.
    pub host: String,
    /// Caller's opaque data (the job layer keeps store id, volume ids and epochs here).
    pub source: serde_json::Value,
    /// The volumes, in the order they were added.
    pub volumes: Vec<VolumeInfo>,
    /// Counts of what this backup wrote.
    pub stats: BackupStats,
}

/// One volume of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Snarf size in bytes.
    pub snarf_size: u32,
    /// Snarfs that were all zeros (or holes).
    pub zero_snarfs: u64,
    /// Where its snarf map is (`backups --json` prints `table` or `root`).
    #[serde(flatten)]
    pub map: VolumeMap,
}

/// Where a backup volume's snarf map is stored, by format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VolumeMap {
    /// Format 1: the table file in the backup's folder (`backups/ID/TABLE`).
    Table {
        /// Its file name, e.g. `v0000.tbl`.
        table: String,
    },
    /// Format 2: the tree's root page.
    Tree {
        /// Hex of the root's 64-byte blob reference; `None` (null) for an all-zero volume.
        root: Option<String>,
    },
}

impl BackupInfo {
    /// Sum of volume sizes.
    pub fn total_size(&self) -> u64 {
        self.volumes.iter().map(|v| v.size).sum()
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&VolumeInfo> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

impl From<v1::Manifest> for BackupInfo {
    fn from(m: v1::Manifest) -> BackupInfo {
        BackupInfo {
            format: 1,
            id: m.id,
            created: m.created,
            created_utc: m.created_utc,
            snapshot: m.snapshot,
            host: m.host,
            source: m.source,
            volumes: m
                .volumes
                .into_iter()
                .map(|v| VolumeInfo {
                    name: v.name,
                    size: v.size,
                    snarf_size: v.snarf_size,
                    zero_snarfs: v.zero_snarfs,
                    map: VolumeMap::Table { table: v.table },
                })
                .collect(),
            stats: m.stats,
        }
    }
}

impl From<v2::backup::BackupObject> for BackupInfo {
    fn from(b: v2::backup::BackupObject) -> BackupInfo {
        BackupInfo {
            format: 2,
            id: b.id,
            created: b.created,
            created_utc: b.created_utc,
            snapshot: b.snapshot,
            host: b.host,
            source: b.source,
            volumes: b
                .volumes
                .into_iter()
                .map(|v| VolumeInfo {
                    name: v.name,
                    size: v.size,
                    snarf_size: v.snarf_size,
                    zero_snarfs: v.zero_snarfs,
                    map: VolumeMap::Tree { root: v.root },
                })
                .collect(),
            stats: b.stats,
        }
    }
}

/// A random-access reader of one volume of a backup, in either format.
pub enum VolumeReader {
    /// Format 1.
    V1(v1::VolumeReader),
    /// Format 2.
    V2(v2::VolumeReader),
}

impl std::fmt::Debug for VolumeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeReader({} of {})", self.volume(), self.backup())
    }
}

impl VolumeReader {
    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            VolumeReader::V1(r) => r.size(),
            VolumeReader::V2(r) => r.size(),
        }
    }

    /// The backup's id.
    pub fn backup(&self) -> &str {
        match self {
            VolumeReader::V1(r) => r.backup(),
            VolumeReader::V2(r) => r.backup(),
        }
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        match self {
            VolumeReader::V1(r) => r.volume(),
            VolumeReader::V2(r) => r.volume(),
        }
    }

    /// Sets how many bytes of chunks the reader keeps (format 2 caches frames per
    /// repository instead).
    pub fn set_cache_bytes(&self, limit: usize) {
        if let VolumeReader::V1(r) = self {
            r.set_cache_bytes(limit);
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at end of volume).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            VolumeReader::V1(r) => r.read_at(offset, buf),
            VolumeReader::V2(r) => r.read_at(offset, buf),
        }
    }

    /// The first offset at or after `offset` that holds data (lseek SEEK_DATA).
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        match self {
            VolumeReader::V1(r) => r.seek_data(offset),
            VolumeReader::V2(r) => r.seek_data(offset),
        }
    }

    /// The first offset at or after `offset` in a hole (lseek SEEK_HOLE).
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        match self {
            VolumeReader::V1(r) => r.seek_hole(offset),
            VolumeReader::V2(r) => r.seek_hole(offset),
        }
    }
}
