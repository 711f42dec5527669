//! Crash campaign: a worker process publishes and handles events on a SQLite bus with a
//! projection and retention, and is killed with SIGKILL at random points (inside group
//! commits, checkpoint flushes, retention passes, index builds), while `actorbus stats`,
//! `events list` and `check` run from other processes. After every kill the store passes
//! `PRAGMA integrity_check` and `check`; at the end, against what the publishers recorded
//! outside the store: no acknowledged event lost, positions never reused, every event
//! handled by the plain handler (in stream order within a run), the projection's effects
//! exactly once, lag 0.
//!
//! The worker is this test binary run again (`crash_worker`, selected by an environment
//! variable), so that no extra binary is needed. `ACTORBUS_CRASH_KILLS` sets the number of
//! kills (default 16; the campaign in the closing notes ran 150).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::{
    handler_fn, DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions, Projection,
    Retention, Store,
};
use common::TempStore;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

const WORKER: &str = "ACTORBUS_CRASH_WORKER";
const DB: &str = "ACTORBUS_CRASH_DB";
const DRAIN: &str = "ACTORBUS_CRASH_DRAIN";
const RUN_ID: &str = "ACTORBUS_CRASH_RUN";
const ACKED: &str = "ACTORBUS_CRASH_ACKED";
const HANDLED: &str = "ACTORBUS_CRASH_HANDLED";

/// Runs killed with SIGKILL before the final, draining one (`ACTORBUS_CRASH_KILLS`).
fn killed_runs() -> usize {
    std::env::var("ACTORBUS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}
/// Retention keeps the newest this many events (and deletes the rest once processed).
const RETAIN: u64 = 300;
const PUBLISHERS: usize = 8;
const STREAMS: u32 = 16;
/// Bounds a worker's progress; only reached when the test is already failing.
const RUN_DEADLINE: Duration = Duration::from_secs(10);

/// The worker's event, on one of `STREAMS` streams; `nonce` numbers the events of one worker
/// run (specific to this campaign, so not in tests/common).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CrashEvent {
    stream: u32,
    nonce: u64,
}

impl DomainEvent for CrashEvent {
    const EVENT_TYPE: &'static str = "crash.event";
    fn stream_id(&self) -> String {
        format!("s{}", self.stream)
    }
}

/// Read model: how many events of each stream were applied.
struct CrashCounts;

impl Projection<CrashEvent> for CrashCounts {
    fn apply(
        &mut self,
        e: &Envelope<CrashEvent>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS crash_counts (stream TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
        )?;
        diesel::sql_query(
            "INSERT INTO crash_counts (stream, applied) VALUES (?, 1) \
             ON CONFLICT(stream) DO UPDATE SET applied = applied + 1",
        )
        .bind::<diesel::sql_types::Text, _>(e.stream_id())
        .execute(conn)?;
        Ok(())
    }
}

/// Appends `line` with one write, so that a kill leaves at most a partial last line.
fn append_line(file: &mut File, line: &str) {
    file.write_all(line.as_bytes())
        .and_then(|()| file.flush())
        .expect("append to a crash-test log");
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open a crash-test log")
}

fn env_path(key: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(key).unwrap_or_else(|| panic!("{key} is set")))
}

/// The child process: a SQLite bus with a plain handler, a projection and publishers. It
/// runs until killed, or with `ACTORBUS_CRASH_DRAIN=1` catches up, shuts down and returns.
#[test]
fn crash_worker() {
    if std::env::var_os(WORKER).is_none() {
        return;
    }
    let db = env_path(DB);
    let handled = env_path(HANDLED);
    let acked = env_path(ACKED);
    let run_id = std::env::var(RUN_ID).unwrap_or_default();
    let drain = std::env::var(DRAIN).is_ok_and(|v| v == "1");

    actix::System::new().block_on(async move {
        let bus = EventBus::builder()
            .sqlite(&db)
            .retention(Retention::keep_last(RETAIN).every(Duration::from_millis(20)))
            .handler_with("logger", HandlerOptions::new().concurrency(2), move || {
                let mut log = open_append(&handled);
                let run_id = run_id.clone();
                handler_fn(
                    move |e: &Envelope<CrashEvent>| -> Result<(), HandlerError> {
                        let version = e.stream_version().ok_or("a stored event has a version")?;
                        append_line(&mut log, &format!("{run_id} {} {version}\n", e.stream_id()));
                        Ok(())
                    },
                )
            })
            .projection("counts", HandlerOptions::new().concurrency(2), || {
                CrashCounts
            })
            .build()
            .expect("the crash worker's bus builds");

        if drain {
            bus.shutdown(RUN_DEADLINE / 2)
                .await
                .expect("the draining run shuts down");
            return;
        }
        let nonce = Arc::new(AtomicU64::new(0));
        for _ in 0..PUBLISHERS {
            let (bus, nonce) = (bus.clone(), Arc::clone(&nonce));
            let mut acked = open_append(&acked);
            actix_rt::spawn(async move {
                loop {
                    let event = CrashEvent {
                        stream: fastrand::u32(0..STREAMS),
                        nonce: nonce.fetch_add(1, Ordering::Relaxed),
                    };
                    let stream = event.stream_id();
                    match bus.publish(event).await {
                        Ok(r) => append_line(
                            &mut acked,
                            &format!(
                                "{} {} {stream} {}\n",
                                r.id,
                                r.position.unwrap_or(0),
                                r.stream_version.unwrap_or(0)
                            ),
                        ),
                        Err(e) => {
                            eprintln!("crash worker: publish failed: {e}");
                            actix_rt::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        // Until the parent kills the process.
        std::future::pending::<()>().await;
    });
}

/// The complete lines of `path` (a partial last line, cut by a kill, is left out).
fn complete_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Vec::new(),
    };
    complete.split('\n').map(str::to_owned).collect()
}

fn count_complete_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

struct Run {
    acked: PathBuf,
    handled: PathBuf,
    output: PathBuf,
}

fn spawn_worker(dir: &Path, db: &Path, run: usize, drain: bool) -> (Child, Run) {
    let paths = Run {
        acked: dir.join(format!("acked-{run}.txt")),
        handled: dir.join(format!("handled-{run}.txt")),
        output: dir.join(format!("worker-{run}.out")),
    };
    let out = File::create(&paths.output).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
        .env(WORKER, "1")
        .env(DB, db)
        .env(RUN_ID, run.to_string())
        .env(ACKED, &paths.acked)
        .env(HANDLED, &paths.handled)
        .env_remove(DRAIN)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if drain {
        cmd.env(DRAIN, "1");
    }
    (cmd.spawn().expect("spawn the crash worker"), paths)
}

fn worker_output(run: &Run) -> String {
    std::fs::read_to_string(&run.output).unwrap_or_default()
}

#[derive(Default)]
struct Summary {
    stored: usize,
    pruned: usize,
    acked: usize,
    acked_per_run: Vec<usize>,
    handled: usize,
    replays: usize,
}

/// Operator commands from other processes, against the store a worker is writing.
fn operator_commands(db: &Path) -> Vec<Child> {
    [
        &["stats"][..],
        &["events", "list", "--limit", "5"],
        &["check"],
    ]
    .iter()
    .map(|args| {
        Command::new(env!("CARGO_BIN_EXE_actorbus"))
            .args(*args)
            .arg("--db")
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run an operator command")
    })
    .collect()
}

/// What a killed (or any) run left: a sound database and a consistent log.
fn check_after_kill(db: &Path, run: usize, seed: u64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "after run {run} (seed {seed})");
    drop(conn);
    let problems = Store::open(db).unwrap().check().unwrap();
    assert_eq!(
        problems,
        Vec::<String>::new(),
        "after run {run} (seed {seed})"
    );
}

#[test]
fn acknowledged_events_survive_sigkill_and_handlers_resume_in_order() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut runs = Vec::new();
    let killed = killed_runs();
    let mut operator_runs = 0;

    for run in 0..killed {
        // Killed at a random moment: before or after checkpoint flushes (every 200 ms),
        // retention passes (every 20 ms) and index builds, once it has acknowledged some.
        let lifetime = Duration::from_millis(rng.u64(10..700));
        let read_at = rng.bool().then(|| lifetime.mul_f64(rng.f64()));
        let mut readers = Vec::new();
        let (mut child, paths) = spawn_worker(tmp.dir(), db, run, false);
        let started = Instant::now();
        let deadline = started + RUN_DEADLINE;
        loop {
            let acked = count_complete_lines(&paths.acked);
            if acked > 0 && started.elapsed() >= lifetime {
                break;
            }
            if read_at.is_some_and(|at| started.elapsed() >= at) && readers.is_empty() {
                readers = operator_commands(db);
                operator_runs += 1;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "worker {run} exited early ({status}, seed {seed}):\n{}",
                    worker_output(&paths)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "worker {run} acknowledged nothing in {RUN_DEADLINE:?} (seed {seed}):\n{}",
                    worker_output(&paths)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("SIGKILL the worker");
        child.wait().unwrap();
        for mut reader in readers {
            reader.wait().unwrap();
        }
        check_after_kill(db, run, seed);
        runs.push(paths);
    }

    let (mut child, paths) = spawn_worker(tmp.dir(), db, killed, true);
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the draining worker did not exit within {RUN_DEADLINE:?} (seed {seed}):\n{}",
                worker_output(&paths)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        status.success(),
        "draining worker failed ({status}, seed {seed}):\n{}",
        worker_output(&paths)
    );
    runs.push(paths);
    check_after_kill(db, killed, seed);

    let summary = check_store(db, &runs, seed);
    println!(
        "crash campaign (seed {seed}): {} runs ({killed} killed, {operator_runs} with stats/events/check \
         from other processes), {} events stored, {} deleted by retention, {} acked {:?}, \
         {} handled by the plain handler, {} replays; 0 acknowledged events lost, \
         0 projection effects applied twice",
        runs.len(),
        summary.stored,
        summary.pruned,
        summary.acked,
        summary.acked_per_run,
        summary.handled,
        summary.replays
    );
}

/// The stored events: how often each id occurs, and where each is.
struct Stored {
    by_id: HashMap<[u8; 16], (usize, i64, String, i64)>,
    /// Each stream's newest version ever (the index keeps it after retention).
    newest: BTreeMap<String, i64>,
    /// (stream, version) of every stored event.
    all: HashSet<(String, i64)>,
}

fn read_events(conn: &rusqlite::Connection) -> Stored {
    let mut stmt = conn
        .prepare(
            "SELECT position, event_id, stream_id, stream_version FROM events ORDER BY position",
        )
        .unwrap();
    let mut stored = Stored {
        by_id: HashMap::new(),
        newest: BTreeMap::new(),
        all: HashSet::new(),
    };
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (position, id, stream, version) = row.unwrap();
        let id: [u8; 16] = id.try_into().expect("event_id is a 16-byte UUID");
        let entry = stored
            .by_id
            .entry(id)
            .or_insert((0, position, stream.clone(), version));
        entry.0 += 1;
        stored.all.insert((stream, version));
    }
    let mut stmt = conn
        .prepare(
            "SELECT stream_id, max(v) FROM (SELECT stream_id, stream_version AS v FROM stream_events \
             UNION ALL SELECT stream_id, stream_version FROM events) GROUP BY stream_id",
        )
        .unwrap();
    stored.newest = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    stored
}

fn check_store(db: &Path, runs: &[Run], seed: u64) -> Summary {
    let conn = rusqlite::Connection::open(db).unwrap();
    let stored = read_events(&conn);
    let pruned_through: i64 = conn
        .query_row(
            "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM store_meta WHERE key = 'pruned_through'), 0)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut summary = Summary {
        stored: stored.by_id.len(),
        ..Summary::default()
    };

    // What the plain handler saw, over every run; within a run each stream in order.
    let mut seen = HashSet::new();
    for (run_index, run) in runs.iter().enumerate() {
        let mut last: HashMap<String, i64> = HashMap::new();
        for line in complete_lines(&run.handled) {
            let mut parts = line.split(' ');
            let (Some(run_id), Some(stream), Some(version), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed handled line {line:?}");
            };
            assert_eq!(run_id, run_index.to_string(), "line {line:?}");
            let version: i64 = version.parse().unwrap();
            if let Some(previous) = last.insert(stream.to_owned(), version) {
                assert!(
                    version > previous,
                    "run {run_index} handled {stream} v{version} after v{previous} (seed {seed})"
                );
            }
            summary.handled += 1;
            if !seen.insert((stream.to_owned(), version)) {
                summary.replays += 1;
            }
        }
    }

    // 1. Every acknowledged event is stored exactly once where its receipt said, or was
    //    deleted by retention after every subscription processed it. Positions only grow from
    //    one run to the next (never reused after retention).
    let mut before = 0;
    for (run_index, run) in runs.iter().enumerate() {
        let lines = complete_lines(&run.acked);
        summary.acked_per_run.push(lines.len());
        let mut newest = before;
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            let [id, position, stream, version] = fields[..] else {
                panic!("malformed acked line {line:?}");
            };
            let id = uuid::Uuid::parse_str(id).unwrap();
            let position: i64 = position.parse().unwrap();
            let version: i64 = version.parse().unwrap();
            assert!(
                position > before,
                "run {run_index} acknowledged position {position}, not past the previous runs' {before} (seed {seed})"
            );
            newest = newest.max(position);
            match stored.by_id.get(id.as_bytes()) {
                Some((n, p, s, v)) => {
                    assert_eq!(*n, 1, "acknowledged event {id} stored once (seed {seed})");
                    assert_eq!(
                        (*p, s.as_str(), *v),
                        (position, stream, version),
                        "acknowledged event {id} is where its receipt said (seed {seed})"
                    );
                }
                None => {
                    assert!(
                        position <= pruned_through,
                        "acknowledged event {id} at {position} is lost (retention only reached {pruned_through}; seed {seed})"
                    );
                    assert!(
                        seen.contains(&(stream.to_owned(), version)),
                        "acknowledged event {id} was deleted before the plain handler saw it (seed {seed})"
                    );
                    summary.pruned += 1;
                }
            }
            summary.acked += 1;
        }
        before = newest;
    }
    assert!(summary.acked > 0, "the workers acknowledged events");

    // 2. The plain handler saw every stored event.
    let mut missed: Vec<_> = stored.all.difference(&seen).collect();
    missed.sort();
    assert!(
        missed.is_empty(),
        "the plain handler never handled {} stored event(s), e.g. {:?} (seed {seed})",
        missed.len(),
        &missed[..missed.len().min(5)]
    );

    // 3. The projection applied each event exactly once: as many as the stream has versions.
    let mut stmt = conn
        .prepare("SELECT stream, applied FROM crash_counts ORDER BY stream")
        .unwrap();
    let applied: BTreeMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        applied, stored.newest,
        "projection applied each event exactly once (seed {seed})"
    );

    // 4. Drained: every subscription's checkpoint at the head.
    drop(stmt);
    drop(conn);
    for h in Store::open(db).unwrap().summary().unwrap().handlers {
        assert_eq!(
            h.lag, 0,
            "lag of `{}` after the draining run (seed {seed})",
            h.name
        );
    }
    summary
}
