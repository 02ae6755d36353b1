//! Reading a format 2 backup: random access to one volume through its tree (a lookup
//! reads the interior pages on the path and one leaf, both cached; consecutive snarfs
//! share their decoded frame), and restores into sparse files that never visit the null
//! subtrees of holes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::backup::{BackupObject, VolumeRoot};
use super::repository::Repository;
use super::tree::{self, Entry, TreeError, LEAF_SNARFS};
use crate::repo::error::{Error, Fix, IoContext, Result};
use crate::repo::report::{RestoreProgress, RestoreSummary};
use crate::repo::v1::manifest::{snarf_count, snarf_len};

/// Random access to one volume of a committed backup; safe to share between threads.
pub struct VolumeReader {
    repo: Repository,
    backup: String,
    volume: VolumeRoot,
    tree: tree::Reader,
    /// The last leaf decoded: sequential reads decode each leaf once.
    leaf: Mutex<Option<(u64, Arc<Vec<Entry>>)>>,
}

impl Repository {
    /// A random-access reader of one volume of a committed backup.
    pub fn volume_reader(&self, backup: &str, volume: &str) -> Result<VolumeReader> {
        let b = self.backup(backup)?;
        VolumeReader::of(self, &b, volume)
    }

    /// Restores a backup's volumes (or one) into `dest` as sparse files, verifying every
    /// chunk; holes (null subtrees, zero snarfs) are never read or written.
    pub fn restore(
        &self,
        backup: &str,
        volume: Option<&str>,
        dest: &Path,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<RestoreSummary> {
        let start = Instant::now();
        let b = self.backup(backup)?;
        let names: Vec<String> = match volume {
            Some(v) => {
                VolumeReader::of(self, &b, v)?;
                vec![v.to_string()]
            }
            None => b.volumes.iter().map(|v| v.name.clone()).collect(),
        };
        std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
        for n in &names {
            let p = dest.join(n);
            if p.symlink_metadata().is_ok() {
                return Err(Error::DestinationExists { path: p });
            }
        }
        let total: u64 = b
            .volumes
            .iter()
            .filter(|v| names.contains(&v.name))
            .map(|v| v.size)
            .sum();
        let mut summary = RestoreSummary::default();
        let mut before = 0u64;
        for n in &names {
            let reader = VolumeReader::of(self, &b, n)?;
            let path = dest.join(n);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .ctx(|| format!("creating {}", path.display()))?;
            let result = file
                .set_len(reader.size())
                .ctx(|| format!("sizing {}", path.display()))
                .and_then(|()| {
                    reader.restore_into(&file, &path, &mut |done| {
                        progress(&RestoreProgress {
                            volume: n.clone(),
                            done: before + done,
                            total,
                        })
                    })
                })
                .and_then(|written| {
                    file.sync_all()
                        .ctx(|| format!("syncing {}", path.display()))?;
                    Ok(written)
                });
            match result {
                Ok(written) => summary.hole_bytes += reader.size() - written,
                Err(e) => {
                    // A half-restored file must not be mistaken for the volume.
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            }
            before += reader.size();
            summary.bytes += reader.size();
            summary.files.push(path);
        }
        summary.seconds = start.elapsed().as_secs_f64();
        Ok(summary)
    }
}

impl VolumeReader {
    /// The reader of volume `volume` of backup `b`.
    pub fn of(repo: &Repository, b: &BackupObject, volume: &str) -> Result<VolumeReader> {
        let v = b
            .volumes
            .iter()
            .find(|v| v.name == volume)
            .ok_or_else(|| Error::NoSuchVolume {
                backup: b.id.to_string(),
                volume: volume.to_string(),
                known: b
                    .volumes
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(VolumeReader {
            repo: repo.clone(),
            backup: b.id.to_string(),
            tree: tree::Reader::new(snarf_count(v.size, v.snarf_size), v.root_ref()),
            volume: v.clone(),
            leaf: Mutex::new(None),
        })
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.volume.size
    }

    /// Snarf size in bytes.
    pub fn snarf_size(&self) -> u32 {
        self.volume.snarf_size
    }

    /// Number of snarfs.
    pub fn snarf_count(&self) -> u64 {
        self.tree.geometry().snarfs
    }

    /// The backup's id.
    pub fn backup(&self) -> &str {
        &self.backup
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.volume.name
    }

    fn tree_err(&self, snarf: u64, e: TreeError) -> Error {
        let e = match e {
            TreeError::Store(e) => e,
            other => Error::Damaged {
                repo: self.repo.location().into(),
                path: format!("backups/{}", self.backup).into(),
                why: format!("the tree of volume \"{}\": {other}", self.volume.name),
                fix: Fix::Check,
            },
        };
        e.at(
            &self.backup,
            &self.volume.name,
            snarf * u64::from(self.volume.snarf_size),
        )
    }

    /// The decoded leaf `k`.
    fn leaf(&self, k: u64) -> Result<Arc<Vec<Entry>>> {
        if let Some((at, l)) = self.leaf.lock().as_ref() {
            if *at == k {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(
            self.tree
                .leaf(&self.repo, k)
                .map_err(|e| self.tree_err(k * LEAF_SNARFS, e))?,
        );
        *self.leaf.lock() = Some((k, l.clone()));
        Ok(l)
    }

    /// What snarf `snarf` is.
    pub fn entry(&self, snarf: u64) -> Result<Entry> {
        if snarf >= self.snarf_count() {
            return Err(Error::BadArgument(format!(
                "volume \"{}\" has {} snarfs; there is no snarf {snarf}",
                self.volume.name,
                self.snarf_count()
            )));
        }
        let l = self.leaf(snarf / LEAF_SNARFS)?;
        Ok(l[(snarf % LEAF_SNARFS) as usize])
    }

    /// The data of snarf `snarf`, `None` if it is all zeros.
    pub fn read_snarf(&self, snarf: u64) -> Result<Option<Vec<u8>>> {
        match self.entry(snarf)? {
            Entry::Zero => Ok(None),
            Entry::Chunk(r) => {
                let at = snarf * u64::from(self.volume.snarf_size);
                let data = self
                    .repo
                    .read_blob(&r)
                    .map_err(|e| e.at(&self.backup, &self.volume.name, at))?;
                let want = snarf_len(self.volume.size, self.volume.snarf_size, snarf);
                if data.len() != want as usize || !r.kind.is_data() {
                    return Err(Error::Damaged {
                        repo: self.repo.location().into(),
                        path: format!("backups/{}", self.backup).into(),
                        why: format!(
                            "snarf {snarf} of volume \"{}\" names blob {} of {} bytes, not a chunk of {want}",
                            self.volume.name,
                            r.id.short(),
                            data.len()
                        ),
                        fix: Fix::Check,
                    }
                    .at(&self.backup, &self.volume.name, at));
                }
                Ok(Some(data))
            }
        }
    }

    /// The first offset at or after `offset` that holds data (lseek SEEK_DATA), in whole
    /// snarfs; `None` if only holes follow. Null subtrees are jumped over unread.
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        let ss = u64::from(self.volume.snarf_size);
        let mut s = offset / ss;
        while s < self.snarf_count() {
            let k = s / LEAF_SNARFS;
            let Some(leaf) = self
                .tree
                .next_nonzero_leaf(&self.repo, k)
                .map_err(|e| self.tree_err(k * LEAF_SNARFS, e))?
            else {
                return Ok(None);
            };
            if leaf > k {
                s = leaf * LEAF_SNARFS;
            }
            let entries = self.leaf(leaf)?;
            let first = leaf * LEAF_SNARFS;
            for i in (s - first)..entries.len() as u64 {
                if entries[i as usize] != Entry::Zero {
                    return Ok(Some(offset.max((first + i) * ss)));
                }
            }
            s = first + entries.len() as u64;
        }
        Ok(None)
    }

    /// The first offset at or after `offset` in a hole (lseek SEEK_HOLE), in whole snarfs;
    /// the volume size if no hole follows (the end counts as a hole, as in lseek).
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        crate::repo::span::seek_hole(
            self.volume.size,
            self.volume.snarf_size,
            self.snarf_count(),
            offset,
            |s| Ok(self.entry(s)? == Entry::Zero),
        )
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at end of volume).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        crate::repo::span::read_at(
            self.volume.size,
            self.volume.snarf_size,
            offset,
            buf,
            |snarf| self.read_snarf(snarf),
        )
    }

    /// Writes every non-zero snarf into `file` (already sized), leaf by leaf, jumping over
    /// null subtrees. Returns the bytes written.
    fn restore_into(&self, file: &File, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        let ss = u64::from(self.volume.snarf_size);
        let mut written = 0u64;
        let mut k = 0u64;
        while let Some(leaf) = self
            .tree
            .next_nonzero_leaf(&self.repo, k)
            .map_err(|e| self.tree_err(k * LEAF_SNARFS, e))?
        {
            let first = leaf * LEAF_SNARFS;
            let entries = self.leaf(leaf)?;
            for (i, e) in entries.iter().enumerate() {
                if *e == Entry::Zero {
                    continue;
                }
                let snarf = first + i as u64;
                let Some(data) = self.read_snarf(snarf)? else {
                    continue;
                };
                file.write_all_at(&data, snarf * ss)
                    .ctx(|| format!("writing {}", path.display()))?;
                written += data.len() as u64;
            }
            progress(((leaf + 1) * LEAF_SNARFS * ss).min(self.volume.size));
            k = leaf + 1;
        }
        progress(self.volume.size);
        Ok(written)
    }
}
