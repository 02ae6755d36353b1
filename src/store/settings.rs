//! The store's settings file, `STORE/snarf.toml`: format version, snarf size and pre-image
//! budgets. It is TOML because administrators read and edit it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::units::Bytes;

/// Name of the settings file inside a store directory.
pub const SETTINGS_FILE: &str = "snarf.toml";
/// The store format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest allowed snarf size.
pub const MIN_SNARF_SIZE: u64 = 4 << 10;
/// Largest allowed snarf size.
pub const MAX_SNARF_SIZE: u64 = 1 << 20;
/// Default snarf size.
pub const DEFAULT_SNARF_SIZE: u64 = 64 << 10;
/// Default memory budget for pre-images.
pub const DEFAULT_PREIMAGE_MEM: u64 = 256 << 20;
/// Default disk budget for spilled pre-images.
pub const DEFAULT_PREIMAGE_DISK: u64 = 4 << 30;
/// Default time a writer may wait for pre-image space before a snapshot is broken.
pub const DEFAULT_BREAK_AFTER_SECS: f64 = 30.0;

/// Everything `snarf.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Store format version; a store of another version is refused, never guessed at.
    pub format_version: u32,
    /// Size of one snarf in bytes: a power of two from 4 KiB to 1 MiB.
    pub snarf_size: u64,
    /// Pre-image budgets and the writer-protection limit.
    pub preimages: Budgets,
    /// Default backup repository for jobs and the `backups/` view, if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// How much room pre-images may take before writers are slowed, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Bytes of pre-image data kept in memory.
    pub memory: u64,
    /// Bytes of pre-image data spilled to `STORE/spill/` once memory is full.
    pub disk: u64,
    /// Seconds a writer may be held up before the snapshot holding the most pre-images is
    /// broken so live writes go on.
    pub break_after_secs: f64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            memory: DEFAULT_PREIMAGE_MEM,
            disk: DEFAULT_PREIMAGE_DISK,
            break_after_secs: DEFAULT_BREAK_AFTER_SECS,
        }
    }
}

impl Budgets {
    /// The writer-protection limit as a duration.
    pub fn break_after(&self) -> Duration {
        Duration::from_secs_f64(self.break_after_secs.max(0.0))
    }
}

impl Settings {
    /// Settings for a new store with the given snarf size and default budgets.
    pub fn new(snarf_size: u64) -> Result<Settings> {
        check_snarf_size(snarf_size)?;
        Ok(Settings {
            format_version: FORMAT_VERSION,
            snarf_size,
            preimages: Budgets::default(),
            repository: None,
        })
    }

    /// Reads and validates `STORE/snarf.toml`.
    pub fn load(store: &Path) -> Result<Settings> {
        let path = store.join(SETTINGS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAStore {
                    path: store.to_path_buf(),
                })
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        // Look at the version before the rest, so a newer store is reported as such rather
        // than as a settings file with unknown fields.
        let version = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("format_version").and_then(|v| v.as_integer()));
        match version {
            Some(v) if v == FORMAT_VERSION as i64 => {}
            Some(v) => {
                return Err(Error::UnknownFormat {
                    path: store.to_path_buf(),
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
            None => {
                return Err(Error::BadSettings {
                    path: path.clone(),
                    why: "it has no format_version".into(),
                })
            }
        }
        let settings: Settings = toml::from_str(&text).map_err(|e| Error::BadSettings {
            path: path.clone(),
            why: e.message().to_string(),
        })?;
        check_snarf_size(settings.snarf_size).map_err(|e| Error::BadSettings {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Ok(settings)
    }

    /// Writes the settings atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, store: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::BadSettings {
            path: store.join(SETTINGS_FILE),
            why: e.to_string(),
        })?;
        let header =
            "# snarf store settings. Sizes are in bytes; edit while the store is not mounted.\n";
        super::files::write_atomic(
            &store.join(SETTINGS_FILE),
            format!("{header}{text}").as_bytes(),
        )
    }
}

/// Checks that a snarf size is a power of two between 4 KiB and 1 MiB.
pub fn check_snarf_size(size: u64) -> Result<()> {
    if !size.is_power_of_two() || !(MIN_SNARF_SIZE..=MAX_SNARF_SIZE).contains(&size) {
        return Err(Error::BadSnarfSize { size });
    }
    Ok(())
}

impl std::fmt::Display for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory {}, disk {}, break after {:.0} s",
            Bytes(self.memory),
            Bytes(self.disk),
            self.break_after_secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::new(64 << 10).unwrap();
        s.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), s);

        let text = std::fs::read_to_string(dir.path().join(SETTINGS_FILE)).unwrap();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            text.replace("format_version = 1", "format_version = 7"),
        )
        .unwrap();
        let e = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format version 7"), "{e}");
    }

    #[test]
    fn not_a_store_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("not a snarf store") && e.contains("snarf init"),
            "{e}"
        );
    }

    #[test]
    fn snarf_size_rules() {
        assert!(check_snarf_size(4096).is_ok());
        assert!(check_snarf_size(1 << 20).is_ok());
        for bad in [0, 2048, 3 << 12, 2 << 20] {
            assert!(check_snarf_size(bad).is_err(), "{bad}");
        }
    }
}
