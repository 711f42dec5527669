//! Throughput of the SQLite-backed bus (64 publishers each awaiting its commit, 4 counting
//! handlers, timed until `shutdown` has drained and written the checkpoints) beside raw
//! rusqlite writing the same rows into the same schema (`actorbus::baseline`), and the same
//! event rows into one table whose UNIQUE (stream, version) index every insert keeps: one
//! prepared INSERT, transactions of 1000, WAL and `synchronous=NORMAL`. The same measurement
//! as `actorbus bench --mode sqlite` (src/cli/bench.rs), with the same event, handlers and
//! publishers (`actorbus::baseline`).
//!
//! `cargo bench --bench storage`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::baseline::{
    check_all_seen, counting_bus, publisher_share, BenchEvent, StreamIndex, Subscriptions,
};
use actorbus::{DomainEvent, EventBus};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const EVENTS: u64 = 20_000;
const PUBLISHERS: u64 = 64;
const STREAMS: u64 = 1000;
const HANDLERS: usize = 4;
/// Rows per transaction of the raw baseline.
const BATCH: u64 = 1000;

/// Publishes `EVENTS` from `PUBLISHERS` concurrent tasks into a fresh store at `db`; returns
/// the time from the first publish until every event is handled and checkpointed.
async fn actorbus_sqlite(db: &Path) -> Duration {
    let (bus, seen) = counting_bus(
        EventBus::builder().sqlite(db),
        &Subscriptions::counting(HANDLERS),
    )
    .expect("bus builds");

    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            let n = publisher_share(EVENTS, PUBLISHERS, p);
            actix_rt::spawn(async move {
                for i in 0..n {
                    bus.publish(BenchEvent::of_publisher(p, i, STREAMS))
                        .await
                        .expect("the store accepts the event");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher finished");
    }
    bus.shutdown(Duration::from_secs(600))
        .await
        .expect("bus drains");
    let elapsed = start.elapsed();

    check_all_seen(&seen, EVENTS).expect("every handler saw every event");
    elapsed
}

/// Creates the store's schema at `db` the way the bus does, so both runs write the same
/// tables and indexes. Not timed.
fn create_schema(db: &Path) {
    System::new().block_on(async {
        let bus = EventBus::builder().sqlite(db).build().expect("store opens");
        bus.shutdown(Duration::from_secs(10))
            .await
            .expect("bus drains");
    });
}

/// A baseline ([`actorbus::baseline`]), `BATCH` rows per transaction: the same rows into the
/// same schema (`Bulk`), or into one table with a per-insert stream index (`PerEvent`);
/// returns the time to write them all.
fn raw_rusqlite(db: &Path, index: StreamIndex) -> Duration {
    let took = actorbus::baseline::raw_sqlite_inserts(
        db,
        &actorbus::baseline::RawInserts {
            events: EVENTS,
            streams: STREAMS,
            batch: BATCH,
            durability: actorbus::Durability::Normal,
            event_type: BenchEvent::EVENT_TYPE,
            index,
        },
    )
    .expect("raw inserts succeed");
    let conn = rusqlite::Connection::open(db).expect("rusqlite opens the store");
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("rows count");
    assert_eq!(stored as u64, EVENTS, "every row stored");
    took
}

/// A path for a new store in a fresh directory, deleted with the directory.
fn fresh_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    (dir, db)
}

fn storage(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage");
    group
        .throughput(Throughput::Elements(EVENTS))
        // Iterations take tens to hundreds of milliseconds: flat sampling, 10 samples.
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    group.bench_function("actorbus_sqlite", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    // A fresh store and a fresh system per iteration, both made outside the
                    // timed part.
                    let (_dir, db) = fresh_db();
                    let system = System::new();
                    system.block_on(actorbus_sqlite(&db))
                })
                .sum()
        })
    });
    group.bench_function("raw_rusqlite", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (_dir, db) = fresh_db();
                    create_schema(&db);
                    raw_rusqlite(&db, StreamIndex::Bulk)
                })
                .sum()
        })
    });
    group.bench_function("raw_rusqlite_per_event_index", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (_dir, db) = fresh_db();
                    raw_rusqlite(&db, StreamIndex::PerEvent)
                })
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, storage);
criterion_main!(benches);
