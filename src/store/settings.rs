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
/// Longest writer wait accepted before a snapshot is broken: one day. Longer is no longer
/// "protecting writers", and durations past it stop being representable soon enough.
pub const MAX_BREAK_AFTER_SECS: f64 = 86_400.0;
/// Largest pre-image budget accepted, memory or disk: 1 PiB.
pub const MAX_BUDGET: u64 = 1 << 50;

/// A number outside the range an option or setting allows, named as the user wrote it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} {value} is out of range: {allowed}")]
pub struct RangeError {
    /// The option or setting, e.g. `--break-after` or `preimages.break_after_secs`.
    pub name: String,
    /// The value given, as text.
    pub value: String,
    /// What is allowed.
    pub allowed: String,
}

/// Checks a writer-protection limit in seconds: a finite number from 0 to one day (0 means
/// a snapshot is broken as soon as a writer would have to wait).
pub fn check_break_after(name: &str, secs: f64) -> Result<f64, RangeError> {
    if secs.is_finite() && (0.0..=MAX_BREAK_AFTER_SECS).contains(&secs) {
        return Ok(secs);
    }
    Err(RangeError {
        name: name.to_string(),
        value: secs.to_string(),
        allowed: format!(
            "give seconds as a finite number from 0 to {MAX_BREAK_AFTER_SECS:.0} (default {DEFAULT_BREAK_AFTER_SECS:.0})"
        ),
    })
}

/// Checks a pre-image budget in bytes: 0 (none) up to [`MAX_BUDGET`].
pub fn check_budget(name: &str, bytes: u64) -> Result<u64, RangeError> {
    if bytes <= MAX_BUDGET {
        return Ok(bytes);
    }
    Err(RangeError {
        name: name.to_string(),
        value: Bytes(bytes).to_string(),
        allowed: format!("give 0 to {} (e.g. 256M, 4G)", Bytes(MAX_BUDGET)),
    })
}

/// How long a snapshot lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Until it is released, across unmounts, crashes and power cuts: its table entry and
    /// pre-images are durable before anything they protect is overwritten.
    #[default]
    Persistent,
    /// As long as the mount: memory first, spilled to disk past the memory budget, never
    /// synced, gone at unmount.
    Volatile,
}

impl Durability {
    /// The word used in control files and options.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Persistent => "persistent",
            Durability::Volatile => "volatile",
        }
    }

    /// Parses [`Durability::as_str`].
    pub fn parse(word: &str) -> Option<Durability> {
        match word {
            "persistent" => Some(Durability::Persistent),
            "volatile" => Some(Durability::Volatile),
            _ => None,
        }
    }
}

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
    /// What a snapshot taken without saying is (`mkdir`): persistent unless set.
    #[serde(default)]
    pub snapshots: Durability,
}

/// How much room pre-images may take before writers are slowed, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Bytes of pre-image data kept in memory.
    pub memory: u64,
    /// Bytes of pre-image data on disk (`STORE/cow/`): every pre-image a persistent
    /// snapshot needs, and those of volatile ones once memory is full.
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
    /// The writer-protection limit as a duration. Never panics: a value [`Budgets::check`]
    /// would refuse (NaN, negative, infinite, huge) is clamped into the allowed range.
    pub fn break_after(&self) -> Duration {
        let secs = if self.break_after_secs.is_nan() {
            0.0
        } else {
            self.break_after_secs.clamp(0.0, MAX_BREAK_AFTER_SECS)
        };
        Duration::from_secs_f64(secs)
    }

    /// Checks every figure against its range; the error names the setting as it appears in
    /// `snarf.toml`.
    pub fn check(&self) -> Result<(), RangeError> {
        check_budget("preimages.memory", self.memory)?;
        check_budget("preimages.disk", self.disk)?;
        check_break_after("preimages.break_after_secs", self.break_after_secs)?;
        Ok(())
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
            snapshots: Durability::default(),
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
        settings.check().map_err(|why| Error::BadSettings {
            path: path.clone(),
            why,
        })?;
        Ok(settings)
    }

    /// Checks every number against its range; the reason names the setting.
    pub fn check(&self) -> std::result::Result<(), String> {
        check_snarf_size(self.snarf_size).map_err(|e| e.to_string())?;
        self.preimages.check().map_err(|e| e.to_string())
    }

    /// Writes the settings atomically (temporary file, fsync, rename, directory fsync).
    /// Settings that [`Settings::load`] would refuse are refused here, before anything is
    /// written.
    pub fn save(&self, store: &Path) -> Result<()> {
        self.check().map_err(|why| Error::BadSettings {
            path: store.join(SETTINGS_FILE),
            why,
        })?;
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
    fn out_of_range_settings_are_refused_by_name_at_load_and_save() {
        let dir = tempfile::tempdir().unwrap();
        Settings::new(64 << 10).unwrap().save(dir.path()).unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        // TOML itself has inf and nan literals, so a hand-edited file can hold them.
        for (from, to, named) in [
            (
                "break_after_secs = 30.0",
                "break_after_secs = inf",
                "break_after_secs",
            ),
            (
                "break_after_secs = 30.0",
                "break_after_secs = nan",
                "break_after_secs",
            ),
            (
                "break_after_secs = 30.0",
                "break_after_secs = -1.0",
                "break_after_secs",
            ),
            (
                "break_after_secs = 30.0",
                "break_after_secs = 1e300",
                "break_after_secs",
            ),
            (
                "memory = 268435456",
                "memory = 9223372036854775807",
                "preimages.memory",
            ),
            (
                "disk = 4294967296",
                "disk = 9223372036854775807",
                "preimages.disk",
            ),
        ] {
            assert!(good.contains(from), "{good}");
            std::fs::write(&path, good.replace(from, to)).unwrap();
            let e = Settings::load(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains(named) && e.contains("out of range") && e.contains("snarf.toml"),
                "{to}: {e}"
            );
        }
        let mut s = Settings::new(64 << 10).unwrap();
        s.preimages.break_after_secs = f64::INFINITY;
        let e = s.save(dir.path()).unwrap_err().to_string();
        assert!(e.contains("break_after_secs"), "{e}");
    }

    #[test]
    fn ranges_and_a_break_after_that_never_panics() {
        for ok in [0.0, 0.5, 30.0, MAX_BREAK_AFTER_SECS] {
            assert_eq!(check_break_after("--break-after", ok), Ok(ok));
        }
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.001,
            1e300,
            MAX_BREAK_AFTER_SECS + 1.0,
        ] {
            let e = check_break_after("--break-after", bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--break-after ") && e.contains("0 to 86400"),
                "{e}"
            );
            let b = Budgets {
                break_after_secs: bad,
                ..Budgets::default()
            };
            assert!(b.check().is_err());
            // What the engine asks for never panics, whatever slipped through.
            assert!(b.break_after() <= Duration::from_secs(86_400));
        }
        assert!(check_budget("--preimage-mem", 0).is_ok());
        assert!(check_budget("--preimage-mem", MAX_BUDGET).is_ok());
        let e = check_budget("--preimage-mem", u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--preimage-mem") && e.contains("1.0 PiB"), "{e}");
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
