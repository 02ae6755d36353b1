//! Repository format 2: objects behind the storage backend, tree manifests, frames, and the
//! encryption seam. The building blocks are here; the repository on top is being built.

pub mod backup;
pub mod chunk;
pub mod crypto;
pub mod frame;
pub mod index;
pub mod keyslot;
pub mod pack;
pub mod tree;
