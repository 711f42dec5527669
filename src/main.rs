//! The `actorbus` command: run the demo, benchmark the runtime, operate a store.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // RUST_LOG decides; by default warnings, but the demo's expected failures (dead letters,
    // restarts) are its summary's job, not the log's.
    let default = if args.is_demo() { "error" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the causes' messages contain.
            let text = format!("{e:#}");
            let text: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("actorbus: {}", text.join(" "));
            ExitCode::FAILURE
        }
    }
}
