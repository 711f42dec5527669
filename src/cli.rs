//! Command-line interface: one file per subcommand under `cli/`.

/// `println!` that returns the write error (a closed pipe) instead of panicking.
macro_rules! say {
    () => {
        std::io::Write::write_all(&mut std::io::stdout(), b"\n")?
    };
    ($($arg:tt)+) => {
        std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", format_args!($($arg)+)))?
    };
}

mod bench;
mod check;
mod demo;
mod dlq;
mod events;
mod migrate;
mod replay;
pub(crate) mod serve;
mod stats;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// actorbus: an actor-model runtime for domain events. Run `actorbus demo` to see it work.
#[derive(Debug, Parser)]
#[command(name = "actorbus", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a sample order domain through a SQLite-backed bus, with live progress and a summary.
    Demo(demo::DemoArgs),
    /// Verify a store: stream versions, event ids, checkpoints, the demo's read model.
    Check(check::CheckArgs),
    /// List or follow the events of a store.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Inspect, redrive or purge the dead letters of a store.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Reset a handler's checkpoint so that it processes the log again at its next start.
    Replay(replay::ReplayArgs),
    /// Events, streams, and every handler's checkpoint, lag and dead letters.
    Stats(stats::StatsArgs),
    /// Create a store, or bring its schema up to date.
    Migrate(migrate::MigrateArgs),
    /// Measure throughput and latency against a baseline run in the same process.
    Bench(bench::BenchArgs),
    /// A live web view of a store: handlers, lag, dead letters (redrive, purge), `/metrics`.
    Serve(serve::ServeArgs),
}

impl Cli {
    /// Whether the command is `demo`.
    pub(crate) fn is_demo(&self) -> bool {
        matches!(self.command, Command::Demo(_))
    }
}

/// Runs the command; the exit code of a command that did not fail is 0, except for a demo
/// stopped by a signal (130 for SIGINT, 143 for SIGTERM).
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => done(check::run(args)),
        Command::Events(cmd) => done(events::run(cmd)),
        Command::Dlq(cmd) => done(dlq::run(cmd)),
        Command::Replay(args) => done(replay::run(args)),
        Command::Stats(args) => done(stats::run(args)),
        Command::Migrate(args) => done(migrate::run(args)),
        Command::Bench(args) => done(bench::run(args)),
        Command::Serve(args) => done(serve::run(args)),
    };
    quiet_broken_pipe(result)
}

/// A reader that closed the pipe (`| head`) has all it wanted: not an error.
fn quiet_broken_pipe(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

/// A clap value parser for a global position of the log: SQLite stores it as a signed 64-bit
/// integer, so a larger number is a usage error rather than a negative position.
pub(crate) fn position() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(..=i64::MAX as u64)
}

/// A clap value parser for a whole number from `min` to `max` (`u64::MAX`: no upper bound).
pub(crate) fn whole_number<T: TryFrom<u64>>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| {
        text.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| match max {
                u64::MAX => format!("not a whole number of at least {min}"),
                _ => format!("not a whole number from {min} to {max}"),
            })
    }
}

/// A clap value parser for a finite number from `min` to `max`: NaN, the infinities and
/// numbers out of range are usage errors.
pub(crate) fn number_from(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.parse::<f64>() {
        Ok(n) if n.is_finite() && (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("not a number from {min} to {max}")),
    }
}

/// Opens an existing store for an operator command: a SQLite file's path (a missing or
/// foreign file is an error and is left untouched) or a `postgres://` URL.
pub(crate) fn open_store(path: &Path) -> anyhow::Result<actorbus::Store> {
    let opened = match path.to_str() {
        Some(url) => actorbus::Store::open_url(url),
        None => actorbus::Store::open(path),
    };
    opened.with_context(|| format!("cannot open the store {}", shown(path)))
}

/// A store as messages name it: a file's path, or a URL without its password.
pub(crate) fn shown(path: &Path) -> String {
    match path.to_str() {
        Some(url) if url.contains("://") => actorbus::PostgresOptions::new(url).redacted_url(),
        _ => path.display().to_string(),
    }
}

/// The CPU time the threads of this process named `name` have run (Linux: their
/// `schedstat`); `None` elsewhere, or when there is no such thread.
pub(crate) fn thread_cpu(name: &str) -> Option<Duration> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let ran = schedstat(&task.path().join("schedstat"))?;
            total = Some(total.unwrap_or(Duration::ZERO) + ran);
        }
    }
    total
}

/// The CPU time the calling thread has run so far (Linux), if known.
pub(crate) fn own_cpu() -> Option<Duration> {
    schedstat(Path::new("/proc/thread-self/schedstat"))
}

/// The first field of a `schedstat` file: nanoseconds spent on a CPU.
fn schedstat(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(Duration::from_nanos(
        text.split_whitespace().next()?.parse().ok()?,
    ))
}

/// Peak and current resident set size in MiB, from /proc (Linux); `None` elsewhere.
pub(crate) fn rss_mb() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
