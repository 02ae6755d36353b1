//! Logging set-up: commands log to stderr; the mount daemon logs to `STORE/snarf.log` (and
//! to stderr as well when run with --foreground from a terminal). `RUST_LOG` picks the level.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn builder(default: &str) -> env_logger::Builder {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
}

/// Logs to stderr, warnings and worse unless `RUST_LOG` says otherwise.
pub fn to_stderr() {
    let _ = builder("warn").try_init();
}

/// Writes every log line to the file and, if asked, to stderr too.
struct Tee {
    file: File,
    echo: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.echo {
            let _ = std::io::stderr().write_all(buf);
        }
        self.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Logs to `path` (appending; created 0600), info and worse unless `RUST_LOG` says
/// otherwise; `echo` copies each line to stderr.
pub fn to_file(path: &Path, echo: bool) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let _ = builder("info")
        .target(env_logger::Target::Pipe(Box::new(Tee { file, echo })))
        .try_init();
    Ok(())
}
