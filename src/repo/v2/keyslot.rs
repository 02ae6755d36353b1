//! Key slots (`keys/<id>`): an encrypted repository's master key wrapped by one passphrase.
//! The passphrase is stretched with argon2id (RustCrypto `argon2`) into a key-encryption
//! key, which seals the master key with AES-256-GCM; the slot's id and its descriptive
//! fields (time, host, label) are bound in as associated data, so a slot copied under
//! another name, or with any field changed, does not open. Several slots may wrap the same
//! master key (`snarf repo key add|remove|list`); any one of them opens the repository.
//!
//! ```json
//! {"format": 1, "kdf": "argon2id", "m_cost_kib": 65536, "t_cost": 3, "p_cost": 1,
//!  "salt": "<32 hex>", "nonce": "<24 hex>", "wrapped": "<96 hex>", "created": 1800000000,
//!  "host": "backup1", "label": "admin"}
//! ```
//!
//! The cost parameters read from a slot are bounded, so a hostile slot cannot make opening
//! take unbounded memory or time.

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::crypto::{random, MasterKey, KEY_LEN};
use crate::repo::error::{Error, Result};

/// Slot format version.
const FORMAT: u32 = 1;
/// Largest argon2 memory cost accepted from a slot: 1 GiB.
const MAX_M_COST_KIB: u32 = 1 << 20;
/// Largest argon2 time cost accepted from a slot.
const MAX_T_COST: u32 = 64;
/// Largest argon2 parallelism accepted from a slot.
const MAX_P_COST: u32 = 16;

/// argon2id's cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Cost {
    /// The default: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended setting).
    pub const DEFAULT: Cost = Cost {
        m_cost_kib: 64 << 10,
        t_cost: 3,
        p_cost: 1,
    };

    fn params(&self) -> Result<argon2::Params> {
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST
        {
            return Err(Error::BadArgument(format!(
                "argon2id costs {self:?} are beyond what snarf accepts (at most {MAX_M_COST_KIB} KiB, {MAX_T_COST} passes, {MAX_P_COST} lanes)"
            )));
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| Error::BadArgument(format!("argon2id costs {self:?}: {e}")))
    }
}

/// One key slot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    /// Slot format version.
    pub format: u32,
    /// Always "argon2id".
    pub kdf: String,
    /// argon2id's costs.
    #[serde(flatten)]
    pub cost: Cost,
    /// argon2id's salt (hex).
    pub salt: String,
    /// AES-256-GCM nonce of the wrapped key (hex).
    pub nonce: String,
    /// The master key, sealed (hex).
    pub wrapped: String,
    /// When the slot was made, Unix seconds.
    pub created: u64,
    /// The host it was made on.
    pub host: String,
    /// A label for `snarf repo key list`.
    pub label: String,
}

/// The associated data of a slot's wrapped key: its id and descriptive fields.
fn slot_ad(slot_id: &str, created: u64, host: &str, label: &str) -> Vec<u8> {
    let mut a = slot_id.as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(&created.to_le_bytes());
    a.extend_from_slice(host.as_bytes());
    a.push(0);
    a.extend_from_slice(label.as_bytes());
    a
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The key-encryption key of `passphrase` under `salt` and `cost`.
fn kek(passphrase: &[u8], salt: &[u8], cost: &Cost) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let a = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        cost.params()?,
    );
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    a.hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| Error::BadArgument(format!("argon2id: {e}")))?;
    Ok(out)
}

impl KeySlot {
    /// A new slot `slot_id` wrapping `master` under `passphrase`.
    pub fn wrap(
        master: &MasterKey,
        passphrase: &[u8],
        slot_id: &str,
        cost: Cost,
        label: &str,
    ) -> Result<KeySlot> {
        if passphrase.is_empty() {
            return Err(Error::BadArgument(
                "an empty passphrase protects nothing; choose one".into(),
            ));
        }
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        let mut nonce = [0u8; 12];
        random(&mut nonce)?;
        let k = kek(passphrase, &salt, &cost)?;
        let created = crate::repo::ids::now_secs();
        let host = crate::repo::lock::hostname();
        let label: String = label.chars().filter(|c| !c.is_control()).collect();
        let wrapped = Aes256Gcm::new((&*k).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &master.bytes()[..],
                    aad: &slot_ad(slot_id, created, &host, &label),
                },
            )
            .map_err(|_| Error::BadArgument("wrapping the master key failed".into()))?;
        Ok(KeySlot {
            format: FORMAT,
            kdf: "argon2id".into(),
            cost,
            salt: hex(&salt),
            nonce: hex(&nonce),
            wrapped: hex(&wrapped),
            created,
            host,
            label,
        })
    }

    /// The master key, if `passphrase` is this slot's; `Ok(None)` for another passphrase,
    /// an error for a slot that is not a valid slot.
    pub fn unwrap_key(&self, passphrase: &[u8], slot_id: &str) -> Result<Option<MasterKey>> {
        let bad = |why: &str| Error::BadArgument(format!("key slot {slot_id} is not valid: {why}"));
        if self.format != FORMAT || self.kdf != "argon2id" {
            return Err(bad("unknown format or key derivation"));
        }
        let salt = unhex(&self.salt)
            .filter(|s| s.len() >= 8)
            .ok_or_else(|| bad("salt"))?;
        let nonce = unhex(&self.nonce)
            .filter(|n| n.len() == 12)
            .ok_or_else(|| bad("nonce"))?;
        let wrapped = unhex(&self.wrapped)
            .filter(|w| w.len() == KEY_LEN + 16)
            .ok_or_else(|| bad("wrapped key"))?;
        let k = kek(passphrase, &salt, &self.cost)?;
        let nonce = Nonce::try_from(&nonce[..]).map_err(|_| bad("nonce"))?;
        match Aes256Gcm::new((&*k).into()).decrypt(
            &nonce,
            Payload {
                msg: &wrapped,
                aad: &slot_ad(slot_id, self.created, &self.host, &self.label),
            },
        ) {
            Ok(key) => {
                let key = Zeroizing::new(key);
                let mut b = [0u8; KEY_LEN];
                b.copy_from_slice(&key);
                Ok(Some(MasterKey::from_bytes(b)))
            }
            Err(_) => Ok(None),
        }
    }

    /// The slot as stored.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::BadArgument(format!("cannot encode a key slot: {e}")))
    }

    /// Parses a stored slot.
    pub fn parse(data: &[u8], slot_id: &str) -> Result<KeySlot> {
        serde_json::from_slice(data)
            .map_err(|e| Error::BadArgument(format!("key slot {slot_id} is not valid: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap costs, so the test runs in milliseconds.
    const FAST: Cost = Cost {
        m_cost_kib: 256,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn the_right_passphrase_unwraps_the_master_key_and_a_wrong_one_does_not() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::wrap(&master, b"correct horse", "s1", FAST, "admin").unwrap();
        let json = slot.to_json().unwrap();
        assert!(!String::from_utf8_lossy(&json).contains(&hex(master.bytes())));
        let back = KeySlot::parse(&json, "s1").unwrap();
        assert_eq!(back, slot);
        let got = back.unwrap_key(b"correct horse", "s1").unwrap().unwrap();
        assert_eq!(got.bytes(), master.bytes());
        assert!(back.unwrap_key(b"wrong horse", "s1").unwrap().is_none());
        // A slot copied under another id, or relabelled, does not open.
        assert!(back.unwrap_key(b"correct horse", "s2").unwrap().is_none());
        let mut relabelled = back.clone();
        relabelled.label = "other".into();
        assert!(relabelled
            .unwrap_key(b"correct horse", "s1")
            .unwrap()
            .is_none());
        assert!(KeySlot::wrap(&master, b"", "s3", FAST, "x").is_err());
    }

    #[test]
    fn hostile_slots_are_refused_without_unbounded_work() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::wrap(&master, b"pw", "s1", FAST, "admin\nforged line").unwrap();
        assert_eq!(slot.label, "adminforged line");
        let mut huge = slot.clone();
        huge.cost.m_cost_kib = u32::MAX;
        assert!(huge.unwrap_key(b"pw", "s1").is_err());
        let mut passes = slot.clone();
        passes.cost.t_cost = 1 << 20;
        assert!(passes.unwrap_key(b"pw", "s1").is_err());
        let mut short = slot.clone();
        short.wrapped.truncate(10);
        assert!(short.unwrap_key(b"pw", "s1").is_err());
        let mut kdf = slot;
        kdf.kdf = "md5".into();
        assert!(kdf.unwrap_key(b"pw", "s1").is_err());
        assert!(KeySlot::parse(b"{not json", "s1").is_err());
    }
}
