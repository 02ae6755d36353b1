//! Which index entries a backup may deduplicate against. An index entry is only a claim: its
//! pack may have been deleted, truncated or replaced since, and a backup that trusted it
//! would commit a chunk it cannot read back. So before a chunk counts as already stored, its
//! entry is checked against the pack's own trailer (read once per pack, verified by its
//! hash): the pack exists, and its trailer lists this chunk at this offset with these
//! lengths. An entry that fails is skipped (the next entry of the same chunk is tried), and
//! the data is stored again. Trailers of recently used packs are kept (a few MiB at most);
//! a pack that fails is remembered as such.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::chunk::ChunkRef;
use super::error::Result;
use super::ids::{ChunkId, PackId};
use super::index::Index;
use super::pack::{self, TrailerEntry};
use super::reader;
use super::Repo;
use crate::chain::ErrorChain;

/// Packs whose trailers are kept; past it the table starts over.
const KEPT_PACKS: usize = 256;

/// A pack's trailer sorted by offset, or `None` when the pack is missing or damaged.
type Trailer = Option<Arc<Vec<TrailerEntry>>>;

/// Index lookups that only return entries a backup can read back.
pub(crate) struct Known {
    repo: Repo,
    index: Index,
    trailers: Mutex<HashMap<PackId, Trailer>>,
}

impl Known {
    /// Lookups in `index` of `repo`.
    pub(crate) fn new(repo: Repo, index: Index) -> Known {
        Known {
            repo,
            index,
            trailers: Mutex::new(HashMap::new()),
        }
    }

    /// The first entry of `id` whose pack's trailer lists it, `None` if there is none.
    pub(crate) fn lookup(&self, id: &ChunkId) -> Result<Option<ChunkRef>> {
        for r in self.index.lookup_all(id)? {
            if self.holds(&r) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// True when pack `r.pack` exists and its verified trailer lists chunk `r` exactly.
    pub(crate) fn holds(&self, r: &ChunkRef) -> bool {
        let trailer = self.trailer(&r.pack);
        trailer.is_some_and(|t| {
            t.binary_search_by_key(&r.offset, |e| e.offset)
                .ok()
                .is_some_and(|i| {
                    let e = &t[i];
                    e.id == r.id && e.stored_len == r.stored_len && e.raw_len == r.raw_len
                })
        })
    }

    fn trailer(&self, id: &PackId) -> Trailer {
        if let Some(t) = self.trailers.lock().get(id) {
            return t.clone();
        }
        // Read outside the lock: other preparers go on meanwhile.
        let read = reader::open_pack(&self.repo, id)
            .map_err(|e| e.chain().to_string())
            .and_then(|f| {
                pack::read_trailer(&f, id)
                    .map_err(|(offset, why)| format!("it is damaged at offset {offset}: {why}"))
            });
        let t = match read {
            Ok(mut entries) => {
                entries.sort_by_key(|e| e.offset);
                Some(Arc::new(entries))
            }
            Err(why) => {
                log::warn!(
                    "{}: the index lists chunks in pack {id}, which cannot be used ({why}); their data is stored again; `snarf repair index {}` rebuilds the index from the packs there are",
                    self.repo.path().display(),
                    self.repo.path().display()
                );
                None
            }
        };
        let mut map = self.trailers.lock();
        if map.len() >= KEPT_PACKS {
            // Failed packs stay remembered, so each is reported once.
            map.retain(|_, t| t.is_none());
        }
        map.insert(*id, t.clone());
        t
    }
}
