//! The `snarf` binary: the command line lives in `snarf::cli`, which also sets up logging
//! (commands log to stderr, the mount daemon to a file in its store).

fn main() {
    std::process::exit(snarf::cli::main());
}
