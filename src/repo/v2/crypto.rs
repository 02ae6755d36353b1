//! Encryption of a repository (issue 16): the AEAD implementation of the [`Seal`] seam that
//! every frame, pack trailer and metadata object passes through (a plain repository's seal
//! is the identity, [`Plain`](super::frame::Plain)).
//!
//! - Cipher: AES-256-GCM (RustCrypto `aes-gcm`), chosen over ChaCha20-Poly1305 because the
//!   machines snarf runs on have AES-NI and CLMUL, where it is several times faster, and a
//!   backup's throughput is bound by what it does per byte.
//! - Keys: a random 256-bit master key (wrapped per passphrase in a key slot, see
//!   `keyslot`). Each object gets its own subkey, `blake3::derive_key` of the master key and
//!   the object's random id (a pack id, or a fresh salt for a rewritten object), so nonces
//!   can simply be counters within the object (a frame's offset in its pack, the trailer's
//!   `u64::MAX`): no random-nonce collision bound to worry about.
//! - Associated data binds each ciphertext to its object's name and what it is (a frame, a
//!   trailer, a backup object), so an object moved, swapped or replayed elsewhere fails.
//! - Blob ids are `blake3::keyed_hash` under a key derived from the master key, so
//!   deduplication works and ids reveal nothing about the contents.
//!
//! A tampered byte anywhere makes opening fail; callers turn that into an error that names
//! the object, never into wrong data.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, Zeroizing};

use super::frame::Seal;
use crate::repo::error::{Error, Result};
use crate::repo::ids::ChunkId;

/// Bytes of an AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the salt in front of a sealed whole object.
pub const SALT_LEN: usize = 16;
/// Bytes of a master key.
pub const KEY_LEN: usize = 32;

const SUBKEY_CONTEXT: &str = "snarf 2026-12 repository object subkey";
const ID_CONTEXT: &str = "snarf 2026-12 repository blob id key";
const CONFIG_CONTEXT: &str = "snarf 2026-12 repository config mac key";
const NAME_CONTEXT: &str = "snarf 2026-12 repository object name key";

/// A repository's master key, wiped from memory when dropped.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// A new random master key from the operating system.
    pub fn generate() -> Result<MasterKey> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random(&mut k[..])?;
        Ok(MasterKey(k))
    }

    /// The key of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    /// The raw bytes (to be wrapped in a key slot).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The name under which an object the user names (a pin) is stored: 32 hex digits of
    /// a keyed hash, so names reveal nothing but stay stable.
    pub fn hidden_name(&self, name: &str) -> String {
        let key = Zeroizing::new(blake3::derive_key(NAME_CONTEXT, &self.0[..]));
        let h = blake3::keyed_hash(&key, name.as_bytes()).to_hex();
        h[..32].to_string()
    }

    /// The key of the `config` MAC (see `config`).
    pub fn config_mac_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(CONFIG_CONTEXT, &self.0[..]))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Fills `buf` with random bytes from the operating system.
pub fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::io(
            "reading random bytes from the operating system",
            std::io::Error::other(e.to_string()),
        )
    })
}

/// The seal of an encrypted repository (see the module documentation).
pub struct Aead {
    master: MasterKey,
    id_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead(aes-256-gcm)")
    }
}

impl Aead {
    /// The seal of the repository whose master key is `master`.
    pub fn new(master: MasterKey) -> Aead {
        let id_key = Zeroizing::new(blake3::derive_key(ID_CONTEXT, &master.0[..]));
        Aead { master, id_key }
    }

    /// The cipher of object `object` (its random id or salt).
    fn cipher(&self, object: &[u8]) -> Aes256Gcm {
        let mut material = Zeroizing::new(Vec::with_capacity(KEY_LEN + object.len()));
        material.extend_from_slice(&self.master.0[..]);
        material.extend_from_slice(object);
        let mut sub = blake3::derive_key(SUBKEY_CONTEXT, &material);
        let cipher = Aes256Gcm::new((&sub).into());
        sub.zeroize();
        cipher
    }
}

/// The nonce of text number `counter` of an object: the counter, then zeros.
fn nonce(counter: u64) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

impl Seal for Aead {
    fn overhead(&self) -> usize {
        TAG_LEN
    }

    fn seal(&self, object: &[u8], counter: u64, ad: &[u8], mut plain: Vec<u8>) -> Result<Vec<u8>> {
        match self
            .cipher(object)
            .encrypt_in_place(&nonce(counter), ad, &mut plain)
        {
            Ok(()) => Ok(plain),
            Err(_) => {
                plain.zeroize();
                Err(Error::BadArgument(format!(
                    "a text of {} bytes is too long for AES-256-GCM",
                    plain.len()
                )))
            }
        }
    }

    fn open(
        &self,
        object: &[u8],
        counter: u64,
        ad: &[u8],
        mut sealed: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, String> {
        if sealed.len() < TAG_LEN {
            return Err("it is shorter than its authentication tag".into());
        }
        self.cipher(object)
            .decrypt_in_place(&nonce(counter), ad, &mut sealed)
            .map_err(|_| {
                "it fails authentication (tampered, damaged, or not this repository's)".to_string()
            })?;
        Ok(sealed)
    }

    fn blob_id(&self, raw: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, raw).as_bytes())
    }
}

/// Seals a whole object that may be rewritten under the same name (a backup object, a
/// finishing record): a fresh random salt is its object id, stored in front.
pub fn seal_object(seal: &dyn Seal, name: &str, what: &str, plain: Vec<u8>) -> Result<Vec<u8>> {
    let mut salt = [0u8; SALT_LEN];
    random(&mut salt)?;
    let mut out = salt.to_vec();
    out.extend_from_slice(&seal.seal(&salt, 0, &object_ad(name, what), plain)?);
    Ok(out)
}

/// Opens an object sealed by [`seal_object`]; the error says why it is not authentic.
pub fn open_object(
    seal: &dyn Seal,
    name: &str,
    what: &str,
    sealed: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    if sealed.len() < SALT_LEN {
        return Err("it is too short to be a sealed object".into());
    }
    let salt = sealed[..SALT_LEN].to_vec();
    seal.open(
        &salt,
        0,
        &object_ad(name, what),
        sealed[SALT_LEN..].to_vec(),
    )
}

fn object_ad(name: &str, what: &str) -> Vec<u8> {
    let mut a = name.as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(what.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::v2::frame::Plain;

    #[test]
    fn sealed_texts_open_only_with_their_key_object_counter_and_place() {
        let a = Aead::new(MasterKey::generate().unwrap());
        let text = b"the quick brown fox in a snarf".to_vec();
        let s = a
            .seal(b"pack-1", 32, b"packs/ab/x\0frame", text.clone())
            .unwrap();
        assert_eq!(s.len(), text.len() + TAG_LEN);
        assert!(!s.windows(5).any(|w| w == b"quick"), "plaintext leaked");
        assert_eq!(
            a.open(b"pack-1", 32, b"packs/ab/x\0frame", s.clone())
                .unwrap(),
            text
        );
        for (obj, ctr, ad) in [
            (&b"pack-2"[..], 32, &b"packs/ab/x\0frame"[..]),
            (b"pack-1", 33, b"packs/ab/x\0frame"),
            (b"pack-1", 32, b"packs/ab/y\0frame"),
            (b"pack-1", 32, b"packs/ab/x\0trailer"),
        ] {
            assert!(a.open(obj, ctr, ad, s.clone()).is_err());
        }
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x20;
            assert!(
                a.open(b"pack-1", 32, b"packs/ab/x\0frame", t).is_err(),
                "byte {i}"
            );
        }
        let other = Aead::new(MasterKey::generate().unwrap());
        assert!(other.open(b"pack-1", 32, b"packs/ab/x\0frame", s).is_err());
        assert!(a.open(b"p", 0, b"", vec![1, 2]).is_err());
    }

    #[test]
    fn blob_ids_are_keyed_so_they_reveal_nothing_but_still_deduplicate() {
        let k = MasterKey::from_bytes([7; 32]);
        let a = Aead::new(k.clone());
        let b = Aead::new(k);
        let c = Aead::new(MasterKey::from_bytes([8; 32]));
        let data = vec![42u8; 65536];
        assert_eq!(a.blob_id(&data), b.blob_id(&data));
        assert_ne!(a.blob_id(&data), Plain.blob_id(&data));
        assert_ne!(a.blob_id(&data), c.blob_id(&data));
    }

    #[test]
    fn rewritten_objects_get_fresh_salts_and_are_bound_to_their_name() {
        let a = Aead::new(MasterKey::generate().unwrap());
        let one = seal_object(&a, "finishing/x", "finishing", b"{}".to_vec()).unwrap();
        let two = seal_object(&a, "finishing/x", "finishing", b"{}".to_vec()).unwrap();
        assert_ne!(one, two);
        assert_eq!(
            open_object(&a, "finishing/x", "finishing", one.clone()).unwrap(),
            b"{}"
        );
        assert!(open_object(&a, "finishing/y", "finishing", one.clone()).is_err());
        assert!(open_object(&a, "finishing/x", "backup", one).is_err());
        assert!(open_object(&a, "finishing/x", "finishing", vec![0; 3]).is_err());
        // Plain objects pass through with only the salt in front.
        let p = seal_object(&Plain, "backups/b", "backup", b"json".to_vec()).unwrap();
        assert_eq!(&p[SALT_LEN..], b"json");
    }
}
