//! `actorbus events list|tail`: read the log of a store, oldest first, or follow it.
//!
//! Also home to what every operator command prints with (aligned tables, UTC times, events
//! as JSON, one-line errors), since events are what they all display.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actorbus::{EventFilter, Store, StoredEventInfo};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// List events, oldest first.
    List(ListArgs),
    /// Print the newest events; with --follow, keep printing new ones until interrupted.
    Tail(TailArgs),
}

/// The store and which of its events: shared by `list` and `tail`.
#[derive(Debug, Args)]
pub(crate) struct Selection {
    /// The store to read: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Only the events of this stream (aggregate) id.
    #[arg(long, value_name = "ID")]
    stream: Option<String>,
    /// Only events of this type, e.g. `order.placed`.
    #[arg(long = "type", value_name = "T")]
    event_type: Option<String>,
}

impl Selection {
    fn filter(&self) -> EventFilter {
        let mut filter = EventFilter::all();
        if let Some(s) = &self.stream {
            filter = filter.stream(s.clone());
        }
        if let Some(t) = &self.event_type {
            filter = filter.event_type(t.clone());
        }
        filter
    }
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    select: Selection,
    /// Only events after this global position (to page: the last position shown).
    #[arg(long, value_name = "POS", value_parser = crate::cli::position())]
    after: Option<u64>,
    /// At most this many events (at least 1).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = crate::cli::whole_number::<u64>(1, u64::MAX))]
    limit: u64,
    /// Print one JSON array of events (full payloads and metadata) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    select: Selection,
    /// How many of the newest events to print first.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: u64,
    /// Keep printing events as they are stored (polls every 200 ms) until interrupted.
    #[arg(long, short)]
    follow: bool,
}

pub(crate) fn run(cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::List(args) => list(&args),
        EventsCommand::Tail(args) => tail(&args),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.select.db)?;
    let mut filter = args.select.filter();
    if let Some(after) = args.after {
        filter = filter.after(after);
    }
    // One more than asked for tells whether there is a next page.
    let mut events = store.events(&filter.limit(args.limit.saturating_add(1)))?;
    let more = events.len() as u64 > args.limit;
    events.truncate(args.limit as usize);
    let mut out = io::stdout().lock();
    if args.json {
        let all: Vec<Value> = events.iter().map(event_json).collect();
        writeln!(out, "{}", Value::Array(all))?;
    } else if events.is_empty() {
        writeln!(out, "no events")?;
    } else {
        let table = EventTable::fitting(&events);
        table.header(&mut out)?;
        for e in &events {
            table.row(&mut out, e)?;
        }
    }
    // On stderr, so that stdout stays one JSON document with --json.
    if let (true, Some(last)) = (more, events.last()) {
        eprintln!(
            "more events follow: add --after {} for the next page",
            last.position
        );
    }
    Ok(())
}

/// How often `tail --follow` looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Most events one poll of `tail --follow` reads before printing them.
const FOLLOW_BATCH: u64 = 1000;

fn tail(args: &TailArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.select.db)?;
    let filter = args.select.filter();
    // Read before the events: every event at or below it is in the snapshot read next.
    let mut seen = store.head()?;
    let events = store.events(&filter.clone().newest().limit(args.limit))?;
    let table = EventTable::fitting(&events);
    let mut out = io::stdout().lock();
    if !events.is_empty() || args.follow {
        table.header(&mut out)?;
    }
    for e in &events {
        table.row(&mut out, e)?;
        seen = seen.max(e.position);
    }
    out.flush()?;
    if !args.follow {
        if events.is_empty() {
            writeln!(out, "no events")?;
        }
        return Ok(());
    }
    loop {
        let head = store.head()?;
        let batch = store.events(&filter.clone().after(seen).limit(FOLLOW_BATCH))?;
        for e in &batch {
            table.row(&mut out, e)?;
        }
        out.flush()?;
        let full = batch.len() as u64 == FOLLOW_BATCH;
        let last = batch.last().map_or(seen, |e| e.position);
        // A full batch may have stopped below `head`; otherwise nothing up to `head` is left.
        seen = if full { last } else { last.max(head) };
        if !full {
            std::thread::sleep(POLL);
        }
    }
}

/// Opens an existing store, refusing an empty file as well as a missing one: the library
/// would take an empty file for a new database and write a schema into it.
pub(super) fn open_existing(path: &Path) -> anyhow::Result<Store> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        anyhow::bail!(
            "cannot open the store {}: the file is empty (`actorbus migrate` creates a store)",
            path.display()
        );
    }
    super::open_store(path)
}

/// The columns of an event table, sized to the first rows; rows printed later (`--follow`)
/// keep these widths, so a wider cell only pushes its own line.
struct EventTable {
    widths: [usize; 5],
}

const EVENT_HEADERS: [&str; 6] = [
    "POSITION", "STREAM", "VERSION", "TYPE", "RECORDED", "PAYLOAD",
];
/// Payload characters shown in a table; `--json` has them all.
const PAYLOAD_CHARS: usize = 60;

impl EventTable {
    fn fitting(events: &[StoredEventInfo]) -> Self {
        let mut widths = [8, 12, 7, 16, 20];
        for (w, h) in widths.iter_mut().zip(EVENT_HEADERS) {
            *w = (*w).max(h.len());
        }
        for e in events {
            for (w, cell) in widths.iter_mut().zip(Self::cells(e)) {
                *w = (*w).max(cell.chars().count());
            }
        }
        Self { widths }
    }

    fn cells(e: &StoredEventInfo) -> [String; 6] {
        [
            e.position.to_string(),
            e.stream_id.clone(),
            e.stream_version.to_string(),
            e.event_type.clone(),
            utc(e.recorded_at, false),
            truncate(&e.payload, PAYLOAD_CHARS),
        ]
    }

    fn header(&self, out: &mut impl Write) -> io::Result<()> {
        write_row(out, &self.widths, &EVENT_HEADERS.map(String::from), &[0, 2])
    }

    fn row(&self, out: &mut impl Write, e: &StoredEventInfo) -> io::Result<()> {
        write_row(out, &self.widths, &Self::cells(e), &[0, 2])
    }
}

/// Writes a table: a header, then rows, in columns as wide as their widest cell; the columns
/// in `right` (numbers) are right-aligned.
pub(super) fn write_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
    right: &[usize],
) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    write_row(out, &widths, &headers, right)?;
    for row in rows {
        write_row(out, &widths, row, right)?;
    }
    Ok(())
}

/// One line of a table; the last cell is not padded, so lines have no trailing blanks.
fn write_row(
    out: &mut impl Write,
    widths: &[usize],
    cells: &[String],
    right: &[usize],
) -> io::Result<()> {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = one_line_text(cell);
        if i > 0 {
            line.push_str("  ");
        }
        let pad = widths
            .get(i)
            .map_or(0, |w| w.saturating_sub(cell.chars().count()));
        if right.contains(&i) {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(&cell);
        } else {
            line.push_str(&cell);
            if i + 1 < cells.len() {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
    }
    writeln!(out, "{line}")
}

/// Control characters (newlines in an error message, say) as spaces, so a cell stays on its line.
fn one_line_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` characters of `s` on one line, the cut marked with `...`.
pub(super) fn truncate(s: &str, max: usize) -> String {
    let s = one_line_text(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut cut: String = s.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

/// `t` in UTC as RFC 3339: `2026-11-25T09:30:00Z`, or with microseconds.
pub(super) fn utc(t: SystemTime, micros: bool) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let (hh, mm, ss) = (s / 3600, s % 3600 / 60, s % 60);
    if micros {
        format!(
            "{year:04}-{month:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
            since.subsec_micros()
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Stored JSON text as JSON, or as a string when it is not valid JSON.
fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// An event as a script reads it: every stored field, payload and metadata as JSON.
pub(super) fn event_json(e: &StoredEventInfo) -> Value {
    json!({
        "position": e.position,
        "id": e.id.to_string(),
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": utc(e.recorded_at, true),
        "payload": json_text(&e.payload),
        "metadata": e.metadata.as_deref().map(json_text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(at(0, 0), false), "1970-01-01T00:00:00Z");
        assert_eq!(utc(at(951_782_400, 0), false), "2000-02-29T00:00:00Z");
        assert_eq!(
            utc(at(1_700_000_000, 42), true),
            "2023-11-14T22:13:20.000042Z"
        );
        assert_eq!(utc(at(4_107_542_399, 0), false), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn truncate_keeps_short_text_and_marks_the_cut() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdefgh", 5), "ab...");
        assert_eq!(truncate("é\nü", 5), "é ü");
    }

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["7".into(), "a".into(), "x".into()],
            vec!["123".into(), "bbbb".into(), "y".into()],
        ];
        write_table(&mut out, &["N", "NAME", "LAST"], &rows, &[0]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  N  NAME  LAST\n  7  a     x\n123  bbbb  y\n"
        );
    }
}
