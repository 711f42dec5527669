//! Command-line interface: one file per subcommand under `cli/`.

mod bench;

use clap::{Parser, Subcommand};

/// actorbus: an actor-model runtime for domain events.
#[derive(Debug, Parser)]
#[command(name = "actorbus", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and latency of the pipeline against a baseline run in the same process.
    Bench(bench::BenchArgs),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
    }
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
