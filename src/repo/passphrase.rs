//! Where an encrypted repository's passphrase comes from, in this order: the file given by
//! `--password-file FILE` (set once per process by the command line or the mount), the file
//! named by `SNARF_PASSWORD_FILE` (how a mount hands a file to its daemon and jobs),
//! `SNARF_PASSWORD`, or a prompt on the controlling terminal without echo when standard
//! input is one. There is no default: with none of these an encrypted repository is refused
//! with a message that says how to give one. A passphrase is wiped from memory when dropped.
//!
//! A passphrase file holds the passphrase; one trailing newline (`\n` or `\r\n`) is not part
//! of it, so `echo secret > file` works.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::error::{Error, IoContext, Result};

/// The environment variable holding a passphrase.
pub const ENV: &str = "SNARF_PASSWORD";
/// The environment variable naming a passphrase file.
pub const ENV_FILE: &str = "SNARF_PASSWORD_FILE";
/// The environment variable holding the passphrase of a key slot being added.
pub const ENV_NEW: &str = "SNARF_NEW_PASSWORD";
/// The environment variable holding the passphrase of `snarf copy`'s source repository.
pub const ENV_FROM: &str = "SNARF_FROM_PASSWORD";
/// The environment variable naming a file with the passphrase of `snarf copy`'s source.
pub const ENV_FROM_FILE: &str = "SNARF_FROM_PASSWORD_FILE";
/// Largest passphrase file read.
const MAX_FILE: u64 = 64 << 10;

static FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A passphrase, wiped from memory when dropped.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// The passphrase of these bytes.
    pub fn new(bytes: &[u8]) -> Passphrase {
        Passphrase(Zeroizing::new(bytes.to_vec()))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Makes `path` this process's passphrase file (`--password-file`), made absolute so a
/// daemon that changes its directory still finds it.
pub fn set_password_file(path: &Path) {
    *FILE.lock() = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
}

/// This process's passphrase file: `--password-file`, else `SNARF_PASSWORD_FILE`.
pub fn password_file() -> Option<PathBuf> {
    FILE.lock()
        .clone()
        .or_else(|| std::env::var_os(ENV_FILE).map(PathBuf::from))
}

/// Reads the passphrase in file `path`.
pub fn from_file(path: &Path) -> Result<Passphrase> {
    use std::io::Read;
    let mut data = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut data))
        .ctx(|| format!("reading the passphrase file {}", path.display()))?;
    if data.len() as u64 > MAX_FILE {
        return Err(Error::BadArgument(format!(
            "passphrase file {} is larger than {} KiB; it must hold only the passphrase",
            path.display(),
            MAX_FILE >> 10
        )));
    }
    let mut end = data.len();
    if data[..end].ends_with(b"\n") {
        end -= 1;
        if data[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    if end == 0 {
        return Err(Error::BadArgument(format!(
            "passphrase file {} is empty; put the passphrase in it",
            path.display()
        )));
    }
    Ok(Passphrase::new(&data[..end]))
}

/// The passphrase of the existing encrypted repository `repo`.
pub fn existing(repo: &str) -> Result<Passphrase> {
    if let Some(p) = configured(ENV)? {
        return Ok(p);
    }
    prompt(&format!("passphrase for {repo}: "), false)?.ok_or_else(|| Error::PassphraseNeeded {
        repo: repo.to_string(),
    })
}

/// The passphrase of `snarf copy`'s encrypted source repository `repo`: `file`
/// (`--from-password-file`), else the file named by `SNARF_FROM_PASSWORD_FILE`, else
/// `SNARF_FROM_PASSWORD`, else a prompt. Never the destination's sources: two repositories
/// with one passphrase are given it twice, so a copy never unlocks a repository by accident.
pub fn for_copy_source(repo: &str, file: Option<&Path>) -> Result<Passphrase> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Some(f) = std::env::var_os(ENV_FROM_FILE) {
        return from_file(Path::new(&f));
    }
    if let Some(p) = std::env::var_os(ENV_FROM) {
        return nonempty(p.as_encoded_bytes(), ENV_FROM);
    }
    prompt(&format!("passphrase for {repo} (the source): "), false)?.ok_or_else(|| {
        Error::SourcePassphraseNeeded {
            repo: repo.to_string(),
        }
    })
}

/// The passphrase of a new encrypted repository `repo` (asked twice at a prompt).
pub fn for_new(repo: &str) -> Result<Passphrase> {
    if let Some(p) = configured(ENV)? {
        return Ok(p);
    }
    prompt(&format!("new passphrase for {repo}: "), true)?.ok_or_else(|| Error::PassphraseNeeded {
        repo: repo.to_string(),
    })
}

/// The passphrase of a key slot to add to `repo`: `file` (`--new-password-file`), else
/// `SNARF_NEW_PASSWORD`, else a prompt (asked twice).
pub fn to_add(repo: &str, file: Option<&Path>) -> Result<Passphrase> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Some(p) = std::env::var_os(ENV_NEW) {
        return nonempty(p.as_encoded_bytes(), ENV_NEW);
    }
    prompt(&format!("passphrase to add to {repo}: "), true)?.ok_or_else(|| {
        Error::BadArgument(format!(
            "{repo}: no passphrase to add: give it with --new-password-file FILE or in {ENV_NEW}, or run on a terminal to be asked"
        ))
    })
}

/// The passphrase from the password file or the environment variable `var`, if either is
/// set.
fn configured(var: &str) -> Result<Option<Passphrase>> {
    if let Some(f) = password_file() {
        return from_file(&f).map(Some);
    }
    match std::env::var_os(var) {
        Some(p) => nonempty(p.as_encoded_bytes(), var).map(Some),
        None => Ok(None),
    }
}

fn nonempty(bytes: &[u8], var: &str) -> Result<Passphrase> {
    if bytes.is_empty() {
        return Err(Error::BadArgument(format!(
            "{var} is set but empty; set it to the passphrase or unset it"
        )));
    }
    Ok(Passphrase::new(bytes))
}

/// Asks on the controlling terminal with echo off (twice when `confirm`); `None` when
/// standard input is not a terminal (a job, a service, a test), so nothing ever hangs
/// waiting for a person who is not there.
fn prompt(text: &str, confirm: bool) -> Result<Option<Passphrase>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return Ok(None);
    };
    let first = ask(&tty, text)?;
    if confirm {
        let again = ask(&tty, "again: ")?;
        if first.as_bytes() != again.as_bytes() {
            return Err(Error::BadArgument(
                "the two passphrases differ; nothing was changed".into(),
            ));
        }
    }
    if first.as_bytes().is_empty() {
        return Err(Error::BadArgument(
            "an empty passphrase protects nothing; choose one".into(),
        ));
    }
    Ok(Some(first))
}

/// One line read from `tty` after `text`, with echo off while it is typed.
fn ask(tty: &std::fs::File, text: &str) -> Result<Passphrase> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let ctx = || "reading a passphrase from the terminal".to_string();
    let saved = tcgetattr(tty).map_err(std::io::Error::from).ctx(ctx)?;
    let mut quiet = saved.clone();
    quiet.local_modes -= LocalModes::ECHO;
    quiet.local_modes |= LocalModes::ECHONL;
    (&*tty).write_all(text.as_bytes()).ctx(ctx)?;
    tcsetattr(tty, OptionalActions::Flush, &quiet)
        .map_err(std::io::Error::from)
        .ctx(ctx)?;
    let mut line = Zeroizing::new(Vec::new());
    let read = std::io::BufReader::new(tty).read_until(b'\n', &mut line);
    // Echo comes back whatever the read did.
    let restored = tcsetattr(tty, OptionalActions::Now, &saved);
    read.ctx(ctx)?;
    restored.map_err(std::io::Error::from).ctx(ctx)?;
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    Ok(Passphrase::new(&line[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_files_lose_one_trailing_newline_and_empty_or_huge_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        for (text, want) in [
            (&b"secret\n"[..], &b"secret"[..]),
            (b"secret\r\n", b"secret"),
            (b"secret", b"secret"),
            (b"two words \n\n", b"two words \n"),
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(from_file(&f).unwrap().as_bytes(), want);
        }
        std::fs::write(&f, b"\n").unwrap();
        let e = from_file(&f).err().unwrap().to_string();
        assert!(e.contains("is empty") && e.contains("pw"), "{e}");
        std::fs::write(&f, vec![b'x'; 70 << 10]).unwrap();
        assert!(from_file(&f).is_err());
        let e = from_file(&dir.path().join("missing")).err().unwrap();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
