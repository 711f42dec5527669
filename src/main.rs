//! The `actorbus` command: run the demo, benchmark the runtime, operate a store.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("actorbus: {e:#}");
            ExitCode::FAILURE
        }
    }
}
