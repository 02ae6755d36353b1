//! Garbage collection, the finishing step after retention: packs that no backup folder's
//! tables reference and no pin keeps are deleted, after the index is rewritten without them.
//! Damaged backups are gone around by name and keep their packs.

use std::collections::HashSet;
use std::path::Path;

use super::super::error::{Error, IoContext, Result};
use super::super::fault::{self, FilePoints};
use super::super::fsx;
use super::super::ids::{BackupId, PackId};
use super::super::index::Index;
use super::super::manifest::{read_manifest, Table};
use super::super::Repo;
use crate::chain::ErrorChain;

/// Marker file: some packs may be unreferenced; the next finishing collects them.
pub(crate) const GC_MARKER: &str = "gc-pending";

/// Packs pinned by [`Repo::pin`]: kept by gc whatever references them.
pub(crate) fn pinned_packs(repo: &Repo) -> Result<HashSet<PackId>> {
    let dir = repo.pins_dir();
    let mut packs = HashSet::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(packs),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Only pins `Repo::pin` can have written: a FIFO or a link to a device here must
        // not hang or flood gc.
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || crate::store::validate_name("pin", &name).is_err() {
            log::warn!(
                "{}: ignoring {}, which is not a pin snarf wrote",
                repo.path().display(),
                entry.path().display()
            );
            continue;
        }
        let data = fsx::read_optional_capped(&entry.path(), super::record::MAX_RECORD_BYTES)?
            .unwrap_or_default();
        packs.extend(
            String::from_utf8_lossy(&data)
                .lines()
                .filter_map(PackId::parse),
        );
    }
    Ok(packs)
}

/// What gc may rely on: the packs some backup's tables reference, plus pinned packs.
pub(crate) struct References {
    /// Referenced packs (about 16 bytes of memory per pack).
    pub packs: HashSet<PackId>,
    /// False when some table could not be read: then no pack is provably unreferenced.
    pub complete: bool,
    /// Damaged backups, each with what was done about it.
    pub damaged: Vec<String>,
}

/// The packs referenced by every backup folder's tables, plus pinned packs. The tables are
/// read directly, not through the manifest, so a backup whose manifest is damaged or
/// missing keeps its packs (restoring the manifest from a copy brings it back); a table
/// that cannot be read makes the set incomplete, and gc then deletes nothing.
pub(crate) fn referenced_packs(repo: &Repo, skip: &[BackupId]) -> Result<References> {
    let mut refs = References {
        packs: pinned_packs(repo)?,
        complete: true,
        damaged: Vec::new(),
    };
    for id in repo.backup_ids()? {
        if skip.contains(&id) {
            continue;
        }
        let dir = repo.backups_dir().join(id.as_str());
        let manifest = if repo.manifest_path(&id).exists() {
            read_manifest(repo.path(), &id).map(Some)
        } else {
            Ok(None)
        };
        let mut tables = table_files(&dir)?;
        let mut trouble = Vec::new();
        match &manifest {
            Ok(Some(m)) => {
                for v in &m.volumes {
                    if !tables.contains(&v.table) {
                        tables.push(v.table.clone());
                    }
                }
            }
            Ok(None) => trouble.push("it has no manifest".to_string()),
            Err(e) => trouble.push(format!("its manifest is damaged ({})", e.chain())),
        }
        let mut unreadable = Vec::new();
        for t in &tables {
            let path = dir.join(t);
            let read = Table::open(repo.path(), &path).and_then(|table| {
                table.for_each(|_, r| {
                    if let Some(r) = r.filter(|r| !r.is_zero()) {
                        refs.packs.insert(r.pack);
                    }
                    Ok(())
                })
            });
            match read {
                Ok(()) => {}
                // A table a valid manifest lists but that is gone references nothing.
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !path.exists() => {}
                Err(e) => unreadable.push(format!("table {t} cannot be read ({})", e.chain())),
            }
        }
        if !unreadable.is_empty() {
            refs.complete = false;
            trouble.extend(unreadable);
            refs.damaged.push(format!(
                "backup {id}: {}; gc deletes no pack until it is repaired, since any pack may be one it uses",
                trouble.join("; ")
            ));
        } else if !trouble.is_empty() {
            refs.damaged.push(format!(
                "backup {id}: {}; its {} table(s) were read directly and the packs they use are kept",
                trouble.join("; "),
                tables.len()
            ));
        }
    }
    Ok(refs)
}

/// Table files in a backup folder (regular files named as snarf names tables).
fn table_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if super::super::manifest::is_table_name(&name)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Sealed packs with their sizes, and paths of torn `.part` files.
pub(crate) type PacksOnDisk = (Vec<(PackId, u64)>, Vec<std::path::PathBuf>);

/// Sealed packs on disk with their sizes, and torn `.part` files.
pub(crate) fn packs_on_disk(repo: &Repo) -> Result<PacksOnDisk> {
    let dir = repo.packs_dir();
    let mut sealed = Vec::new();
    let mut torn = Vec::new();
    for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(".pack") {
            if let Some(id) = PackId::parse(hex) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                sealed.push((id, len));
            }
        } else if name.strip_suffix(".part").and_then(PackId::parse).is_some() {
            torn.push(entry.path());
        }
    }
    Ok((sealed, torn))
}

/// What gc did.
pub(super) struct GcOutcome {
    pub(super) packs_removed: u64,
    pub(super) freed_bytes: u64,
    pub(super) damaged: Vec<String>,
}

/// Step 5: delete packs no backup references, after rewriting the index without them (so
/// the index never points at a deleted pack). Redoing recomputes the same set. Damaged
/// backups are reported by name and gone around: their packs are kept (all packs, if one of
/// their tables cannot be read), and the marker stays so a later gc frees what they held
/// once they are repaired or removed.
pub(super) fn step_gc(repo: &Repo, forced: bool) -> Result<GcOutcome> {
    let marker = repo.path().join(GC_MARKER);
    let mut out = GcOutcome {
        packs_removed: 0,
        freed_bytes: 0,
        damaged: Vec::new(),
    };
    if !forced && !marker.exists() {
        return Ok(out);
    }
    let refs = referenced_packs(repo, &[])?;
    for d in &refs.damaged {
        log::warn!("{}: gc: {d}", repo.path().display());
    }
    out.damaged = refs.damaged;
    let (sealed, torn) = packs_on_disk(repo)?;
    let doomed: Vec<(PackId, u64)> = if refs.complete {
        sealed
            .into_iter()
            .filter(|(id, _)| !refs.packs.contains(id))
            .collect()
    } else {
        Vec::new()
    };
    if !doomed.is_empty() {
        Index::open(&repo.index_dir())?.rewrite(
            |r| refs.packs.contains(&r.pack),
            FilePoints::pair("gc.index.written", "gc.index.renamed"),
            "gc.index.removed",
        )?;
    }
    for (i, (id, len)) in doomed.iter().enumerate() {
        if fsx::remove_if_exists(&repo.pack_path(id))? {
            out.freed_bytes += len;
        }
        if i == 0 {
            fault::point("gc.pack-removed");
        }
    }
    out.packs_removed = doomed.len() as u64;
    // No writer runs while the lock is held, so a .part file is a torn leftover.
    for p in &torn {
        fsx::remove_if_exists(p)?;
    }
    fsx::sync_dir(&repo.packs_dir())?;
    if refs.complete && fsx::remove_if_exists(&marker)? {
        fsx::sync_dir(repo.path())?;
    } else if !refs.complete && !marker.exists() {
        fsx::write_atomic(&marker, b"", FilePoints::NONE)?;
    }
    Ok(out)
}
