//! The `actorbus` command: run the demo, benchmark the runtime, operate a store.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
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

/// Prints what clap has to say about the arguments and returns its exit code: help and version
/// as clap prints them, a usage error as one line on stderr.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        e.exit();
    }
    eprintln!("{}", one_line_usage_error(&e.render().to_string()));
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Clap's rendering of a usage error (the message, maybe a tip, the usage, a pointer to
/// `--help`) as one line: `error: MESSAGE; TIP (try 'actorbus COMMAND --help')`.
fn one_line_usage_error(rendered: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut command = None;
    for paragraph in rendered.split("\n\n") {
        let lines: Vec<&str> = paragraph
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let Some(first) = lines.first() else { continue };
        if let Some(usage) = first.strip_prefix("Usage:") {
            // `Usage: actorbus events list --db <PATH>`: the words before the arguments.
            let words: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['-', '[', '<']))
                .collect();
            command = Some(words.join(" "));
        } else if !first.starts_with("For more information") {
            paragraphs.push(lines.join(" "));
        }
    }
    let help = match command {
        Some(c) if !c.is_empty() => format!("{c} --help"),
        _ => "--help".to_owned(),
    };
    format!("{} (try '{help}')", paragraphs.join("; "))
}
