//! `snarf serve`: the far side of a repository over ssh (run by the client through ssh, or
//! forced in `authorized_keys`); speaks the backend protocol on stdin/stdout.

use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult};
use crate::repo::backend::{serve, wire};

/// Arguments of `snarf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repository the client must open (the client passes it; under a forced command in
    /// authorized_keys leave it out and bound the client with --restrict-to).
    #[arg(long, value_name = "PATH")]
    pub repo: Option<String>,
    /// Refuse repositories outside this folder (after resolving symlinks and `..`);
    /// repeatable. For `command="snarf serve --restrict-to /srv/repos"` in authorized_keys.
    #[arg(long, value_name = "DIR")]
    pub restrict_to: Vec<PathBuf>,
}

/// `snarf serve`: serves one connection on stdin/stdout until the client closes it.
pub fn serve(args: ServeArgs) -> CliResult {
    // Raw descriptors with large buffers: stdout's own buffer flushes at every newline
    // byte, which binary frames are full of.
    let fd = |f: std::io::Result<std::os::fd::OwnedFd>| {
        f.map(std::fs::File::from)
            .map_err(|e| CliError::new(format!("snarf serve: its standard input or output: {e}")))
    };
    let input = fd(std::io::stdin().as_fd().try_clone_to_owned())?;
    let output = fd(std::io::stdout().as_fd().try_clone_to_owned())?;
    wire::widen_pipe(&input);
    wire::widen_pipe(&output);
    let mut input = BufReader::with_capacity(wire::MAX_FRAME, input);
    let mut output = BufWriter::with_capacity(wire::MAX_FRAME, output);
    let opts = serve::ServeOptions {
        repo: args.repo,
        restrict_to: args.restrict_to,
    };
    serve::serve(&mut input, &mut output, &opts)
        .map_err(|e| CliError::new(crate::chain::Chain::new(&e)))
}
