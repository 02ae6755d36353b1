//! The `snarf` binary: logging set up, then the command line in `snarf::cli`.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    std::process::exit(snarf::cli::main());
}
