//! Crash safety: a worker process publishes and handles events on a SQLite bus and is killed
//! with SIGKILL at random points; every acknowledged event must survive, handlers must resume
//! in per-stream order, and a transactional projection must apply each event exactly once.
//!
//! The worker is this test binary run again (`crash_worker`, selected by an environment
//! variable), so that no extra binary is needed.

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
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

const WORKER: &str = "ACTORBUS_CRASH_WORKER";
const DB: &str = "ACTORBUS_CRASH_DB";
const DRAIN: &str = "ACTORBUS_CRASH_DRAIN";
const RUN_ID: &str = "ACTORBUS_CRASH_RUN";
const ACKED: &str = "ACTORBUS_CRASH_ACKED";
const HANDLED: &str = "ACTORBUS_CRASH_HANDLED";

/// Runs killed with SIGKILL before the final, draining one.
const KILLED_RUNS: usize = 4;
const PUBLISHERS: usize = 8;
const STREAMS: u32 = 16;
/// Bounds a worker's progress; only reached when the test is already failing.
const RUN_DEADLINE: Duration = Duration::from_secs(10);

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
                    match bus.publish(event).await {
                        Ok(receipt) => append_line(&mut acked, &format!("{}\n", receipt.id)),
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
    acked: usize,
    acked_per_run: Vec<usize>,
    handled: usize,
    replays: usize,
}

#[test]
fn acknowledged_events_survive_sigkill_and_handlers_resume_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut runs = Vec::new();

    for run in 0..KILLED_RUNS {
        let target = rng.usize(50..400);
        let (mut child, paths) = spawn_worker(dir.path(), &db, run, false);
        let deadline = Instant::now() + RUN_DEADLINE;
        while count_complete_lines(&paths.acked) < target {
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
                    "worker {run} acknowledged fewer than {target} events in {RUN_DEADLINE:?} (seed {seed}):\n{}",
                    worker_output(&paths)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL the worker");
        child.wait().unwrap();
        runs.push(paths);
    }

    let (mut child, paths) = spawn_worker(dir.path(), &db, KILLED_RUNS, true);
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

    let summary = check_store(&db, &runs, seed);
    println!(
        "crash test (seed {seed}): {} runs ({KILLED_RUNS} killed), {} events stored, {} acked {:?}, \
         {} handled by the plain handler, {} replays",
        runs.len(),
        summary.stored,
        summary.acked,
        summary.acked_per_run,
        summary.handled,
        summary.replays
    );
}

/// The stored events: how often each id occurs, and the versions of each stream.
struct Stored {
    by_id: HashMap<[u8; 16], usize>,
    versions: BTreeMap<String, Vec<i64>>,
}

fn read_events(conn: &rusqlite::Connection) -> (Stored, Vec<i64>) {
    let mut stmt = conn
        .prepare(
            "SELECT position, event_id, stream_id, stream_version FROM events ORDER BY position",
        )
        .unwrap();
    let mut stored = Stored {
        by_id: HashMap::new(),
        versions: BTreeMap::new(),
    };
    let mut positions = Vec::new();
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
        *stored.by_id.entry(id).or_default() += 1;
        stored.versions.entry(stream).or_default().push(version);
        positions.push(position);
    }
    (stored, positions)
}

fn check_store(db: &Path, runs: &[Run], seed: u64) -> Summary {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (stored, positions) = read_events(&conn);
    let total = positions.len();
    let mut summary = Summary {
        stored: total,
        ..Summary::default()
    };

    // 1. Every acknowledged event is stored exactly once; ids are unique.
    assert_eq!(
        stored.by_id.len(),
        total,
        "event ids are unique (seed {seed})"
    );
    for run in runs {
        let lines = complete_lines(&run.acked);
        summary.acked_per_run.push(lines.len());
        for line in lines {
            let id =
                uuid::Uuid::parse_str(&line).unwrap_or_else(|e| panic!("acked line {line:?}: {e}"));
            assert_eq!(
                stored.by_id.get(id.as_bytes()).copied(),
                Some(1),
                "acknowledged event {id} is stored exactly once (seed {seed})"
            );
            summary.acked += 1;
        }
    }
    assert!(summary.acked > 0, "the workers acknowledged events");

    // 2. Positions are 1..=total and each stream's versions are 1..=n.
    assert_eq!(
        positions,
        (1..=total as i64).collect::<Vec<_>>(),
        "positions are contiguous (seed {seed})"
    );
    for (stream, versions) in &stored.versions {
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=versions.len() as i64).collect::<Vec<_>>(),
            "versions of {stream} are contiguous (seed {seed})"
        );
    }

    // 3. The plain handler saw every stored event, and within a run each stream in order.
    let all: HashSet<(String, i64)> = stored
        .versions
        .iter()
        .flat_map(|(s, vs)| vs.iter().map(move |v| (s.clone(), *v)))
        .collect();
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
            let key = (stream.to_owned(), version);
            assert!(
                all.contains(&key),
                "run {run_index} handled {stream} v{version}, which is not stored (seed {seed})"
            );
            if let Some(previous) = last.insert(stream.to_owned(), version) {
                assert!(
                    version > previous,
                    "run {run_index} handled {stream} v{version} after v{previous} (seed {seed})"
                );
            }
            summary.handled += 1;
            if !seen.insert(key) {
                summary.replays += 1;
            }
        }
    }
    let mut missed: Vec<_> = all.difference(&seen).collect();
    missed.sort();
    assert!(
        missed.is_empty(),
        "the plain handler never handled {} stored event(s), e.g. {:?} (seed {seed})",
        missed.len(),
        &missed[..missed.len().min(5)]
    );

    // 4. The projection applied each stored event exactly once.
    let mut stmt = conn
        .prepare("SELECT stream, applied FROM crash_counts ORDER BY stream")
        .unwrap();
    let applied: BTreeMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected: BTreeMap<String, i64> = stored
        .versions
        .iter()
        .map(|(s, vs)| (s.clone(), vs.len() as i64))
        .collect();
    assert_eq!(
        applied, expected,
        "projection applied each event exactly once (seed {seed})"
    );
    summary
}
