//! The operator commands (`events`, `dlq`, `replay`, `stats`, `migrate`), run as the real
//! binary against stores a bus wrote: output, JSON, exit codes, and bad input left untouched.

mod common;

use common::stored_events;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use actorbus::{
    handler_fn, Backoff, DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Generous bound for a drain or a wait: only reached when the test is already failing.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    seq: u64,
}

impl DomainEvent for OrderPlaced {
    const EVENT_TYPE: &'static str = "order.placed";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order)
    }
}

/// An event with a payload longer than a table shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NoteAdded {
    order: u64,
    text: String,
}

impl DomainEvent for NoteAdded {
    const EVENT_TYPE: &'static str = "note.added";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order)
    }
}

fn long_note() -> String {
    "the customer asked for the parcel to be left with the neighbour at number 12; ".repeat(3)
}

/// Seqs of `OrderPlaced` each subscription handled, in order.
#[derive(Clone, Default)]
struct Seen {
    recorder: Arc<Mutex<Vec<u64>>>,
    picky: Arc<Mutex<Vec<u64>>>,
}

impl Seen {
    fn recorder(&self) -> Vec<u64> {
        self.recorder.lock().unwrap().clone()
    }
    fn picky(&self) -> Vec<u64> {
        self.picky.lock().unwrap().clone()
    }
}

/// Seqs that "picky" fails on while it is broken: they become its dead letters.
fn picky_fails_on(seq: u64) -> bool {
    seq % 4 == 3
}

/// A bus on `path` with two subscriptions to `OrderPlaced`: "recorder" handles everything,
/// "picky" (one attempt, so a failure is a dead letter at once) fails some events while
/// `broken` is set.
fn bus_on(path: &Path, broken: bool, seen: &Seen) -> EventBus {
    let recorder = Arc::clone(&seen.recorder);
    let picky = Arc::clone(&seen.picky);
    let broken = Arc::new(AtomicBool::new(broken));
    EventBus::builder()
        .sqlite(path)
        .handler("recorder", move || {
            let recorder = Arc::clone(&recorder);
            handler_fn(
                move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                    recorder.lock().unwrap().push(e.seq);
                    Ok(())
                },
            )
        })
        .handler_with(
            "picky",
            HandlerOptions::new().retry(RetryPolicy::new(1).backoff(Backoff::none())),
            move || {
                let (picky, broken) = (Arc::clone(&picky), Arc::clone(&broken));
                handler_fn(
                    move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                        if broken.load(Ordering::SeqCst) && picky_fails_on(e.seq) {
                            return Err(
                                format!("cannot ship order {} (seq {})", e.order, e.seq).into()
                            );
                        }
                        picky.lock().unwrap().push(e.seq);
                        Ok(())
                    },
                )
            },
        )
        .build()
        .expect("the bus builds")
}

/// Events the fixture stores: a long note at position 1, then `OrderPlaced` seq 0..10 over
/// three orders at positions 2..=11. "picky" dead-letters seq 3 and 7.
const EVENTS: u64 = 11;
const ORDERS: u64 = 10;

/// A store in a fresh directory, written by a bus that ran to completion and shut down.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bus.db");
    actix::System::new().block_on(async {
        let seen = Seen::default();
        let bus = bus_on(&db, true, &seen);
        bus.publish(NoteAdded {
            order: 1,
            text: long_note(),
        })
        .await
        .unwrap();
        for seq in 0..ORDERS {
            bus.publish(OrderPlaced {
                order: seq % 3,
                seq,
            })
            .await
            .unwrap();
        }
        bus.shutdown(PATIENCE).await.expect("the bus drains");
        assert_eq!(seen.recorder(), (0..ORDERS).collect::<Vec<_>>());
    });
    settle(&db);
    (dir, db)
}

/// Copies the WAL into the database file, so that a later byte comparison of the file sees
/// every committed change.
fn settle(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(PATIENCE).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Starts a bus on `db`, waits until `done(seen)` holds, then shuts it down.
fn run_bus_until(db: &Path, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
    let seen = Seen::default();
    actix::System::new().block_on(async {
        let bus = bus_on(db, false, &seen);
        poll_until(what, || done(&seen)).await;
        bus.shutdown(PATIENCE).await.expect("the bus drains");
    });
    seen
}

/// Polls `cond` every 10 ms; fails the test if it does not hold within `PATIENCE`.
async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let step = Duration::from_millis(10);
    for _ in 0..PATIENCE.as_millis() / step.as_millis() {
        if cond() {
            return;
        }
        actix_rt::time::sleep(step).await;
    }
    panic!("never happened: {what}");
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The binary with `args` and no `RUST_LOG`, so that logging is the command's default.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_actorbus"));
    command.args(args).env_remove("RUST_LOG");
    command
}

fn actorbus(args: &[&str]) -> Run {
    output(&mut command(args))
}

/// Runs `command` to its end.
fn output(command: &mut Command) -> Run {
    let out = command.output().expect("the binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs the binary, expects success, returns its stdout.
fn ok(args: &[&str]) -> String {
    let run = actorbus(args);
    assert_eq!(run.code, Some(0), "{args:?} failed: {run:?}");
    run.stdout
}

/// Runs the binary, expects success and one JSON document on stdout.
fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs the binary, expects exit code 1 with one `actorbus: ...` line on stderr and nothing
/// on stdout; returns the message.
fn fails(args: &[&str]) -> String {
    let run = actorbus(args);
    assert_eq!(run.code, Some(1), "{args:?} did not fail: {run:?}");
    assert_eq!(run.stdout, "", "{args:?} printed on stdout");
    assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {:?}", run.stderr);
    assert!(run.stderr.starts_with("actorbus: "), "{:?}", run.stderr);
    run.stderr.trim_end().to_owned()
}

/// Runs the binary, expects a usage error (exit code 2) as one `error: ...` line on stderr;
/// returns that line.
fn usage_error(args: &[&str]) -> String {
    let run = actorbus(args);
    assert_eq!(run.code, Some(2), "{args:?} was not a usage error: {run:?}");
    assert!(
        run.stderr.starts_with("error: "),
        "{args:?}: {:?}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {:?}", run.stderr);
    assert_eq!(run.stdout, "", "{args:?} printed on stdout");
    run.stderr.trim_end().to_owned()
}

/// Every file in `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The files of `dir` that hold data: as `files`, without SQLite's shared-memory index and
/// an empty WAL. Those two appear beside a store that is merely read, and may outlive the
/// command: the library's connection pool can still be closing its connections on a worker
/// thread when the process exits.
fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .filter(|(name, bytes)| {
            let index = name.ends_with("-shm");
            let empty_wal = name.ends_with("-wal") && bytes.is_empty();
            !(index || empty_wal)
        })
        .collect()
}

/// A copy of the fixture whose `store_meta` claims a schema newer than this binary knows.
fn newer_schema_store(dir: &Path) -> PathBuf {
    let (_fixture_dir, db) = fixture();
    let newer = dir.join("newer.db");
    std::fs::copy(&db, &newer).unwrap();
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute(
        "UPDATE store_meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    settle(&newer);
    newer
}

fn current_schema_version() -> i64 {
    let dir = tempfile::tempdir().unwrap();
    actorbus::Store::create(dir.path().join("fresh.db"))
        .and_then(|s| s.schema_version())
        .unwrap()
}

/// The position column of the data rows of an event table.
fn positions(table: &str) -> Vec<u64> {
    table
        .lines()
        .filter(|l| !l.starts_with("POSITION"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn every_subcommand_and_flag_has_help() {
    let commands: &[&[&str]] = &[
        &["events"],
        &["events", "list"],
        &["events", "tail"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "redrive"],
        &["dlq", "purge"],
        &["replay"],
        &["stats"],
        &["migrate"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = ok(&args);
        assert!(out.contains("Usage: actorbus"), "{args:?}: {out}");
        assert!(out.lines().next().is_some_and(|l| !l.trim().is_empty()));
        if command.len() == 2 || ["replay", "stats", "migrate"].contains(&command[0]) {
            assert!(out.contains("--db <PATH>"), "{args:?}: {out}");
        }
        // Every option line carries a description after its flag.
        for line in out.lines().filter(|l| l.trim_start().starts_with('-')) {
            let parts: Vec<&str> = line.trim().split("  ").filter(|p| !p.is_empty()).collect();
            assert!(parts.len() >= 2, "{args:?}: no help for `{line}`");
        }
    }
}

#[test]
fn usage_errors_exit_with_code_2_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bus.db");
    let db = path(&db);
    usage_error(&["events", "list"]);
    usage_error(&["events", "list", "--db", db, "--limit", "many"]);
    usage_error(&["events", "tail", "--db", db, "--after", "3"]);
    usage_error(&["dlq", "show", "--db", db]);
    usage_error(&["dlq", "show", "--db", db, "first"]);
    usage_error(&["dlq", "purge", "--db", db, "--force"]);
    usage_error(&["replay", "--db", db]);
    usage_error(&[
        "replay",
        "--db",
        db,
        "--handler",
        "recorder",
        "--from",
        "-1",
    ]);
    usage_error(&["stats"]);
    usage_error(&["migrate"]);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn events_list_prints_a_table_oldest_first_and_filters_it() {
    let (_dir, db) = fixture();
    let db = path(&db);
    let table = ok(&["events", "list", "--db", db]);
    let header = table.lines().next().unwrap();
    for column in [
        "POSITION", "STREAM", "VERSION", "TYPE", "RECORDED", "PAYLOAD",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(positions(&table), (1..=EVENTS).collect::<Vec<_>>());
    // The long payload is cut in the table.
    let note = table.lines().nth(1).unwrap();
    assert!(
        note.contains("note.added") && note.ends_with("..."),
        "{note}"
    );
    assert!(!note.contains(&long_note()));
    // Columns are aligned: every row's TYPE cell starts where the header's does.
    let type_at = header.find("TYPE").unwrap();
    for row in table.lines().skip(1) {
        assert!(
            row[type_at..].starts_with("note.added") || row[type_at..].starts_with("order.placed"),
            "{row}"
        );
    }

    let order_1 = ok(&["events", "list", "--db", db, "--stream", "order-1"]);
    assert_eq!(positions(&order_1), vec![1, 3, 6, 9]);
    let placed = ok(&["events", "list", "--db", db, "--type", "order.placed"]);
    assert_eq!(positions(&placed), (2..=EVENTS).collect::<Vec<_>>());
    let page = ok(&["events", "list", "--db", db, "--after", "4", "--limit", "3"]);
    assert_eq!(positions(&page), vec![5, 6, 7]);
    let none = ok(&["events", "list", "--db", db, "--stream", "order-404"]);
    assert_eq!(none.trim(), "no events");
}

#[test]
fn events_list_json_has_every_field_and_the_full_payload() {
    let (_dir, db) = fixture();
    let db = path(&db);
    let all = json(&["events", "list", "--db", db, "--json"]);
    let all = all.as_array().expect("an array of events");
    assert_eq!(all.len() as u64, EVENTS);
    let note = &all[0];
    assert_eq!(note["position"], 1);
    assert_eq!(note["event_type"], "note.added");
    assert_eq!(note["stream_id"], "order-1");
    assert_eq!(note["stream_version"], 1);
    assert_eq!(note["payload"]["text"], long_note());
    let recorded = note["recorded_at"].as_str().unwrap();
    assert!(recorded.len() == 27 && &recorded[10..11] == "T" && recorded.ends_with('Z'));
    assert!(uuid::Uuid::parse_str(note["id"].as_str().unwrap()).is_ok());
    assert_eq!(all[10]["payload"]["seq"], 9);

    let limited = json(&[
        "events",
        "list",
        "--db",
        db,
        "--type",
        "order.placed",
        "--limit",
        "4",
        "--json",
    ]);
    let seqs: Vec<&Value> = limited
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["seq"])
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
}

#[test]
fn events_tail_prints_the_newest_events_oldest_first() {
    let (_dir, db) = fixture();
    let db = path(&db);
    let default = ok(&["events", "tail", "--db", db]);
    assert_eq!(positions(&default), (1..=EVENTS).collect::<Vec<_>>());
    let last = ok(&["events", "tail", "--db", db, "--limit", "3"]);
    assert_eq!(positions(&last), vec![9, 10, 11]);
    let order_0 = ok(&[
        "events", "tail", "--db", db, "--stream", "order-0", "--limit", "2",
    ]);
    assert_eq!(positions(&order_0), vec![8, 11]);
}

#[test]
fn events_tail_follow_prints_events_stored_after_it_started() {
    let (_dir, db) = fixture();
    let mut child = command(&[
        "events",
        "tail",
        "--db",
        path(&db),
        "--type",
        "order.placed",
        "--limit",
        "1",
        "--follow",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(PATIENCE).expect("tail prints a line");
    assert!(next().starts_with("POSITION"));
    assert_eq!(positions(&next()), vec![EVENTS]);

    actix::System::new().block_on(async {
        let bus = EventBus::builder().sqlite(&db).build().unwrap();
        bus.publish(NoteAdded {
            order: 2,
            text: "filtered out".into(),
        })
        .await
        .unwrap();
        bus.publish(OrderPlaced { order: 2, seq: 100 })
            .await
            .unwrap();
        bus.shutdown(PATIENCE).await.unwrap();
    });
    // The note (position 12) does not match --type; had it been printed, it would come first.
    let line = next();
    assert_eq!(positions(&line), vec![EVENTS + 2], "{line}");
    assert!(
        line.contains("order.placed") && line.contains(r#""seq":100"#),
        "{line}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
}

#[test]
fn dlq_list_shows_each_handlers_dead_letters() {
    let (_dir, db) = fixture();
    let db = path(&db);
    let table = ok(&["dlq", "list", "--db", db]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "ID", "HANDLER", "ATTEMPTS", "POSITION", "STREAM", "TYPE", "ERROR",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("picky") && rows[0].contains("cannot ship order 0 (seq 3)"));
    assert!(rows[1].contains("picky") && rows[1].contains("cannot ship order 1 (seq 7)"));

    let letters = json(&["dlq", "list", "--db", db, "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["handler"], "picky");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["redrive_requested"], false);
    assert_eq!(letters[0]["event"]["payload"]["seq"], 3);
    assert_eq!(letters[1]["event"]["position"], 9);

    assert_eq!(
        json(&["dlq", "list", "--db", db, "--handler", "picky", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        json(&["dlq", "list", "--db", db, "--handler", "recorder", "--json"]),
        Value::Array(vec![])
    );
    assert_eq!(
        ok(&["dlq", "list", "--db", db, "--handler", "recorder"]).trim(),
        "no dead letters"
    );
}

#[test]
fn dlq_show_prints_everything_about_one_letter() {
    let (_dir, db) = fixture();
    let db = path(&db);
    let letters = json(&["dlq", "list", "--db", db, "--json"]);
    let id = letters[1]["id"].as_u64().unwrap().to_string();

    let text = ok(&["dlq", "show", "--db", db, &id]);
    for expected in [
        "picky",
        "cannot ship order 1 (seq 7)",
        "order.placed",
        "order-1",
        r#""seq": 7"#,
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    let letter = json(&["dlq", "show", "--db", db, &id, "--json"]);
    assert_eq!(letter, letters[1]);

    let missing = fails(&["dlq", "show", "--db", db, "999"]);
    assert!(missing.contains("999"), "{missing}");
}

#[test]
fn dlq_redrive_hands_the_letters_back_when_a_bus_next_starts() {
    let (_dir, db) = fixture();
    let out = ok(&["dlq", "redrive", "--db", path(&db), "--handler", "picky"]);
    assert_eq!(
        out,
        "2 dead letter(s) of picky will be redriven when the bus next starts\n"
    );
    let letters = json(&["dlq", "list", "--db", path(&db), "--json"]);
    assert!(letters
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["redrive_requested"] == true));

    // "picky" is fixed now; its checkpoint is at the head, so only the letters come back.
    let seen = run_bus_until(&db, "picky handles its two dead letters", |s| {
        s.picky().len() >= 2
    });
    assert_eq!(seen.picky(), vec![3, 7]);
    assert_eq!(seen.recorder(), Vec::<u64>::new());
    assert_eq!(
        json(&["dlq", "list", "--db", path(&db), "--json"]),
        Value::Array(vec![])
    );
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    assert!(stats["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["dead_letters"] == 0));
}

#[test]
fn dlq_redrive_without_a_handler_marks_every_handlers_letters() {
    let (_dir, db) = fixture();
    let out = ok(&["dlq", "redrive", "--db", path(&db)]);
    assert_eq!(
        out,
        "2 dead letter(s) of picky will be redriven when the bus next starts\n"
    );
}

#[test]
fn dlq_purge_wants_yes_then_reports_how_many_it_deleted() {
    let (dir, db) = fixture();
    let before = data_files(dir.path());
    let refused = fails(&["dlq", "purge", "--db", path(&db), "--handler", "picky"]);
    assert!(refused.contains("--yes"), "{refused}");
    assert_eq!(data_files(dir.path()), before);
    assert_eq!(
        json(&["dlq", "list", "--db", path(&db), "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = ok(&[
        "dlq",
        "purge",
        "--db",
        path(&db),
        "--handler",
        "picky",
        "--yes",
    ]);
    assert_eq!(out, "deleted 2 dead letter(s) of picky\n");
    assert_eq!(
        json(&["dlq", "list", "--db", path(&db), "--json"]),
        Value::Array(vec![])
    );
    let out = ok(&["dlq", "purge", "--db", path(&db), "--yes"]);
    assert_eq!(out, "deleted 0 dead letter(s) of every handler\n");
}

#[test]
fn replay_moves_the_checkpoint_and_the_next_bus_sees_every_event_again() {
    let (_dir, db) = fixture();
    let out = ok(&["replay", "--db", path(&db), "--handler", "recorder"]);
    assert!(out.contains(&format!("checkpoint {EVENTS} -> 0")), "{out}");
    assert!(out.contains("moved 1 checkpoint(s)"), "{out}");
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    let recorder = stats["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "recorder")
        .unwrap();
    assert_eq!(recorder["checkpoint"], 0);
    assert_eq!(recorder["lag"], EVENTS);

    let seen = run_bus_until(&db, "recorder handles every event again", |s| {
        s.recorder().len() as u64 >= ORDERS
    });
    assert_eq!(seen.recorder(), (0..ORDERS).collect::<Vec<_>>());
    // Only the replayed handler went back.
    assert_eq!(seen.picky(), Vec::<u64>::new());

    let out = ok(&[
        "replay",
        "--db",
        path(&db),
        "--handler",
        "recorder",
        "--from",
        "8",
    ]);
    assert!(out.contains(&format!("checkpoint {EVENTS} -> 8")), "{out}");
    let past = fails(&[
        "replay",
        "--db",
        path(&db),
        "--handler",
        "recorder",
        "--from",
        "12",
    ]);
    assert!(past.contains("past the head"), "{past}");
}

#[test]
fn stats_reports_counts_checkpoints_lag_and_dead_letters() {
    let (_dir, db) = fixture();
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    assert_eq!(stats["events"], EVENTS);
    assert_eq!(stats["streams"], 3);
    assert_eq!(stats["head"], EVENTS);
    assert_eq!(stats["schema_version"], current_schema_version());
    let handlers = stats["handlers"].as_array().unwrap();
    assert_eq!(handlers.len(), 2);
    assert_eq!(handlers[0]["name"], "picky");
    assert_eq!(handlers[0]["dead_letters"], 2);
    assert_eq!(handlers[1]["name"], "recorder");
    assert_eq!(handlers[1]["dead_letters"], 0);
    for h in handlers {
        assert_eq!(h["checkpoint"], EVENTS);
        assert_eq!(h["lag"], 0);
    }

    let text = ok(&["stats", "--db", path(&db)]);
    assert!(text.contains(&format!("events   {EVENTS}")), "{text}");
    assert!(text.contains("streams  3"), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("HANDLER"))
        .expect("a handler table");
    for column in ["CHECKPOINT", "LAG", "DEAD LETTERS"] {
        assert!(header.contains(column), "{header}");
    }
    let picky = text.lines().find(|l| l.starts_with("picky")).unwrap();
    assert_eq!(
        picky.split_whitespace().collect::<Vec<_>>(),
        ["picky", "11", "0", "2"]
    );
}

#[test]
fn migrate_creates_a_store_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let version = current_schema_version();
    let out = ok(&["migrate", "--db", path(&db)]);
    assert!(out.contains(&format!("schema version {version}")), "{out}");
    assert!(db.is_file());
    let out = ok(&["migrate", "--db", path(&db)]);
    assert!(out.contains(&format!("schema version {version}")), "{out}");
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    assert_eq!(
        (
            stats["events"].as_u64(),
            stats["handlers"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    let nowhere = dir.path().join("missing-dir").join("new.db");
    let msg = fails(&["migrate", "--db", path(&nowhere)]);
    assert!(msg.contains("missing-dir"), "{msg}");
    assert!(!nowhere.parent().unwrap().exists());
}

/// Every operator command, with `{db}` where the store goes.
fn every_command() -> Vec<Vec<&'static str>> {
    vec![
        vec!["events", "list", "--db", "{db}"],
        vec!["events", "list", "--db", "{db}", "--json"],
        vec!["events", "tail", "--db", "{db}"],
        vec!["events", "tail", "--db", "{db}", "--follow"],
        vec!["dlq", "list", "--db", "{db}"],
        vec!["dlq", "list", "--db", "{db}", "--json"],
        vec!["dlq", "show", "--db", "{db}", "1"],
        vec!["dlq", "redrive", "--db", "{db}"],
        vec!["dlq", "purge", "--db", "{db}", "--yes"],
        vec!["replay", "--db", "{db}", "--handler", "recorder"],
        vec!["stats", "--db", "{db}"],
        vec!["stats", "--db", "{db}", "--json"],
    ]
}

fn with_db<'a>(command: &[&'a str], db: &'a str) -> Vec<&'a str> {
    command
        .iter()
        .map(|a| if *a == "{db}" { db } else { a })
        .collect()
}

#[test]
fn a_missing_store_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typo.db");
    for command in every_command() {
        let msg = fails(&with_db(&command, path(&db)));
        assert!(msg.contains("typo.db"), "{command:?}: {msg}");
        assert!(files(dir.path()).is_empty(), "{command:?} created a file");
    }
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "these are my notes, not a database\n".repeat(200)).unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let before = files(dir.path());
    let mut commands = every_command();
    commands.push(vec!["migrate", "--db", "{db}"]);
    for command in &commands {
        let msg = fails(&with_db(command, path(&notes)));
        assert!(msg.contains("not a SQLite database"), "{command:?}: {msg}");
        assert_eq!(files(dir.path()), before, "{command:?} changed a file");
    }
    // An empty file would be taken for a new database: only `migrate` may write into it.
    for command in &commands[..commands.len() - 1] {
        let msg = fails(&with_db(command, path(&empty)));
        assert!(msg.contains("empty"), "{command:?}: {msg}");
        assert_eq!(files(dir.path()), before, "{command:?} changed a file");
    }
}

#[test]
fn a_store_with_a_newer_schema_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = newer_schema_store(dir.path());
    let before = data_files(dir.path());
    let mut commands = every_command();
    commands.push(vec!["migrate", "--db", "{db}"]);
    for command in &commands {
        let msg = fails(&with_db(command, path(&db)));
        assert!(msg.contains("schema version 99"), "{command:?}: {msg}");
        assert_eq!(data_files(dir.path()), before, "{command:?} changed a file");
    }
}

#[test]
fn an_unknown_handler_is_an_error_and_changes_nothing() {
    let (dir, db) = fixture();
    let before = data_files(dir.path());
    let commands: &[&[&str]] = &[
        &["dlq", "list", "--handler", "shipper"],
        &["dlq", "list", "--handler", "shipper", "--json"],
        &["dlq", "redrive", "--handler", "shipper"],
        &["dlq", "purge", "--handler", "shipper"],
        &["dlq", "purge", "--handler", "shipper", "--yes"],
        &["replay", "--handler", "shipper"],
        &["replay", "--handler", "shipper", "--from", "3"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--db", path(&db)]);
        let msg = fails(&args);
        assert!(
            msg.contains("no handler named `shipper`"),
            "{args:?}: {msg}"
        );
        assert!(msg.contains("picky, recorder"), "{args:?}: {msg}");
        assert_eq!(data_files(dir.path()), before, "{args:?} changed a file");
    }
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_not_an_error() {
    // `actorbus bench ... | head -1`: stdout is closed before the summary is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_actorbus"))
        .args(["bench", "--events", "1000", "--no-baseline"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sqlite_bench_leaves_a_consistent_store_and_reports_both_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let out = ok(&[
        "bench",
        "--mode",
        "sqlite",
        "--events",
        "3000",
        "--publishers",
        "16",
        "--db",
        path(&db),
        "--json",
    ]);
    let last = out.lines().last().expect("a summary");
    let report: Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["mode"], "sqlite");
    assert_eq!(report["events"], 3000);
    assert_eq!(report["publishers"], 16);
    let eps = report["events_per_sec"].as_f64().unwrap();
    for (rate, ratio) in [
        ("baseline_rows_per_sec", "ratio_to_baseline"),
        ("per_event_index_rows_per_sec", "ratio_to_per_event_index"),
    ] {
        let base = report[rate]
            .as_f64()
            .unwrap_or_else(|| panic!("{rate}: {report}"));
        let r = report[ratio].as_f64().unwrap();
        assert!(
            (r - eps / base).abs() < 1e-9,
            "{ratio} is events/s over {rate}"
        );
    }
    // What the bench published is stored once, indexed, and checks out.
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    assert_eq!(stats["events"], 3000);
    assert_eq!(ok(&["check", "--db", path(&db)]).trim(), "consistent");
}

#[test]
fn sqlite_bench_with_a_failing_subscription_reports_its_publish_rate_beside_one_without() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let out = ok(&[
        "bench",
        "--mode",
        "sqlite",
        "--events",
        "2000",
        "--publishers",
        "8",
        "--fail-rate",
        "0.2",
        "--no-baseline",
        "--db",
        path(&db),
        "--json",
    ]);
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let with = report["published_per_sec"].as_f64().unwrap();
    let without = report["published_per_sec_without_failures"]
        .as_f64()
        .unwrap();
    let ratio = report["ratio_to_without_failures"].as_f64().unwrap();
    assert!((ratio - with / without).abs() < 1e-9, "{report}");
    assert!(out.contains("failing 20% of its attempts"), "{out}");
    // The failing subscription retried until every event was handled: the store is drained
    // and consistent; the reference run left nothing behind.
    let stats = json(&["stats", "--db", path(&db), "--json"]);
    assert_eq!(stats["events"], 2000);
    assert!(
        stats["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["lag"] == 0 && h["dead_letters"] == 0),
        "{stats}"
    );
    assert_eq!(ok(&["check", "--db", path(&db)]).trim(), "consistent");
    let mut left: Vec<_> = files(dir.path()).into_keys().collect();
    left.sort();
    assert!(left.iter().all(|f| f.starts_with("bench.db")), "{left:?}");
}

/// What `help` says about `option`: its line and the description below it.
fn help_for(help: &str, option: &str) -> String {
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{option} ")));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {option} in:\n{help}"));
    let description = lines
        .take_while(|l| !l.trim_start().starts_with("--") && !l.trim_start().starts_with("-h"));
    std::iter::once(first)
        .chain(description)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bench_work_us_must_be_a_finite_number_of_microseconds_up_to_a_second() {
    for work in ["NaN", "inf", "-inf", "-1", "1e300", "1000001"] {
        let msg = usage_error(&[
            "bench",
            "--events",
            "10",
            "--no-baseline",
            &format!("--work-us={work}"),
        ]);
        assert!(msg.contains("--work-us"), "{work}: {msg}");
    }
    let help = help_for(&ok(&["bench", "--help"]), "--work-us");
    assert!(help.contains("0 to 1000000"), "{help}");
    ok(&[
        "bench",
        "--events",
        "10",
        "--no-baseline",
        "--work-us",
        "0.5",
    ]);
}

#[test]
fn positions_beyond_the_largest_sqlite_integer_are_usage_errors() {
    let (dir, db) = fixture();
    let db = path(&db);
    let before = data_files(dir.path());
    for position in ["9223372036854775808", "18446744073709551615"] {
        usage_error(&["events", "list", "--db", db, "--after", position]);
        usage_error(&[
            "replay",
            "--db",
            db,
            "--handler",
            "recorder",
            "--from",
            position,
        ]);
    }
    assert_eq!(data_files(dir.path()), before);
    // The largest position there can be: nothing after it.
    let none = ok(&[
        "events",
        "list",
        "--db",
        db,
        "--after",
        "9223372036854775807",
    ]);
    assert_eq!(none.trim(), "no events");
    let all = ok(&[
        "events",
        "list",
        "--db",
        db,
        "--limit",
        "18446744073709551615",
    ]);
    assert_eq!(positions(&all), (1..=EVENTS).collect::<Vec<_>>());
}

#[test]
fn counts_and_rates_out_of_range_are_usage_errors_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let db = path(&db);
    for (option, value) in [
        ("--events", "0"),
        ("--handlers", "0"),
        ("--concurrency", "0"),
        ("--streams", "0"),
        ("--publishers", "0"),
        ("--baseline-batch", "0"),
    ] {
        let msg = usage_error(&["bench", "--mode", "sqlite", "--db", db, option, value]);
        assert!(msg.contains(option), "{msg}");
    }
    for option in ["--fail-rate", "--panic-rate"] {
        for value in ["2", "-0.1", "NaN", "inf"] {
            let msg = usage_error(&["demo", "--db", db, "--quiet", option, value]);
            assert!(msg.contains(option), "{msg}");
        }
    }
    assert!(files(dir.path()).is_empty());

    let bench = ok(&["bench", "--help"]);
    for option in ["--events", "--streams", "--baseline-batch"] {
        let line = help_for(&bench, option);
        assert!(line.contains("at least 1"), "{line}");
    }
    let demo = ok(&["demo", "--help"]);
    for option in ["--fail-rate", "--panic-rate"] {
        let line = help_for(&demo, option);
        assert!(line.contains("0 to 1"), "{line}");
    }
}

#[test]
fn bench_caps_the_actors_and_publishers_it_starts() {
    for (option, most) in [
        ("--concurrency", 4096),
        ("--handlers", 1024),
        ("--publishers", 4096),
    ] {
        for value in [most + 1, 100_000_000] {
            let msg = usage_error(&[
                "bench",
                "--mode",
                "sqlite",
                "--events",
                "10",
                "--no-baseline",
                option,
                &value.to_string(),
            ]);
            assert!(msg.contains(option), "{msg}");
        }
        assert!(
            help_for(&ok(&["bench", "--help"]), option).contains(&format!("1 to {most}")),
            "{option}"
        );
    }
    ok(&[
        "bench",
        "--events",
        "10",
        "--no-baseline",
        "--handlers",
        "1",
        "--concurrency",
        "4096",
    ]);
}

#[test]
fn bench_refuses_to_overwrite_a_baseline_file_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mine.db");
    let baseline = dir.path().join("mine.baseline.db");
    std::fs::write(&baseline, "somebody's data").unwrap();
    let bench = |no_baseline: bool| {
        let mut args = vec![
            "bench",
            "--mode",
            "sqlite",
            "--events",
            "200",
            "--db",
            path(&db),
        ];
        if no_baseline {
            args.push("--no-baseline");
        }
        args
    };
    let msg = fails(&bench(false));
    assert!(msg.contains("mine.baseline.db"), "{msg}");
    assert_eq!(
        files(dir.path()).keys().collect::<Vec<_>>(),
        ["mine.baseline.db"]
    );
    assert_eq!(std::fs::read(&baseline).unwrap(), b"somebody's data");
    ok(&bench(true));
    assert_eq!(std::fs::read(&baseline).unwrap(), b"somebody's data");

    // Once the file is gone, the bench writes its baseline there and deletes it afterwards.
    std::fs::remove_file(&baseline).unwrap();
    ok(&bench(false));
    assert!(!baseline.exists());
    assert!(files(dir.path())
        .keys()
        .all(|name| name.starts_with("mine.db")));
    let help = help_for(&ok(&["bench", "--help"]), "--db");
    assert!(help.contains(".baseline.db"), "{help}");
}

#[test]
fn a_failing_demo_prints_one_line_unless_rust_log_asks_for_more() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let db = path(&db);
    ok(&["demo", "--db", db, "--events", "300", "--quiet"]);
    // Another program makes every further append fail.
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_more BEFORE INSERT ON events
             BEGIN SELECT RAISE(ABORT, 'no more events'); END;",
        )
        .unwrap();
    let more = ["demo", "--db", db, "--events", "600", "--quiet"];
    let run = actorbus(&more);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr.starts_with("actorbus: ") && run.stderr.contains("no more events"),
        "{:?}",
        run.stderr
    );

    // Logs the user asks for are printed as they happen, before the error line.
    let run = output(command(&more).env("RUST_LOG", "error"));
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.len() >= 2, "{:?}", run.stderr);
    assert!(lines[0].contains("ERROR"), "{:?}", run.stderr);
    assert!(lines.last().unwrap().starts_with("actorbus: "));
    assert_eq!(stored_events(Path::new(db)), 300);
}

/// Starts the demo on `db` for more events than it can publish before `signal` reaches it,
/// sends `signal` once the store holds some of them, and expects the demo to drain, print
/// its summary and how to resume, and exit with `code`; then a second run resumes and
/// completes, and the store checks out.
fn interrupt_the_demo(signal: &str, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let child = command(&["demo", "--db", path(&db), "--events", "10000000", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    actix::System::new().block_on(poll_until("the demo stores events", || {
        stored_events(&db) > 0
    }));
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    assert_eq!(stderr, "");
    let interrupted_at = stored_events(&db);
    assert!(
        stdout.contains(&format!(
            "events in store       {interrupted_at} of 10000000 ({interrupted_at} published now, 0 before)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("interrupted: run `actorbus demo --db"),
        "{stdout}"
    );
    // What was stored was handled: the drain ran, so the read model is complete.
    assert_eq!(ok(&["check", "--db", path(&db)]).trim(), "consistent");

    let target = (interrupted_at + 500).to_string();
    let resumed = ok(&["demo", "--db", path(&db), "--events", &target, "--quiet"]);
    assert!(resumed.contains("resuming: "), "{resumed}");
    assert!(
        resumed.contains(&format!(
            "events in store       {target} of {target} (500 published now, {interrupted_at} before)"
        )),
        "{resumed}"
    );
    assert!(!resumed.contains("interrupted"), "{resumed}");
    assert_eq!(ok(&["check", "--db", path(&db)]).trim(), "consistent");
}

#[test]
fn a_demo_stopped_by_sigterm_drains_reports_and_exits_143() {
    interrupt_the_demo("-TERM", 143);
}

#[test]
fn a_demo_stopped_by_sigint_drains_reports_and_exits_130() {
    interrupt_the_demo("-INT", 130);
}

#[test]
fn sqlite_bench_without_db_deletes_its_temporary_database() {
    let tmp = tempfile::tempdir().unwrap();
    for baseline in [true, false] {
        let mut args = vec!["bench", "--mode", "sqlite", "--events", "200"];
        if !baseline {
            args.push("--no-baseline");
        }
        let run = output(command(&args).env("TMPDIR", tmp.path()));
        assert_eq!(run.code, Some(0), "{run:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?} in the temp dir");
    }
}
