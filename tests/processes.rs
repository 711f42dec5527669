//! Several OS processes on one PostgreSQL store (feature `postgres`): they share the
//! subscriptions' partitions, any of them publishes, and when one is killed with SIGKILL
//! mid-load, or stalls past its lease (SIGSTOP, then SIGCONT), the others take its
//! partitions over, with nothing lost and no projection effect applied twice. The processes
//! are this test binary again, run as `worker` (see below).

#![cfg(feature = "postgres")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actorbus::{EventBus, HandlerOptions, PostgresOptions, StoreConfig};
use common::postgres::PgDatabase;
use common::{placed, Applied, APPLIED_DDL};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

/// The lease of every bus here: a killed process's partitions move within about this.
const LEASE: Duration = Duration::from_millis(1500);
/// Events each worker publishes.
const EVENTS: u64 = 400;
/// Partitions of the projection.
const PARTITIONS: usize = 6;

fn options(url: &str) -> StoreConfig {
    let mut options = PostgresOptions::new(url);
    options.lease = LEASE;
    StoreConfig::Postgres(options)
}

/// Not a test of its own: the body of a worker process, when `ACTORBUS_WORKER_DB` is set.
/// It runs the `applied` projection, publishes `EVENTS` events (printing `acked <position>`
/// for each), prints `published`, and shuts down cleanly when its stdin closes.
#[actix::test]
async fn worker() {
    let (Ok(url), Ok(id)) = (
        std::env::var("ACTORBUS_WORKER_DB"),
        std::env::var("ACTORBUS_WORKER_ID"),
    ) else {
        return;
    };
    let id: u64 = id.parse().unwrap();
    let bus = EventBus::builder()
        .store(options(&url))
        .projection(
            "applied",
            HandlerOptions::new().concurrency(PARTITIONS),
            || Applied,
        )
        .build()
        .unwrap();
    // `go` on stdin starts the load; stdin closing shuts the bus down.
    let (go_tx, go) = tokio::sync::oneshot::channel();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            let _ = go_tx.send(());
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
        }
        let _ = closed_tx.send(());
    });
    let _ = go.await;
    let mut out = std::io::stdout();
    for i in 0..EVENTS {
        // Streams shared by every worker: their events interleave in the log.
        let receipt = bus
            .publish(placed(i % 5, id * 1_000_000 + i))
            .await
            .unwrap();
        writeln!(out, "acked {}", receipt.position.unwrap()).unwrap();
        if i % 50 == 0 {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }
    writeln!(out, "published").unwrap();
    out.flush().unwrap();
    // Wait for stdin to close (or the kill), handling the share this process owns.
    let _ = closed.await;
    bus.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// A worker process, and the lines it printed.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(url: &str, id: u64) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["worker", "--exact", "--nocapture", "--test-threads", "1"])
            .env("ACTORBUS_WORKER_DB", url)
            .env("ACTORBUS_WORKER_ID", id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Starts its load.
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Collects the positions it acknowledged, until `until` is printed (or it exits).
    fn read_acks(&self, acked: &mut BTreeSet<i64>, until: &str, deadline: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line == until => return true,
                Ok(line) => {
                    if let Some(p) = line.strip_prefix("acked ") {
                        acked.insert(p.parse().unwrap());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    }
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn number(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(conn).unwrap().n
}

/// Waits (30 s at most) until three members own partitions.
fn three_own_a_share(conn: &mut PgConnection) {
    let start = Instant::now();
    while number(
        conn,
        "SELECT count(DISTINCT member) AS n FROM partition_owners WHERE member IS NOT NULL",
    ) < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the partitions spread over three live processes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    position: i64,
    #[diesel(sql_type = Text)]
    stream: String,
}

#[actix::test]
async fn three_processes_share_the_work_and_a_killed_one_loses_nothing() {
    if std::env::var("ACTORBUS_WORKER_DB").is_ok() {
        return; // a worker runs only `worker`
    }
    let Some(db) = PgDatabase::fresh() else {
        return;
    };
    // The store and the read model, with the order the rows were applied in.
    let bus = EventBus::builder().store(options(&db.url)).build().unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    let mut conn = db.connect();
    conn.batch_execute(APPLIED_DDL).unwrap();
    conn.batch_execute("ALTER TABLE applied ADD COLUMN applied_order BIGSERIAL")
        .unwrap();

    let mut acked = BTreeSet::new();
    let mut workers: Vec<Worker> = (0..3).map(|id| Worker::spawn(&db.url, id)).collect();
    // The load starts once each of the three owns a share, so the one killed is an owner.
    three_own_a_share(&mut conn);
    workers.iter_mut().for_each(Worker::go);
    // Mid-load: once the first worker has 100 acknowledgements, kill it outright.
    let mut victim = workers.remove(0);
    let mut victim_acks = BTreeSet::new();
    let start = Instant::now();
    while victim_acks.len() < 100 {
        let finished = victim.read_acks(&mut victim_acks, "published", Duration::from_millis(100));
        assert!(
            !finished,
            "the victim published everything before it was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the victim publishes"
        );
    }
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        id: String,
    }
    let victim_member = diesel::sql_query("SELECT id FROM bus_members WHERE label = $1")
        .bind::<Text, _>(format!("process {}", victim.child.id()))
        .get_result::<Id>(&mut conn)
        .unwrap()
        .id;
    let owned_by = |conn: &mut PgConnection, member: &str| {
        diesel::sql_query("SELECT count(*) AS n FROM partition_owners WHERE member = $1")
            .bind::<Text, _>(member)
            .get_result::<N>(conn)
            .unwrap()
            .n
    };
    assert!(
        owned_by(&mut conn, &victim_member) > 0,
        "the victim owned a share of the partitions"
    );
    let killed_at = Instant::now();
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    while owned_by(&mut conn, &victim_member) > 0 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the killed process's partitions were taken over"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let handed_over = killed_at.elapsed();
    // What it printed before dying was acknowledged.
    victim.read_acks(&mut victim_acks, "never", Duration::from_millis(300));
    acked.extend(&victim_acks);
    // Restarted, it publishes its events again (new ids: a new run of the application).
    workers.push(Worker::spawn(&db.url, 3));
    workers.last_mut().unwrap().go();
    // A process that stalls past its lease (SIGSTOP) loses its partitions; when it comes
    // back (SIGCONT) whatever it still had in hand is fenced off: it cannot apply it twice.
    let stalled = workers[0].child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &stalled])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    std::thread::sleep(LEASE * 3);
    signal("-CONT");
    for w in &workers {
        assert!(
            w.read_acks(&mut acked, "published", Duration::from_secs(120)),
            "every worker publishes all its events"
        );
    }

    // Every stored event is applied once; the killed process's partitions were taken over.
    let stored = number(&mut conn, "SELECT count(*) AS n FROM events");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = number(
            &mut conn,
            "SELECT count(DISTINCT position) AS n FROM applied",
        );
        if applied == stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {applied} of {stored} stored events were applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed_after = killed_at.elapsed();
    assert_eq!(
        number(&mut conn, "SELECT count(*) AS n FROM applied"),
        stored,
        "no projection effect applied twice"
    );
    let applied: BTreeSet<i64> =
        diesel::sql_query("SELECT position::bigint AS position, stream FROM applied")
            .load::<Row>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|r| r.position)
            .collect();
    let lost: Vec<_> = acked.difference(&applied).collect();
    assert!(lost.is_empty(), "acknowledged but never applied: {lost:?}");
    assert!(stored as u64 >= 3 * EVENTS + 100);

    // Per-stream order: within each stream, rows were applied in position order.
    let rows = diesel::sql_query(
        "SELECT position::bigint AS position, stream FROM applied ORDER BY applied_order",
    )
    .load::<Row>(&mut conn)
    .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for row in rows {
        if let Some(before) = last.insert(row.stream.clone(), row.position) {
            assert!(
                before < row.position,
                "{}: {} applied after {before}",
                row.stream,
                row.position
            );
        }
    }

    // Three live processes: each owns a share (two partitions each, within a few beats).
    let spread = Instant::now();
    three_own_a_share(&mut conn);

    // Operators see the same through Store::running (a partition may be between owners
    // for a moment: a beat).
    let store = actorbus::Store::open_url(&db.url).unwrap();
    loop {
        let running = store.running().unwrap();
        let owned: u64 = running.iter().filter_map(|r| r.partitions).sum();
        if running.len() == 3 && owned == PARTITIONS as u64 {
            break;
        }
        assert!(spread.elapsed() < Duration::from_secs(30), "{running:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The survivors shut down cleanly and leave no claim behind.
    for mut w in workers {
        drop(w.child.stdin.take());
        assert!(w.child.wait().unwrap().success());
    }
    assert_eq!(
        number(
            &mut conn,
            "SELECT count(*) AS n FROM partition_owners WHERE member IS NOT NULL"
        ),
        0
    );
    // The log's invariants hold, as `actorbus check` verifies them.
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    assert_eq!(store.running_bus().unwrap(), None);
    eprintln!(
        "figures: {stored} events stored, {} acknowledged; the killed process's partitions \
         claimed by others {:.2} s after the SIGKILL (lease {:.1} s); all applied {:.2} s after it",
        acked.len(),
        handed_over.as_secs_f64(),
        LEASE.as_secs_f64(),
        resumed_after.as_secs_f64()
    );
}
