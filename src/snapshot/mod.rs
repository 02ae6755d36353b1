//! Snapshots over the store: epochs, copy-on-write pre-image capture, the pre-image cache
//! (memory, then spill, then writer throttling) and frozen snapshot views.
