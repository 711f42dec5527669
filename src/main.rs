//! The `actorbus` command: run the demo, benchmark the runtime, operate a store.

mod cli;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    // RUST_LOG decides; by default warnings, but the demo's expected failures (dead letters,
    // restarts) are its summary's job, not the log's.
    let default = if args.is_demo() { "error" } else { "warn" };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    // Unless RUST_LOG asks for the log as it happens, the demo holds its records back: the
    // error that makes it fail is logged where it happens and returned, and its one line
    // says it; after a success, the records follow the summary.
    let held = HeldLog::default();
    if args.is_demo() && std::env::var_os("RUST_LOG").is_none() {
        logger.target(env_logger::Target::Pipe(Box::new(held.clone())));
    }
    logger.init();
    match cli::run(args) {
        Ok(code) => {
            held.print();
            code
        }
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

/// Log output kept in memory (its first [`HeldLog::MAX_BYTES`]) until the command ends.
#[derive(Clone, Default)]
struct HeldLog(Arc<Mutex<Vec<u8>>>);

impl HeldLog {
    const MAX_BYTES: usize = 64 * 1024;

    /// Writes what was held to stderr.
    fn print(&self) {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::io::stderr().write_all(&held);
    }
}

impl std::io::Write for HeldLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = Self::MAX_BYTES.saturating_sub(held.len());
        held.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
