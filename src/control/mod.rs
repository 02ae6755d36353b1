//! Command grammar and table renderers for the files under `MOUNTPOINT/control/`: pure
//! text in, text out, so the mount, the CLI and tests share one contract.
