//! `repo.json`, the format file: format version, compression level, pack size, creation
//! time. It is written last by `init`, so a folder without it is not a repository; one whose
//! file is missing or damaged but that holds a repository's folders is a damaged repository,
//! which `snarf repair index` can give a new format file (see `repair`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Fix, Result};
use super::fault::FilePoints;
use super::fsx;

/// Format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Default zstd level.
pub const DEFAULT_COMPRESSION: i32 = 3;
/// Default pack size at which a pack is sealed.
pub const DEFAULT_PACK_TARGET: u64 = 32 << 20;
/// The format file.
pub(crate) const CONFIG_FILE: &str = "repo.json";
/// The folders every repository has.
pub(crate) const FOLDERS: [&str; 4] = ["packs", "index", "backups", "tmp"];
/// Largest format file read: a real one is about 100 bytes.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// The contents of `repo.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Format version.
    pub format: u64,
    /// zstd level for new chunks.
    pub compression: i32,
    /// Pack size at which a pack is sealed.
    pub pack_target: u64,
    /// Creation time, Unix seconds.
    pub created: u64,
}

/// Refuses a compression level or pack size snarf cannot work with (from options or disk).
pub(crate) fn check_settings(
    compression: i32,
    pack_target: u64,
) -> std::result::Result<(), String> {
    if !(1..=19).contains(&compression) {
        return Err(format!(
            "compression level {compression} is not allowed: use 1 (fastest) to 19 (smallest), default {DEFAULT_COMPRESSION}"
        ));
    }
    if !(4096..=1 << 32).contains(&pack_target) {
        return Err(format!(
            "pack size {pack_target} is not allowed: use 4 KiB to 4 GiB (default 32 MiB)"
        ));
    }
    Ok(())
}

/// Path of the format file of repository `repo`.
pub(crate) fn config_path(repo: &Path) -> PathBuf {
    repo.join(CONFIG_FILE)
}

/// True when `repo` holds a repository's packs and backups folders (whatever its format
/// file says): then it is a repository to repair, not a folder that never was one.
pub(crate) fn has_layout(repo: &Path) -> bool {
    ["packs", "backups"]
        .iter()
        .all(|f| std::fs::symlink_metadata(repo.join(f)).is_ok_and(|m| m.file_type().is_dir()))
}

/// Reads and validates `repo.json`. A missing file in a folder that has a repository's
/// folders, an unparseable one and impossible settings are damage (repaired by `snarf
/// repair index`); a readable file of another format version is not.
pub(crate) fn read(repo: &Path) -> Result<Config> {
    let path = config_path(repo);
    let damaged = |why: String| Error::Damaged {
        repo: repo.to_path_buf(),
        path: path.clone(),
        why,
        fix: Fix::RepairIndex,
    };
    let data = match fsx::read_optional_capped(&path, MAX_CONFIG_BYTES)? {
        Some(d) => d,
        None if has_layout(repo) => {
            return Err(damaged(
                "it is missing, but the folder holds a repository's packs, index and backups"
                    .into(),
            ))
        }
        None => {
            return Err(Error::NotARepo {
                path: repo.to_path_buf(),
            })
        }
    };
    if data.len() as u64 > MAX_CONFIG_BYTES {
        return Err(damaged(format!(
            "it is larger than {MAX_CONFIG_BYTES} bytes, which no format file is"
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| damaged(e.to_string()))?;
    match value.get("format").map(serde_json::Value::as_u64) {
        Some(Some(FORMAT_VERSION)) => {}
        Some(Some(found)) => {
            return Err(Error::UnknownFormat {
                path: repo.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
        Some(None) => return Err(damaged("its format version is not a number".into())),
        None => return Err(damaged("it names no format version".into())),
    }
    let config: Config = serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?;
    check_settings(config.compression, config.pack_target).map_err(damaged)?;
    Ok(config)
}

/// Writes `repo.json` durably.
pub(crate) fn write(repo: &Path, config: &Config, points: FilePoints) -> Result<()> {
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| Error::BadArgument(format!("cannot encode {CONFIG_FILE}: {e}")))?;
    fsx::write_atomic(&config_path(repo), &json, points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in FOLDERS {
            std::fs::create_dir(dir.path().join(f)).unwrap();
        }
        dir
    }

    #[test]
    fn damaged_missing_and_foreign_format_files_are_told_apart() {
        let dir = layout();
        let p = config_path(dir.path());
        let good = Config {
            format: FORMAT_VERSION,
            compression: 3,
            pack_target: 1 << 20,
            created: 5,
        };
        write(dir.path(), &good, FilePoints::NONE).unwrap();
        assert_eq!(read(dir.path()).unwrap().pack_target, 1 << 20);
        let repair = |e: Error| {
            let msg = e.to_string();
            assert!(
                matches!(
                    e,
                    Error::Damaged {
                        fix: Fix::RepairIndex,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(msg.contains("snarf repair index"), "{msg}");
        };
        for bad in [
            &b"\x00garbage"[..],
            b"",
            b"{\"format\": \"one\"}",
            b"{\"compression\": 3}",
            b"{\"format\": 1, \"compression\": 0, \"pack_target\": 1048576, \"created\": 0}",
            b"{\"format\": 1, \"compression\": 3, \"pack_target\": 0, \"created\": 0}",
        ] {
            std::fs::write(&p, bad).unwrap();
            repair(read(dir.path()).unwrap_err());
        }
        std::fs::write(&p, b"{\"format\": 7}").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(Error::UnknownFormat { found: 7, .. })
        ));
        std::fs::remove_file(&p).unwrap();
        repair(read(dir.path()).unwrap_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(read(empty.path()), Err(Error::NotARepo { .. })));
    }
}
