//! What the benchmarks measure with, and the baselines they compare the bus against. Both
//! `actorbus bench` (src/cli/bench.rs) and benches/ use these, so that they measure the same
//! thing: [`BenchEvent`], the counting subscriptions of [`counting_bus`], and how publishers
//! share the events ([`publisher_share`], [`BenchEvent::of_publisher`]).
//!
//! [`raw_actix_send`]: plain actix message passing with bounded mailboxes (`actorbus bench
//! --mode memory`, `benches/pipeline.rs`); [`raw_actix_do_send`]: unbounded fan-out, the
//! ceiling of actix messaging. The raw-SQLite baselines of `actorbus bench --mode sqlite` and
//! `benches/storage.rs`, with no actors: the rows the bus writes into the same tables,
//! indexed the same way ([`StreamIndex::Bulk`]); or the same event rows into one table with
//! a UNIQUE (stream, version) index, as a store built by hand would ([`StreamIndex::PerEvent`]).
//! Not part of the API.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::actors::router::CHECKPOINT_FLUSH;
use crate::storage::sql::sqlite::queries::INDEXED_THROUGH;
use crate::storage::sql::sqlite::writer::INDEX_TAIL_SQL;
use crate::storage::Durability;
use crate::{
    BusBuilder, DomainEvent, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions,
};

/// The benchmarks' event: a stream and a sequence number.
#[derive(Debug, Serialize, Deserialize)]
pub struct BenchEvent {
    /// The stream, by number.
    pub stream: u64,
    /// Unique among the events of one run.
    pub seq: u64,
}

impl DomainEvent for BenchEvent {
    const EVENT_TYPE: &'static str = "bench.event";
    fn stream_id(&self) -> String {
        self.stream.to_string()
    }
}

impl BenchEvent {
    /// The `seq`-th event of a single publisher: streams in turn.
    pub fn nth(seq: u64, streams: u64) -> Self {
        Self {
            stream: seq % streams,
            seq,
        }
    }

    /// The `i`-th event of publisher `p` of several: the publishers' streams spread apart
    /// (a prime stride), their seqs distinct.
    pub fn of_publisher(p: u64, i: u64, streams: u64) -> Self {
        Self {
            stream: (p * 7919 + i) % streams,
            seq: p + i * 1_000_000,
        }
    }
}

/// How many of `events` publisher `p` of `publishers` publishes: an equal share, one more
/// for each of the first `events % publishers`.
pub fn publisher_share(events: u64, publishers: u64, p: u64) -> u64 {
    events / publishers + u64::from(p < events % publishers)
}

/// The benchmarks' subscriptions: each a handler that counts the events it handled.
#[derive(Debug, Clone, Copy)]
pub struct Subscriptions {
    /// How many, named `bench-0`, `bench-1`, ...
    pub handlers: usize,
    /// The options of each.
    pub options: HandlerOptions,
    /// Busy work per event in each handler.
    pub work: Duration,
    /// Share of attempts at which the first subscription fails (transiently: a retry may
    /// succeed); the others never fail.
    pub first_fail_rate: f64,
}

impl Subscriptions {
    /// `handlers` subscriptions with default options that only count.
    pub fn counting(handlers: usize) -> Self {
        Self {
            handlers,
            options: HandlerOptions::new(),
            work: Duration::ZERO,
            first_fail_rate: 0.0,
        }
    }
}

/// A bus from `builder` with `subscriptions`; the counters tell what each handled.
///
/// # Errors
/// The bus does not build.
pub fn counting_bus(
    mut builder: BusBuilder,
    subscriptions: &Subscriptions,
) -> crate::Result<(EventBus, Vec<Arc<AtomicU64>>)> {
    let seen: Vec<Arc<AtomicU64>> = (0..subscriptions.handlers)
        .map(|_| Arc::default())
        .collect();
    for (i, counter) in seen.iter().enumerate() {
        let counter = Arc::clone(counter);
        let work = subscriptions.work;
        let fail_rate = if i == 0 {
            subscriptions.first_fail_rate
        } else {
            0.0
        };
        builder = builder.handler_with(&format!("bench-{i}"), subscriptions.options, move || {
            Counting {
                seen: Arc::clone(&counter),
                work,
                fail_rate,
            }
        });
    }
    Ok((builder.build()?, seen))
}

/// Whether every counter of [`counting_bus`] reached `events`.
///
/// # Errors
/// The first handler that saw fewer (or more), and how many it saw.
pub fn check_all_seen(seen: &[Arc<AtomicU64>], events: u64) -> Result<(), String> {
    for (i, c) in seen.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n != events {
            return Err(format!("handler {i} saw {n} of {events} events"));
        }
    }
    Ok(())
}

/// Counts the events it handled, after `work` of busy work on each; fails `fail_rate` of
/// its attempts.
struct Counting {
    seen: Arc<AtomicU64>,
    work: Duration,
    fail_rate: f64,
}

impl EventHandler<BenchEvent> for Counting {
    async fn handle(&mut self, _e: &Envelope<BenchEvent>) -> Result<(), HandlerError> {
        if !self.work.is_zero() {
            spin(self.work);
        }
        if self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate {
            return Err("bench: a transient failure".into());
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Keeps the thread busy for `d`, as a handler doing real work would.
fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// How the baseline finds a stream's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamIndex {
    /// The store's schema (created by the bus beforehand): `stream_events` filled from the
    /// tail as often as the bus's writer does it.
    Bulk,
    /// A fresh file: `events` with a UNIQUE (stream_id, stream_version) index, kept by every
    /// insert.
    PerEvent,
}

/// The events table with its stream index kept by every insert.
const PER_EVENT_INDEX_SCHEMA: &str = "CREATE TABLE events (
    position INTEGER PRIMARY KEY NOT NULL, event_id BLOB NOT NULL UNIQUE,
    stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL, payload TEXT NOT NULL, metadata TEXT,
    recorded_at BIGINT NOT NULL, UNIQUE (stream_id, stream_version));";

/// What the baseline writes.
#[derive(Debug, Clone, Copy)]
pub struct RawInserts {
    /// Events to insert.
    pub events: u64,
    /// Streams the events are spread over, round robin (as the bench's publishers do).
    pub streams: u64,
    /// Rows per transaction.
    pub batch: u64,
    /// `synchronous` of every commit.
    pub durability: Durability,
    /// The event type stored in every row.
    pub event_type: &'static str,
    /// How streams are indexed.
    pub index: StreamIndex,
}

/// Writes `spec.events` rows into the database at `path`: one cached prepared INSERT,
/// `spec.batch` rows per transaction, streams indexed as `spec.index` says (for
/// [`StreamIndex::Bulk`] the bus must have created the store). Returns the time taken.
///
/// # Errors
/// Any SQLite error.
pub fn raw_sqlite_inserts(path: &Path, spec: &RawInserts) -> Result<Duration, rusqlite::Error> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -16000; PRAGMA wal_autocheckpoint = 8192;",
        spec.durability.pragma()
    ))?;
    if spec.index == StreamIndex::PerEvent {
        conn.execute_batch(PER_EVENT_INDEX_SCHEMA)?;
    }
    let mut versions = vec![0i64; spec.streams.max(1) as usize];
    let start = Instant::now();
    let mut indexed_at = Instant::now();
    let (mut position, mut indexed) = (0i64, 0i64);
    let events = spec.events as i64;
    while position < events {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
                 schema_version, payload, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            for _ in 0..(spec.batch.max(1) as i64).min(events - position) {
                position += 1;
                let stream = (position as u64 * 7919) % spec.streams.max(1);
                versions[stream as usize] += 1;
                let payload = format!(r#"{{"stream":{stream},"seq":{position}}}"#);
                insert.execute(rusqlite::params![
                    position,
                    crate::event::new_event_id(SystemTime::now())
                        .as_bytes()
                        .as_slice(),
                    stream.to_string(),
                    versions[stream as usize],
                    spec.event_type,
                    1,
                    payload,
                    Option::<String>::None,
                    position,
                ])?;
            }
        }
        tx.commit()?;
        if spec.index == StreamIndex::Bulk
            && (indexed_at.elapsed() >= CHECKPOINT_FLUSH || position == events)
        {
            let tx = conn.transaction()?;
            tx.execute(INDEX_TAIL_SQL, rusqlite::params![indexed, position])?;
            tx.execute(
                "REPLACE INTO store_meta (key, value) VALUES (?, ?)",
                [INDEXED_THROUGH, &position.to_string()],
            )?;
            tx.commit()?;
            indexed = position;
            indexed_at = Instant::now();
        }
    }
    Ok(start.elapsed())
}

/// Writes `spec.events` rows into the PostgreSQL database at `url` (empty, or an actorbus
/// store): the store's own tables (its migrations), the store's multi-row INSERT,
/// `spec.batch` rows per transaction, the stream index filled from the tail as often as the
/// bus's writer does it; no actors, no advisory lock. Returns the time taken.
///
/// # Errors
/// Any connection, migration or database error.
#[cfg(feature = "postgres")]
pub fn raw_postgres_inserts(
    url: &str,
    spec: &RawInserts,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    use crate::storage::models::NewStoredEvent;
    use crate::storage::sql::postgres::queries::{set_meta_number, INDEXED_THROUGH};
    use crate::storage::sql::postgres::writer::INDEX_TAIL_SQL;
    use crate::storage::sql::Dialect;
    use diesel::prelude::*;
    use diesel_migrations::MigrationHarness;

    let mut conn = diesel::PgConnection::establish(url)?;
    conn.run_pending_migrations(crate::storage::postgres::MIGRATIONS)?;
    let streams = spec.streams.max(1);
    let mut versions = vec![0i64; streams as usize];
    let start = Instant::now();
    let mut indexed_at = Instant::now();
    let (mut position, mut indexed) = (0i64, 0i64);
    let events = spec.events as i64;
    while position < events {
        let n = (spec.batch.max(1) as i64).min(events - position);
        let owned: Vec<(i64, uuid::Uuid, String, i64, String)> = (0..n)
            .map(|k| {
                let p = position + 1 + k;
                let stream = (p as u64 * 7919) % streams;
                versions[stream as usize] += 1;
                (
                    p,
                    crate::event::new_event_id(SystemTime::now()),
                    stream.to_string(),
                    versions[stream as usize],
                    format!(r#"{{"stream":{stream},"seq":{p}}}"#),
                )
            })
            .collect();
        let rows: Vec<NewStoredEvent<'_>> = owned
            .iter()
            .map(|(p, id, stream, version, payload)| NewStoredEvent {
                position: *p,
                event_id: id.as_bytes(),
                stream_id: stream,
                stream_version: *version,
                event_type: spec.event_type,
                schema_version: 1,
                payload,
                metadata: None,
                recorded_at: *p,
            })
            .collect();
        conn.transaction(|c| c.insert_events(&rows))?;
        position += n;
        if indexed_at.elapsed() >= CHECKPOINT_FLUSH || position == events {
            conn.transaction(|c| {
                diesel::sql_query(INDEX_TAIL_SQL)
                    .bind::<diesel::sql_types::BigInt, _>(indexed)
                    .bind::<diesel::sql_types::BigInt, _>(position)
                    .execute(c)?;
                set_meta_number(c, INDEXED_THROUGH, position)
            })?;
            indexed = position;
            indexed_at = Instant::now();
        }
    }
    Ok(start.elapsed())
}

/// A plain actix actor that counts what it receives.
struct Sink(u64);

impl Actor for Sink {
    type Context = Context<Self>;
}

/// One event, shared by every actor as a bus shares its record.
struct Msg(#[allow(dead_code)] Arc<[u64; 2]>);

impl Message for Msg {
    type Result = ();
}

impl Handler<Msg> for Sink {
    type Result = ();
    fn handle(&mut self, _msg: Msg, _ctx: &mut Context<Self>) {
        self.0 += 1;
    }
}

/// Raw actix message passing: one sender, `actors` actors with mailboxes of `in_flight`,
/// `send` with at most `in_flight` requests outstanding; an event is done once every actor
/// handled it. Returns the time until every request resolved. Run inside an actix system.
///
/// # Errors
/// An actor that stopped ([`MailboxError`]).
pub async fn raw_actix_send(
    events: u64,
    actors: usize,
    in_flight: usize,
) -> Result<Duration, MailboxError> {
    let in_flight = in_flight.max(1);
    let sinks: Vec<Addr<Sink>> = (0..actors)
        .map(|_| {
            Sink::create(|ctx| {
                ctx.set_mailbox_capacity(in_flight);
                Sink(0)
            })
        })
        .collect();
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    for seq in 0..events {
        let event = Arc::new([seq, seq]);
        for sink in &sinks {
            pending.push(sink.send(Msg(Arc::clone(&event))));
        }
        while pending.len() >= in_flight {
            pending.next().await.transpose()?;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(start.elapsed())
}

/// Counts what it receives and says when it has had `until`.
struct CountingSink {
    seen: u64,
    until: u64,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Actor for CountingSink {
    type Context = Context<Self>;
}

impl Handler<Msg> for CountingSink {
    type Result = ();
    fn handle(&mut self, _msg: Msg, _ctx: &mut Context<Self>) {
        self.seen += 1;
        if self.seen == self.until {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// Raw actix fan-out with no backpressure, the ceiling of actix message passing: one sender
/// `do_send`s every event to each of `actors` actors with unbounded mailboxes, spread over
/// `threads` arbiters of their own (as the bus spreads its handler actors over its handler
/// threads); an event is done once every actor handled it. Returns the time until the last
/// actor handled the last event. Its memory grows with the events not yet handled: it is a
/// measure of speed, not of a way to run. Run inside an actix system.
///
/// # Errors
/// An actor stopped before it handled every event.
pub async fn raw_actix_do_send(
    events: u64,
    actors: usize,
    threads: usize,
) -> Result<Duration, MailboxError> {
    let arbiters: Vec<actix_rt::Arbiter> = (0..threads.max(1))
        .map(|_| actix_rt::Arbiter::new())
        .collect();
    let mut done = Vec::with_capacity(actors);
    let sinks: Vec<Addr<CountingSink>> = (0..actors)
        .map(|a| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            let sink = CountingSink {
                seen: 0,
                until: events,
                done: Some(tx),
            };
            // `do_send` queues whatever the mailbox's capacity: it never waits for room.
            CountingSink::start_in_arbiter(&arbiters[a % arbiters.len()].handle(), move |_| sink)
        })
        .collect();
    let start = Instant::now();
    for seq in 0..events {
        let event = Arc::new([seq, seq]);
        for sink in &sinks {
            sink.do_send(Msg(Arc::clone(&event)));
        }
    }
    for rx in done {
        if events > 0 {
            rx.await.map_err(|_| MailboxError::Closed)?;
        }
    }
    let took = start.elapsed();
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    Ok(took)
}
