//! `actorbus dlq list|show|redrive|purge`: the events handlers gave up on, read and repaired
//! with no bus running; a redrive is carried out by the next bus that starts on the store.

use std::io::{self, Write};
use std::path::PathBuf;

use actorbus::{DeadLetterInfo, Store};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::events::{event_json, open_existing, truncate, utc, write_table};

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, oldest first.
    List(ListArgs),
    /// Everything about one dead letter: its event with the full payload, and the full error.
    Show(ShowArgs),
    /// Ask the next bus that starts on the store to hand the dead letters back to their handler.
    Redrive(RedriveArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The store to read: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Only the dead letters of this handler (subscription name).
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// Print one JSON array of dead letters (with their events) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The store to read: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// The dead letter's id, as `dlq list` shows it.
    #[arg(value_name = "ID")]
    id: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RedriveArgs {
    /// The store to mark the dead letters in: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Only the dead letters of this handler (default: every handler's).
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// The store to delete the dead letters from: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Only the dead letters of this handler (default: every handler's).
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// Really delete them; without it nothing is deleted.
    #[arg(long)]
    yes: bool,
}

pub(crate) fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List(args) => list(&args),
        DlqCommand::Show(args) => show(&args),
        DlqCommand::Redrive(args) => redrive(&args),
        DlqCommand::Purge(args) => purge(&args),
    }
}

/// Fails unless the store knows `handler` (from its checkpoints or dead letters), naming the
/// handlers it does know.
pub(super) fn known_handler(store: &Store, handler: &str) -> anyhow::Result<()> {
    match store.require_handler(handler) {
        Err(actorbus::Error::UnknownHandler(_)) => {
            let known = store.handlers()?;
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            anyhow::bail!(
                "no handler named `{handler}` in {} (it knows: {known})",
                store.path().display()
            )
        }
        other => Ok(other?),
    }
}

/// Opens the store and checks the handler, when one is given.
fn open(db: &std::path::Path, handler: Option<&str>) -> anyhow::Result<Store> {
    let store = open_existing(db)?;
    if let Some(h) = handler {
        known_handler(&store, h)?;
    }
    Ok(store)
}

fn letter_json(l: &DeadLetterInfo) -> Value {
    json!({
        "id": l.id,
        "handler": l.handler,
        "attempts": l.attempts,
        "last_error": l.last_error,
        "failed_at": utc(l.failed_at, true),
        "redrive_requested": l.redrive_requested,
        "event": event_json(&l.event),
    })
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let store = open(&args.db, args.handler.as_deref())?;
    let letters = store.dead_letters(args.handler.as_deref())?;
    let mut out = io::stdout().lock();
    if args.json {
        let all: Vec<Value> = letters.iter().map(letter_json).collect();
        writeln!(out, "{}", Value::Array(all))?;
        return Ok(());
    }
    if letters.is_empty() {
        writeln!(out, "no dead letters")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.handler.clone(),
                l.attempts.to_string(),
                utc(l.failed_at, false),
                l.event.position.to_string(),
                l.event.stream_id.clone(),
                l.event.event_type.clone(),
                if l.redrive_requested { "yes" } else { "no" }.to_owned(),
                truncate(&l.last_error, 60),
            ]
        })
        .collect();
    write_table(
        &mut out,
        &[
            "ID", "HANDLER", "ATTEMPTS", "FAILED", "POSITION", "STREAM", "TYPE", "REDRIVE", "ERROR",
        ],
        &rows,
        &[0, 2, 4],
    )?;
    Ok(())
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.db)?;
    let letter = store.dead_letter(args.id)?.with_context(|| {
        format!(
            "no dead letter with id {} in {} (`actorbus dlq list` shows them)",
            args.id,
            crate::cli::shown(&args.db)
        )
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", letter_json(&letter))?;
        return Ok(());
    }
    let e = &letter.event;
    let payload = serde_json::from_str::<Value>(&e.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| e.payload.clone());
    let fields = [
        ("id", letter.id.to_string()),
        ("handler", letter.handler.clone()),
        ("attempts", letter.attempts.to_string()),
        ("failed at", utc(letter.failed_at, true)),
        (
            "redrive",
            if letter.redrive_requested {
                "requested: the next bus to start hands it back"
            } else {
                "not requested"
            }
            .to_owned(),
        ),
        ("position", e.position.to_string()),
        ("event id", e.id.to_string()),
        (
            "stream",
            format!("{} (version {})", e.stream_id, e.stream_version),
        ),
        (
            "type",
            format!("{} (schema version {})", e.event_type, e.schema_version),
        ),
        ("recorded at", utc(e.recorded_at, true)),
        (
            "metadata",
            e.metadata.clone().unwrap_or_else(|| "none".into()),
        ),
    ];
    for (name, value) in fields {
        writeln!(out, "{name:<12} {value}")?;
    }
    writeln!(out, "error:")?;
    for line in letter.last_error.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "payload:")?;
    for line in payload.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn redrive(args: &RedriveArgs) -> anyhow::Result<()> {
    let store = open(&args.db, args.handler.as_deref())?;
    let handlers = match &args.handler {
        Some(h) => vec![h.clone()],
        None => with_letters(&store)?,
    };
    if handlers.is_empty() {
        say!("no dead letters to redrive");
    }
    for h in handlers {
        let n = store.request_redrive(Some(&h))?;
        say!("{n} dead letter(s) of {h} will be redriven when the bus next starts");
    }
    Ok(())
}

fn purge(args: &PurgeArgs) -> anyhow::Result<()> {
    let store = open(&args.db, args.handler.as_deref())?;
    let whose = args.handler.as_deref().unwrap_or("every handler");
    if !args.yes {
        let n = store.dead_letters(args.handler.as_deref())?.len();
        anyhow::bail!("not deleting {n} dead letter(s) of {whose}: add --yes to delete them");
    }
    let n = store.purge_dead_letters(args.handler.as_deref())?;
    say!("deleted {n} dead letter(s) of {whose}");
    Ok(())
}

/// Handlers with at least one dead letter, sorted.
fn with_letters(store: &Store) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = store
        .dead_letters(None)?
        .into_iter()
        .map(|l| l.handler)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}
