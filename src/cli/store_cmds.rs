//! Commands that create and inspect a store.

use std::path::PathBuf;

use clap::Args;

use super::CliResult;
use crate::store::{settings, Budgets, InitOptions, Store};
use crate::units::Bytes;

/// Arguments of `snarf init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for the new store (created if missing; must be empty).
    pub store: PathBuf,
    /// Size of one snarf, the unit of copy-on-write and backup: a power of two from 4K to 1M.
    #[arg(long, default_value = "64K", value_parser = super::numbers::snarf_size)]
    pub snarf_size: u64,
    /// Memory for pre-images (old contents kept for snapshots): a cache of the durable ones
    /// of persistent snapshots, the first home of a volatile snapshot's (spilled past it).
    #[arg(long, default_value = "256M", value_parser = super::numbers::budget)]
    pub preimage_mem: u64,
    /// Disk space for pre-images (STORE/cow/: every one a persistent snapshot needs, and a
    /// volatile snapshot's spilled ones) before writers are slowed down.
    #[arg(long, default_value = "4G", value_parser = super::numbers::budget)]
    pub preimage_disk: u64,
    /// Seconds a writer may be held up by full budgets before the snapshot holding the most
    /// pre-images is broken so live writes go on (0 to 86400).
    #[arg(long, default_value_t = settings::DEFAULT_BREAK_AFTER_SECS,
          value_parser = super::numbers::break_after)]
    pub break_after: f64,
    /// Default backup repository for jobs and the mount's backups/ folder.
    #[arg(long)]
    pub repo: Option<String>,
    /// What `mkdir snapshots/NAME` takes: persistent (outlives the mount, crash-safe) or
    /// volatile (memory first, gone at unmount).
    #[arg(long, default_value = "persistent", value_parser = super::numbers::durability)]
    pub snapshots: crate::store::Durability,
}

/// `snarf init`: creates a store.
pub fn init(args: InitArgs) -> CliResult {
    let opts = InitOptions {
        snarf_size: args.snarf_size,
        budgets: Budgets {
            memory: args.preimage_mem,
            disk: args.preimage_disk,
            break_after_secs: args.break_after,
        },
        repository: args.repo,
        snapshots: args.snapshots,
    };
    Store::init(&args.store, &opts)?;
    println!(
        "created store {} (snarf size {}, pre-images: {})",
        args.store.display(),
        Bytes(opts.snarf_size),
        opts.budgets
    );
    Ok(())
}
