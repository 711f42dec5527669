//! `actorbus stats`: the size of a store and how far behind each handler is.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::events::{open_existing, write_table};

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The store to read: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: StatsArgs) -> anyhow::Result<()> {
    stats(&args)
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.db)?;
    let s = store.summary()?;
    let running = store.running()?;
    let mut out = io::stdout().lock();
    if args.json {
        let handlers: Vec<_> = s
            .handlers
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "checkpoint": h.checkpoint,
                    "lag": h.lag,
                    "dead_letters": h.dead_letters,
                })
            })
            .collect();
        let doc = json!({
            "path": crate::cli::shown(&args.db),
            "schema_version": s.schema_version,
            "events": s.events,
            "streams": s.streams,
            "head": s.head,
            "handlers": handlers,
            "running": running,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    let facts = [
        ("store", crate::cli::shown(&args.db)),
        ("schema", format!("version {}", s.schema_version)),
        ("events", s.events.to_string()),
        ("streams", s.streams.to_string()),
        ("head", format!("position {}", s.head)),
    ];
    for (name, value) in facts {
        writeln!(out, "{name:<8} {value}")?;
    }
    // Who runs a bus on it now, and on a shared store each one's share.
    let running: Vec<String> = running
        .iter()
        .map(|r| match r.partitions {
            Some(n) => format!("{} ({n} partitions)", r.label),
            None => r.label.clone(),
        })
        .collect();
    if !running.is_empty() {
        writeln!(out, "{:<8} {}", "running", running.join(", "))?;
    }
    writeln!(out)?;
    if s.handlers.is_empty() {
        writeln!(out, "no handlers have run on this store")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = s
        .handlers
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.checkpoint
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                h.lag.to_string(),
                h.dead_letters.to_string(),
            ]
        })
        .collect();
    write_table(
        &mut out,
        &["HANDLER", "CHECKPOINT", "LAG", "DEAD LETTERS"],
        &rows,
        &[1, 2, 3],
    )?;
    Ok(())
}
