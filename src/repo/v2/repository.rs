//! A format 2 repository over any [`Backend`]: opening and creating it, its committed
//! backups, and reading blobs (chunks and tree pages) through a small cache of decoded
//! frames. Writing is in `writer`, reading volumes and restores in `reader`, pruning and
//! gc in `gc`, check in `check`.
//!
//! Crash safety needs no finishing record: every write before the commit (packs, the
//! backup's index run) is an immutable object that is harmless if the backup never commits,
//! the commit is the create-only write of `backups/<id>`, and every step after it (index
//! merge, retention, gc) is safe to redo from what is on the backend; a `state/gc-pending`
//! marker says a gc was cut short, and the next writer runs it first.
//!
//! An encrypted repository is unlocked at open: the passphrase (`repo::passphrase`) opens
//! one of its key slots (`unlock`), the master key authenticates `config` and becomes the
//! [`Aead`] seal that every object passes through. All of it happens here, on the client: a
//! far `snarf serve` stores sealed bytes and never needs the passphrase.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use super::backup::{BackupObject, MAX_BYTES as MAX_BACKUP_BYTES};
use super::chunk::{BlobKind, ChunkRef};
use super::config::{self, Config, Encryption};
use super::crypto::{Aead, MasterKey};
use super::frame::{Plain, Seal};
use super::keyslot::Cost;
use super::pack;
use super::tree::PageStore;
use super::unlock;
use crate::chain::ErrorChain;
use crate::repo::backend::{Backend, Key, Kind, LockGuard, StateName};
use crate::repo::error::{Error, Fix, Result};
use crate::repo::ids::{self, BackupId, PackId};
use crate::repo::passphrase::Passphrase;

/// Decoded frames kept for readers (a frame is at most 16 MiB raw, usually 1 MiB).
const KEPT_FRAMES: usize = 8;

/// Options of a new format 2 repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// zstd level, 1 to 19.
    pub compression: i32,
    /// Pack size at which a pack is sealed.
    pub pack_target: u64,
    /// Raw bytes per frame.
    pub frame_bytes: u64,
    /// Seconds an unreferenced pack is kept before gc deletes it.
    pub gc_grace_secs: u64,
    /// Encrypt, with this first key slot; `None` for a plain repository.
    pub encryption: Option<NewKey>,
}

/// A key slot to make: its passphrase, argon2id's costs and a label.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The passphrase.
    pub passphrase: std::sync::Arc<Passphrase>,
    /// argon2id's costs.
    pub cost: Cost,
    /// A label for `snarf repo key list`.
    pub label: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            compression: crate::repo::v1::DEFAULT_COMPRESSION,
            pack_target: crate::repo::v1::DEFAULT_PACK_TARGET,
            frame_bytes: super::frame::DEFAULT_FRAME_BYTES as u64,
            gc_grace_secs: config::DEFAULT_GC_GRACE_SECS,
            encryption: None,
        }
    }
}

/// An open format 2 repository; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

/// Decoded frames by (pack, frame offset), oldest first.
type FrameCache = Mutex<VecDeque<((PackId, u64), Arc<Vec<u8>>)>>;

struct Inner {
    backend: Arc<dyn Backend>,
    config: Config,
    seal: Arc<dyn Seal>,
    master: Option<MasterKey>,
    frames: FrameCache,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.inner.backend.location())
    }
}

impl Repository {
    /// Creates a new repository on `backend`, which must hold no repository yet: the key
    /// slot first (if encrypted), the format file last.
    pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions) -> Result<Repository> {
        let mut config = Config {
            format: config::FORMAT,
            compression: opts.compression,
            pack_target: opts.pack_target,
            frame_bytes: opts.frame_bytes,
            gc_grace_secs: opts.gc_grace_secs,
            created: ids::now_secs(),
            encryption: Encryption::None,
            auth: None,
        };
        config.validate().map_err(Error::BadArgument)?;
        if backend.size(&Key::Config)?.is_some() || unlock::any(backend.as_ref())? {
            return Err(Error::NotEmpty {
                path: backend.location().into(),
            });
        }
        let master = match &opts.encryption {
            None => None,
            Some(k) => {
                let master = MasterKey::generate()?;
                unlock::add(
                    backend.as_ref(),
                    &master,
                    k.passphrase.as_bytes(),
                    k.cost,
                    &k.label,
                )?;
                config.encryption = Encryption::Aes256Gcm;
                config.auth = Some(config.mac(&master.config_mac_key()));
                Some(master)
            }
        };
        config::create(backend.as_ref(), &config)?;
        Ok(Repository::assemble(backend, config, master))
    }

    /// Opens the repository on `backend`; an encrypted one takes its passphrase from
    /// `repo::passphrase` (file, environment or terminal).
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repository> {
        let location = backend.location();
        Repository::open_with(backend, &|| crate::repo::passphrase::existing(&location))
    }

    /// Opens the repository on `backend` with `passphrase` if it is encrypted.
    pub fn open_with_passphrase(
        backend: Arc<dyn Backend>,
        passphrase: &Passphrase,
    ) -> Result<Repository> {
        Repository::open_with(backend, &|| Ok(Passphrase::new(passphrase.as_bytes())))
    }

    /// Opens the repository on `backend`, calling `passphrase` only if it is encrypted
    /// (`snarf copy` asks for its source's passphrase from sources of its own).
    pub fn open_with(
        backend: Arc<dyn Backend>,
        passphrase: &dyn Fn() -> Result<Passphrase>,
    ) -> Result<Repository> {
        let config = config::read(backend.as_ref())?.ok_or_else(|| Error::NotARepo {
            path: backend.location().into(),
        })?;
        let damaged = |why: &str| Error::Damaged {
            repo: backend.location().into(),
            path: Key::Config.name().into(),
            why: why.into(),
            fix: Fix::Copy,
        };
        let master = match config.encryption {
            // A plain `config` beside key slots was changed to make snarf write in clear.
            Encryption::None if unlock::any(backend.as_ref())? => {
                return Err(damaged(
                    "it says the repository is not encrypted, yet it has key slots (keys/): it was changed, and snarf will not write in clear into an encrypted repository",
                ))
            }
            Encryption::None => None,
            Encryption::Aes256Gcm => {
                let pass = passphrase()?;
                let master = unlock::unlock(backend.as_ref(), pass.as_bytes())?;
                if config.auth.as_deref() != Some(config.mac(&master.config_mac_key()).as_str())
                {
                    return Err(damaged("its settings fail authentication"));
                }
                Some(master)
            }
        };
        Ok(Repository::assemble(backend, config, master))
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        config: Config,
        master: Option<MasterKey>,
    ) -> Repository {
        let seal: Arc<dyn Seal> = match &master {
            None => Arc::new(Plain),
            Some(k) => Arc::new(Aead::new(k.clone())),
        };
        Repository {
            inner: Arc::new(Inner {
                backend,
                config,
                seal,
                master,
                frames: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The master key of an encrypted repository.
    pub(crate) fn master_key(&self) -> Option<&MasterKey> {
        self.inner.master.as_ref()
    }

    /// Whether the repository is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.inner.master.is_some()
    }

    /// The key slots, for `snarf repo key list`.
    pub fn key_slots(&self) -> Result<Vec<unlock::SlotInfo>> {
        self.require_encrypted()?;
        unlock::list(self.backend().as_ref())
    }

    /// Adds a key slot (`snarf repo key add`); returns its id.
    pub fn add_key(&self, key: &NewKey) -> Result<String> {
        let master = self.require_encrypted()?;
        unlock::add(
            self.backend().as_ref(),
            master,
            key.passphrase.as_bytes(),
            key.cost,
            &key.label,
        )
        .map(|id| id.to_string())
    }

    /// Removes key slot `id` under the lock (`snarf repo key remove`); never the last.
    pub fn remove_key(&self, id: &str, wait: Option<std::time::Duration>) -> Result<()> {
        self.require_encrypted()?;
        let _lock = self.lock("snarf repo key remove", wait)?;
        unlock::remove(self.backend().as_ref(), id)
    }

    fn require_encrypted(&self) -> Result<&MasterKey> {
        self.inner.master.as_ref().ok_or_else(|| {
            Error::BadArgument(format!(
                "repository {} is not encrypted, so it has no keys; encryption is chosen at `snarf repo init --encryption`",
                self.location()
            ))
        })
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.inner.backend.location()
    }

    /// The local folder holding it, if its backend is one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        self.inner.backend.local_root()
    }

    /// The repository's settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The seal of its objects (identity for a plain repository).
    pub fn seal(&self) -> &dyn Seal {
        self.inner.seal.as_ref()
    }

    /// The seal, shared (for the index runs, which keep it).
    pub(crate) fn shared_seal(&self) -> &Arc<dyn Seal> {
        &self.inner.seal
    }

    /// Takes the lock for `holder`, then finishes what a crashed writer left: leftovers
    /// swept, a cut-short gc completed.
    pub fn lock(
        &self,
        holder: &str,
        wait: Option<std::time::Duration>,
    ) -> Result<Box<dyn LockGuard>> {
        let guard = self.inner.backend.lock(holder, wait)?;
        self.inner.backend.sweep_leftovers()?;
        if self
            .inner
            .backend
            .size(&Key::State(StateName::GcPending))?
            .is_some()
        {
            super::gc::collect(self, &*guard)?;
        }
        Ok(guard)
    }

    /// Ids of the committed backups, oldest first.
    pub fn backup_ids(&self) -> Result<Vec<BackupId>> {
        let mut out: Vec<BackupId> = self
            .inner
            .backend
            .list(Kind::Backup)?
            .into_iter()
            .filter_map(|(k, _)| match k {
                Key::Backup(id) => Some(id),
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every committed backup, oldest first; damaged ones are skipped here (and reported by
    /// `check`).
    pub fn list_backups(&self) -> Result<Vec<BackupObject>> {
        let mut out = Vec::new();
        for id in self.backup_ids()? {
            match self.read_backup(&id) {
                Ok(Some(b)) => out.push(b),
                Ok(None) => {}
                Err(e) => log::warn!("skipping backup {id}: {}", e.chain()),
            }
        }
        Ok(out)
    }

    /// The committed backup `id`.
    pub fn backup(&self, id: &str) -> Result<BackupObject> {
        let missing = || Error::NoSuchBackup {
            repo: self.location().into(),
            id: id.to_string(),
        };
        let bid = BackupId::parse(id).ok_or_else(missing)?;
        self.read_backup(&bid)?.ok_or_else(missing)
    }

    /// The backup object `id`, validated; `None` if there is none.
    pub(crate) fn read_backup(&self, id: &BackupId) -> Result<Option<BackupObject>> {
        let key = Key::Backup(id.clone());
        let Some(data) = self.inner.backend.read(&key, MAX_BACKUP_BYTES)? else {
            return Ok(None);
        };
        BackupObject::decode(self.seal(), &self.location(), id, data).map(Some)
    }

    /// The raw bytes of the frame holding `r`, through the cache.
    fn frame(&self, r: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        let at = (r.pack, r.offset);
        if let Some((_, f)) = self.inner.frames.lock().iter().find(|(k, _)| *k == at) {
            return Ok(f.clone());
        }
        let raw = pack::read_frame(self.inner.backend.as_ref(), self.seal(), r)
            .map_err(|e| self.missing_pack(r, e))?;
        let f = Arc::new(raw);
        let mut kept = self.inner.frames.lock();
        if kept.len() >= KEPT_FRAMES {
            kept.pop_front();
        }
        kept.push_back((at, f.clone()));
        Ok(f)
    }

    /// A missing pack read says which pack, not just "no such object".
    fn missing_pack(&self, r: &ChunkRef, e: Error) -> Error {
        let key = pack::pack_key(r);
        match self.inner.backend.size(&key) {
            Ok(None) => Error::PackMissing {
                repo: self.location().into(),
                pack: r.pack.to_string(),
                path: key.name().into(),
            },
            _ => e,
        }
    }

    /// Reads and verifies one blob: a chunk of `r.raw_len` bytes or a tree page (a zero
    /// reference gives zeros).
    pub fn read_blob(&self, r: &ChunkRef) -> Result<Vec<u8>> {
        if r.is_zero() {
            return Ok(vec![0; r.raw_len as usize]);
        }
        let frame = self.frame(r)?;
        pack::blob_of(self.seal(), &frame, r, &self.location())
    }
}

impl PageStore for Repository {
    fn put_page(&self, _raw: &[u8]) -> Result<ChunkRef> {
        Err(Error::BadArgument(
            "tree pages are written only by a backup writer".into(),
        ))
    }

    fn get_page(&self, r: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        if r.kind != BlobKind::Page {
            return Err(Error::Damaged {
                repo: self.location().into(),
                path: pack::pack_key(r).name().into(),
                why: format!(
                    "blob {} is named as a tree page but is not one",
                    r.id.short()
                ),
                fix: crate::repo::error::Fix::Check,
            });
        }
        self.read_blob(r).map(Arc::new)
    }
}
