//! `config`, the format 2 repository's format file: plain JSON (it must be readable before
//! any key is known) with the format, compression level, pack and frame sizes, the gc grace
//! period and the encryption. It is created last by `init` (create-only, so two inits
//! of one place cannot both win), so a place without it is not a repository.
//!
//! An encrypted repository's `config` carries `auth`, a keyed blake3 MAC (key derived from
//! the master key) of its other fields, checked once the repository is unlocked: a changed
//! setting (a gc grace of 0, a frame size) is refused as damage rather than obeyed.

use serde::{Deserialize, Serialize};

use super::frame::{DEFAULT_FRAME_BYTES, MAX_FRAME_RAW};
use crate::repo::backend::{Backend, Created, Key};
use crate::repo::error::{Error, Fix, Result};

/// Format version of these repositories.
pub const FORMAT: u64 = 2;
/// Largest format file read: a real one is a few hundred bytes.
const MAX_BYTES: u64 = 64 << 10;
/// Default time an unreferenced pack is kept before gc deletes it: a day, so a backup
/// interrupted overnight resumes from its packs the next morning.
pub const DEFAULT_GC_GRACE_SECS: u64 = 86_400;

/// How objects are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Plain: blobs are compressed, not encrypted.
    None,
    /// AES-256-GCM with per-object subkeys and keyed blob ids (`crypto`); the master key is
    /// in the key slots (`keys/`).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// The contents of `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version (2).
    pub format: u64,
    /// zstd level for new frames, 1 to 19.
    pub compression: i32,
    /// Pack size at which a pack is sealed.
    pub pack_target: u64,
    /// Raw bytes of consecutive snarfs compressed together as one frame.
    pub frame_bytes: u64,
    /// Seconds an unreferenced pack is kept before gc deletes it.
    pub gc_grace_secs: u64,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Encryption of the objects.
    pub encryption: Encryption,
    /// An encrypted repository's MAC of the fields above (hex), see the module docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

impl Config {
    /// Refuses settings snarf cannot work with, whether they come from options or disk.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("it is of format {}, not {FORMAT}", self.format));
        }
        crate::repo::v1::config::check_settings(self.compression, self.pack_target)?;
        match (&self.encryption, &self.auth) {
            (Encryption::None, Some(_)) => {
                return Err("it carries a MAC yet says it is not encrypted".into())
            }
            (Encryption::Aes256Gcm, None) => {
                return Err("it says it is encrypted yet carries no MAC".into())
            }
            _ => {}
        }
        if !(4096..=MAX_FRAME_RAW as u64).contains(&self.frame_bytes) {
            return Err(format!(
                "frame size {} is not allowed: use 4 KiB to {} MiB (default {} MiB)",
                self.frame_bytes,
                MAX_FRAME_RAW >> 20,
                DEFAULT_FRAME_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// The MAC of the settings under `mac_key` (hex): `auth` itself is left out.
    pub fn mac(&self, mac_key: &[u8; 32]) -> String {
        let bare = Config {
            auth: None,
            ..self.clone()
        };
        // Serialising a struct is deterministic (field order), so this is canonical.
        let bytes = serde_json::to_vec(&bare).unwrap_or_default();
        blake3::keyed_hash(mac_key, &bytes).to_hex().to_string()
    }
}

/// Creates `config` (create-only); an existing one means the place is a repository already.
pub fn create(backend: &dyn Backend, config: &Config) -> Result<()> {
    config.validate().map_err(Error::BadArgument)?;
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| Error::BadArgument(format!("cannot encode the format file: {e}")))?;
    match backend.create(&Key::Config, &json)? {
        Created::Created => Ok(()),
        Created::AlreadyExists => Err(Error::NotEmpty {
            path: backend.location().into(),
        }),
    }
}

/// Reads and validates `config`; `None` if there is none (not a format 2 repository).
pub fn read(backend: &dyn Backend) -> Result<Option<Config>> {
    let Some(data) = backend.read(&Key::Config, MAX_BYTES)? else {
        return Ok(None);
    };
    let damaged = |why: String| Error::Damaged {
        repo: backend.location().into(),
        path: Key::Config.name().into(),
        why,
        fix: Fix::Copy,
    };
    let config: Config = serde_json::from_slice(&data).map_err(|e| damaged(e.to_string()))?;
    if config.format > FORMAT {
        return Err(Error::UnknownFormat {
            path: backend.location().into(),
            found: config.format,
            supported: FORMAT,
        });
    }
    config.validate().map_err(damaged)?;
    Ok(Some(config))
}
