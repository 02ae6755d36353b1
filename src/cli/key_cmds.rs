//! `snarf repo key list|add|remove REPO`: the passphrases (key slots) of an encrypted
//! repository, and the options that make a new key slot (`repo init --encryption`, `repo
//! key add`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};
use crate::repo::v2::keyslot::Cost;
use crate::repo::v2::{NewKey, Repository};
use crate::repo::{passphrase, Handle, Location};
use crate::units::{parse_size, Bytes};

/// Smallest argon2id memory accepted: below it a passphrase is cheap to guess.
const MIN_KDF_MEMORY: u64 = 8 << 20;
/// Largest argon2id memory accepted (what a slot may ask of a reader, see `keyslot`).
const MAX_KDF_MEMORY: u64 = 1 << 30;

/// Arguments of `snarf repo key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// List the key slots (passphrases) of an encrypted repository.
    List(KeyListArgs),
    /// Add a passphrase: a new key slot wrapping the same master key.
    Add(KeyAddArgs),
    /// Remove a key slot (never the last one).
    Remove(KeyRemoveArgs),
}

/// Arguments of `snarf repo key list`.
#[derive(Debug, Args)]
struct KeyListArgs {
    /// The repository.
    repo: PathBuf,
    /// Print the slots as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// Arguments of `snarf repo key add`.
#[derive(Debug, Args)]
struct KeyAddArgs {
    /// The repository (opened with a passphrase it has: --password-file, SNARF_PASSWORD or
    /// a prompt).
    repo: PathBuf,
    /// File holding the passphrase to add (else SNARF_NEW_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    new_password_file: Option<PathBuf>,
    #[command(flatten)]
    slot: SlotOptions,
}

/// Arguments of `snarf repo key remove`.
#[derive(Debug, Args)]
struct KeyRemoveArgs {
    /// The repository.
    repo: PathBuf,
    /// The slot's id, as `snarf repo key list` shows it.
    id: String,
}

/// How a new key slot is made.
#[derive(Debug, Clone, Args)]
pub struct SlotOptions {
    /// A label for the new key slot, shown by `snarf repo key list` (e.g. who holds it).
    #[arg(long, default_value = "", value_name = "TEXT")]
    label: String,
    /// Memory argon2id uses to stretch the passphrase, 8M to 1G: more makes guessing
    /// dearer, and every open of the repository pays it once.
    #[arg(long, default_value = "64M", value_parser = parse_size, value_name = "SIZE")]
    kdf_memory: u64,
}

impl SlotOptions {
    /// The key slot to make with `passphrase`.
    pub fn new_key(&self, passphrase: passphrase::Passphrase) -> Result<NewKey, CliError> {
        if !(MIN_KDF_MEMORY..=MAX_KDF_MEMORY).contains(&self.kdf_memory) {
            return Err(CliError::new(format!(
                "--kdf-memory {} is not allowed: use {} to {} (default 64 MiB)",
                Bytes(self.kdf_memory),
                Bytes(MIN_KDF_MEMORY),
                Bytes(MAX_KDF_MEMORY)
            )));
        }
        Ok(NewKey {
            passphrase: Arc::new(passphrase),
            cost: Cost {
                m_cost_kib: (self.kdf_memory >> 10) as u32,
                ..Cost::DEFAULT
            },
            label: self.label.clone(),
        })
    }
}

/// Opens the encrypted format 2 repository named on the command line.
fn open_encrypted(arg: &std::path::Path) -> Result<Repository, CliError> {
    match Handle::open(&Location::of_arg(arg)?)? {
        Handle::V2(r) if r.is_encrypted() => Ok(r),
        _ => Err(CliError::new(format!(
            "repository {} is not encrypted, so it has no keys; encryption is chosen at `snarf repo init --encryption`",
            arg.display()
        ))),
    }
}

/// `snarf repo key ...`.
pub fn key(args: KeyArgs) -> CliResult {
    match args.command {
        KeyCommand::List(a) => {
            let repo = open_encrypted(&a.repo)?;
            let slots = repo.key_slots()?;
            if a.json {
                let text = serde_json::to_string_pretty(&slots)
                    .map_err(|e| CliError::new(format!("cannot encode the key slots: {e}")))?;
                println!("{text}");
                return Ok(());
            }
            println!("{:<32}  {:<20}  {:<16}  LABEL", "ID", "CREATED", "HOST");
            for s in slots {
                println!(
                    "{:<32}  {:<20}  {:<16}  {}",
                    s.id,
                    crate::control::table::time(Some(s.created).filter(|&c| c > 0)),
                    s.host,
                    s.label
                );
            }
            Ok(())
        }
        KeyCommand::Add(a) => {
            let repo = open_encrypted(&a.repo)?;
            let pass = passphrase::to_add(&repo.location(), a.new_password_file.as_deref())?;
            let id = repo.add_key(&a.slot.new_key(pass)?)?;
            println!("added key slot {id} to {}", a.repo.display());
            Ok(())
        }
        KeyCommand::Remove(a) => {
            let repo = open_encrypted(&a.repo)?;
            repo.remove_key(&a.id, Some(std::time::Duration::from_secs(60)))?;
            println!("removed key slot {} from {}", a.id, a.repo.display());
            Ok(())
        }
    }
}

/// The first key slot of `repo init --encryption REPO`: its passphrase asked for here.
pub fn first_key(repo: &std::path::Path, slot: &SlotOptions) -> Result<NewKey, CliError> {
    let pass = passphrase::for_new(&repo.display().to_string())?;
    slot.new_key(pass)
}
