//! The backup repository: blake3-addressed, zstd-compressed chunks in pack files, an index,
//! per-backup manifests, and finishing, the commit that only ever goes forward.
