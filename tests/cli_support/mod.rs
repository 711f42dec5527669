//! Helpers of the command's tests: a store a bus wrote (the fixture), running the real
//! binary, and what to expect of its output and exit codes.

#![allow(dead_code, unused_imports)]

pub use crate::common::{poll_until, stored_events, TempStore};
pub use actorbus::{
    handler_fn, Backoff, DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions, RetryPolicy,
};
pub use serde::{Deserialize, Serialize};
pub use serde_json::Value;
pub use std::collections::BTreeMap;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Stdio};
pub use std::sync::atomic::{AtomicBool, Ordering};
pub use std::sync::{mpsc, Arc, Mutex};
pub use std::time::Duration;

/// Generous bound for a drain or a wait: only reached when the test is already failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The tests' event, as every other test file has it.
pub use crate::common::OrderPlaced;

/// An event with a payload longer than a table shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoteAdded {
    pub order: u64,
    pub text: String,
}

impl DomainEvent for NoteAdded {
    const EVENT_TYPE: &'static str = "note.added";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order)
    }
}

pub fn long_note() -> String {
    "the customer asked for the parcel to be left with the neighbour at number 12; ".repeat(3)
}

/// Seqs of `OrderPlaced` each subscription handled, in order.
#[derive(Clone, Default)]
pub struct Seen {
    pub recorder: Arc<Mutex<Vec<u64>>>,
    pub picky: Arc<Mutex<Vec<u64>>>,
}

impl Seen {
    pub fn recorder(&self) -> Vec<u64> {
        self.recorder.lock().unwrap().clone()
    }
    pub fn picky(&self) -> Vec<u64> {
        self.picky.lock().unwrap().clone()
    }
}

/// Seqs that "picky" fails on while it is broken: they become its dead letters.
pub fn picky_fails_on(seq: u64) -> bool {
    seq % 4 == 3
}

/// A bus on `path` with two subscriptions to `OrderPlaced`: "recorder" handles everything,
/// "picky" (one attempt, so a failure is a dead letter at once) fails some events while
/// `broken` is set.
pub fn bus_on(path: &Path, broken: bool, seen: &Seen) -> EventBus {
    bus_with(EventBus::builder().sqlite(path), broken, seen)
}

/// As [`bus_on`], on the store `builder` names.
pub fn bus_with(builder: actorbus::BusBuilder, broken: bool, seen: &Seen) -> EventBus {
    let recorder = Arc::clone(&seen.recorder);
    let picky = Arc::clone(&seen.picky);
    let broken = Arc::new(AtomicBool::new(broken));
    builder
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
pub const EVENTS: u64 = 11;

pub const ORDERS: u64 = 10;

/// A store in a fresh directory, written by a bus that ran to completion and shut down.
pub fn fixture() -> TempStore {
    let tmp = TempStore::new();
    let db = tmp.path();
    fill(EventBus::builder().sqlite(db));
    settle(db);
    tmp
}

/// Runs a bus on the store `builder` names to completion: the fixture's events, handled.
pub fn fill(builder: actorbus::BusBuilder) {
    actix::System::new().block_on(async {
        let seen = Seen::default();
        let bus = bus_with(builder, true, &seen);
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
}

/// Copies the WAL into the database file, so that a later byte comparison of the file sees
/// every committed change.
pub fn settle(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(PATIENCE).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Starts a bus on `db`, waits until `done(seen)` holds, then shuts it down.
pub fn run_bus_until(db: &Path, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
    let seen = Seen::default();
    actix::System::new().block_on(async {
        let bus = bus_on(db, false, &seen);
        poll_until(what, || done(&seen)).await;
        bus.shutdown(PATIENCE).await.expect("the bus drains");
    });
    seen
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The binary with `args` and no `RUST_LOG`, so that logging is the command's default.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_actorbus"));
    command.args(args).env_remove("RUST_LOG");
    command
}

pub fn actorbus(args: &[&str]) -> Run {
    output(&mut command(args))
}

/// Runs `command` to its end.
pub fn output(command: &mut Command) -> Run {
    let out = command.output().expect("the binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs the binary, expects success, returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let run = actorbus(args);
    assert_eq!(run.code, Some(0), "{args:?} failed: {run:?}");
    run.stdout
}

/// Runs the binary, expects success and one JSON document on stdout.
pub fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Runs the binary, expects exit code 1 with one `actorbus: ...` line on stderr and nothing
/// on stdout; returns the message.
pub fn fails(args: &[&str]) -> String {
    let run = actorbus(args);
    assert_eq!(run.code, Some(1), "{args:?} did not fail: {run:?}");
    assert_eq!(run.stdout, "", "{args:?} printed on stdout");
    assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {:?}", run.stderr);
    assert!(run.stderr.starts_with("actorbus: "), "{:?}", run.stderr);
    run.stderr.trim_end().to_owned()
}

/// Runs the binary, expects a usage error (exit code 2) as one `error: ...` line on stderr;
/// returns that line.
pub fn usage_error(args: &[&str]) -> String {
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
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
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
pub fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .filter(|(name, bytes)| {
            let index = name.ends_with("-shm");
            let empty_wal = name.ends_with("-wal") && bytes.is_empty();
            !(index || empty_wal)
        })
        .collect()
}

/// A copy of the fixture, alone in its directory, whose `store_meta` claims a schema newer
/// than this binary knows.
pub fn newer_schema_store() -> TempStore {
    let fixture = fixture();
    let newer = TempStore::named("newer.db");
    std::fs::copy(fixture.path(), newer.path()).unwrap();
    let conn = rusqlite::Connection::open(newer.path()).unwrap();
    conn.execute(
        "UPDATE store_meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    settle(newer.path());
    newer
}

pub fn current_schema_version() -> i64 {
    actorbus::Store::create(TempStore::new().path())
        .and_then(|s| s.schema_version())
        .unwrap()
}

/// The position column of the data rows of an event table.
pub fn positions(table: &str) -> Vec<u64> {
    table
        .lines()
        .filter(|l| !l.starts_with("POSITION"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// Every operator command, with `{db}` where the store goes.
pub fn every_command() -> Vec<Vec<&'static str>> {
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
        vec!["serve", "--db", "{db}", "--addr", "127.0.0.1:0"],
    ]
}

pub fn with_db<'a>(command: &[&'a str], db: &'a str) -> Vec<&'a str> {
    command
        .iter()
        .map(|a| if *a == "{db}" { db } else { a })
        .collect()
}

/// What `help` says about `option`: its line and the description below it.
pub fn help_for(help: &str, option: &str) -> String {
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

/// Starts the demo on `db` for more events than it can publish before `signal` reaches it,
/// sends `signal` once the store holds some of them, and expects the demo to drain, print
/// its summary and how to resume, and exit with `code`; then a second run resumes and
/// completes, and the store checks out.
pub fn interrupt_the_demo(signal: &str, code: i32) {
    let tmp = TempStore::new();
    let db = tmp.path();
    let child = command(&["demo", "--db", path(db), "--events", "10000000", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    actix::System::new().block_on(poll_until("the demo stores events", || {
        stored_events(db) > 0
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
    let interrupted_at = stored_events(db);
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
    assert_eq!(ok(&["check", "--db", path(db)]).trim(), "consistent");

    let target = (interrupted_at + 500).to_string();
    let resumed = ok(&["demo", "--db", path(db), "--events", &target, "--quiet"]);
    assert!(resumed.contains("resuming: "), "{resumed}");
    assert!(
        resumed.contains(&format!(
            "events in store       {target} of {target} (500 published now, {interrupted_at} before)"
        )),
        "{resumed}"
    );
    assert!(!resumed.contains("interrupted"), "{resumed}");
    assert_eq!(ok(&["check", "--db", path(db)]).trim(), "consistent");
}
