//! Shared fixtures of the integration tests: a store in a temporary directory, the domain
//! events more than one test file publishes, handlers that record, fail, panic or wait at a
//! gate, and fast retry and restart policies.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::{
    Backoff, DomainEvent, Envelope, EventBus, EventHandler, HandlerError, RestartPolicy,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

#[cfg(feature = "postgres")]
pub mod postgres;

/// Generous bound for a drain: only reached when the test is already failing.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A store's path in a fresh temporary directory; dropping it deletes the directory and
/// everything in it. The store itself is not created: the path is where a test, a bus or
/// the command creates it. [`TempStore::path`] borrows from the value, so the directory
/// outlives every use of the path.
pub struct TempStore {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempStore {
    /// `bus.db` in a new directory.
    pub fn new() -> Self {
        Self::named("bus.db")
    }

    /// `file` in a new directory: for a test whose store name shows (in output, or in the
    /// names of files derived from it), or whose "store" is some other file.
    pub fn named(file: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(file);
        Self { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, for tests that look at every file in it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Another file in the same directory (not created).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The names of the files in the directory, sorted.
    pub fn file_names(&self) -> Vec<String> {
        file_names(self.dir())
    }
}

/// The names of the files in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

impl Default for TempStore {
    fn default() -> Self {
        Self::new()
    }
}

/// An order was placed: the stream is the order, `seq` orders the events of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: u64,
    pub seq: u64,
}

impl DomainEvent for OrderPlaced {
    const EVENT_TYPE: &'static str = "order.placed";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order)
    }
}

/// A payment was captured: a second event type, on its second schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order: u64,
    pub cents: u64,
}

impl DomainEvent for PaymentCaptured {
    const EVENT_TYPE: &'static str = "payment.captured";
    const SCHEMA_VERSION: u32 = 2;
    fn stream_id(&self) -> String {
        format!("order-{}", self.order)
    }
}

/// Money was deposited into an account: the stream is the account, `seq` orders the
/// deposits of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposited {
    pub account: u32,
    pub seq: u64,
}

impl DomainEvent for Deposited {
    const EVENT_TYPE: &'static str = "account.deposited";
    fn stream_id(&self) -> String {
        format!("account-{}", self.account)
    }
}

/// What a handler saw: (stream id, seq), in the order it handled them.
pub type Log = Arc<Mutex<Vec<(String, u64)>>>;

pub fn new_log() -> Log {
    Arc::default()
}

pub fn entries(log: &Log) -> Vec<(String, u64)> {
    log.lock().unwrap().clone()
}

pub fn seqs(log: &Log) -> Vec<u64> {
    entries(log).into_iter().map(|(_, seq)| seq).collect()
}

fn record(log: &Log, e: &Envelope<OrderPlaced>) {
    log.lock().unwrap().push((e.stream_id().to_owned(), e.seq));
}

pub fn placed(order: u64, seq: u64) -> OrderPlaced {
    OrderPlaced { order, seq }
}

/// Retries at once, up to `attempts` attempts per event.
pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts).backoff(Backoff::none())
}

/// Restarts at once, at most `max_restarts` times a minute.
pub fn fast_restart(max_restarts: u32) -> RestartPolicy {
    RestartPolicy::new(max_restarts, Duration::from_secs(60)).backoff(Backoff::none())
}

/// Drains the bus, failing the test if that does not finish.
pub async fn drain(bus: &EventBus) {
    bus.shutdown(DRAIN).await.expect("the bus drains");
}

/// Records every event it handles.
pub struct RecordingHandler {
    pub log: Log,
}

impl RecordingHandler {
    pub fn factory(log: &Log) -> impl Fn() -> Self + 'static {
        let log = Arc::clone(log);
        move || Self {
            log: Arc::clone(&log),
        }
    }
}

impl EventHandler<OrderPlaced> for RecordingHandler {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        record(&self.log, e);
        Ok(())
    }
}

/// Fails its first `failures_left` attempts, then records and succeeds.
pub struct FailingHandler {
    pub failures_left: u32,
    pub log: Log,
}

impl EventHandler<OrderPlaced> for FailingHandler {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(format!("transient failure on seq {}", e.seq).into());
        }
        record(&self.log, e);
        Ok(())
    }
}

/// Panics while the shared `panics_left` is above zero (shared, because every restart builds
/// a fresh instance), then records and succeeds.
pub struct PanickingHandler {
    pub panics_left: Arc<AtomicU32>,
    pub log: Log,
}

/// A shared count of panics to come; set it to zero to "fix" the handler.
pub fn panics(n: u32) -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(n))
}

impl PanickingHandler {
    pub fn factory(panics_left: &Arc<AtomicU32>, log: &Log) -> impl Fn() -> Self + 'static {
        let panics_left = Arc::clone(panics_left);
        let log = Arc::clone(log);
        move || Self {
            panics_left: Arc::clone(&panics_left),
            log: Arc::clone(&log),
        }
    }
}

impl EventHandler<OrderPlaced> for PanickingHandler {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        // One decrement per panic, even when actors on two handler threads race for the last.
        let took = (self.panics_left).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        });
        if took.is_ok() {
            panic!("handler blew up on seq {}", e.seq);
        }
        record(&self.log, e);
        Ok(())
    }
}

/// A gate that holds every `GateHandler` built from it until it is opened.
pub struct Gate {
    open: watch::Sender<bool>,
    entered_tx: mpsc::UnboundedSender<u64>,
    entered_rx: mpsc::UnboundedReceiver<u64>,
    pub log: Log,
}

impl Gate {
    pub fn closed() -> Self {
        let (open, _) = watch::channel(false);
        let (entered_tx, entered_rx) = mpsc::unbounded_channel();
        Self {
            open,
            entered_tx,
            entered_rx,
            log: new_log(),
        }
    }

    pub fn handler_factory(&self) -> impl Fn() -> GateHandler + 'static {
        let open = self.open.subscribe();
        let entered = self.entered_tx.clone();
        let log = Arc::clone(&self.log);
        move || GateHandler {
            open: open.clone(),
            entered: entered.clone(),
            log: Arc::clone(&log),
        }
    }

    /// Resolves once a handler has reached the gate with an event; returns its seq.
    pub async fn entered(&mut self) -> u64 {
        self.entered_rx
            .recv()
            .await
            .expect("the gate keeps a sender")
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Says it has reached the gate, waits for the gate to open, then records the event.
pub struct GateHandler {
    open: watch::Receiver<bool>,
    entered: mpsc::UnboundedSender<u64>,
    log: Log,
}

impl EventHandler<OrderPlaced> for GateHandler {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let _ = self.entered.send(e.seq);
        self.open.wait_for(|open| *open).await?;
        record(&self.log, e);
        Ok(())
    }
}

/// Polls `cond` every 5 ms, letting the actors and other threads (the writer, another
/// process) run; fails the test if it does not hold within 30 s.
pub async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let step = Duration::from_millis(5);
    for _ in 0..30_000 / step.as_millis() {
        if cond() {
            return;
        }
        actix_rt::time::sleep(step).await;
    }
    panic!("never happened: {what}");
}

/// Yields to the actors until `cond` holds; fails the test after a bounded number of turns.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if cond() {
            return;
        }
        actix_rt::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// A bus on the SQLite store at `path` with one `RecordingHandler` named "recorder".
pub fn recording_sqlite_bus(path: &Path, log: &Log) -> EventBus {
    EventBus::builder()
        .sqlite(path)
        .handler("recorder", RecordingHandler::factory(log))
        .build()
        .expect("the bus builds")
}

/// An in-memory bus with one `RecordingHandler` named "recorder", default options.
pub fn recording_bus(log: &Log) -> EventBus {
    EventBus::builder()
        .handler_with(
            "recorder",
            actorbus::HandlerOptions::new(),
            RecordingHandler::factory(log),
        )
        .build()
        .expect("the bus builds")
}

/// Records every application of an event in the table `applied`: exactly once is one row per
/// event. Its reset empties the table (a rebuild).
pub struct Applied;

/// The `applied` read model's table.
pub const APPLIED_DDL: &str =
    "CREATE TABLE IF NOT EXISTS applied (position INTEGER NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL)";

impl actorbus::Projection<OrderPlaced> for Applied {
    fn apply(
        &mut self,
        e: &Envelope<OrderPlaced>,
        conn: &mut diesel::SqliteConnection,
    ) -> Result<(), HandlerError> {
        use diesel::prelude::*;
        use diesel::sql_types::{BigInt, Text};
        diesel::sql_query("INSERT INTO applied (position, stream, seq) VALUES (?, ?, ?)")
            .bind::<BigInt, _>(e.position().unwrap_or(0) as i64)
            .bind::<Text, _>(e.stream_id())
            .bind::<BigInt, _>(e.seq as i64)
            .execute(conn)?;
        Ok(())
    }

    const RESETTABLE: bool = true;

    fn reset(&mut self, conn: &mut diesel::SqliteConnection) -> Result<(), HandlerError> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("DELETE FROM applied")?;
        Ok(())
    }

    #[cfg(feature = "postgres")]
    const POSTGRES: bool = true;

    #[cfg(feature = "postgres")]
    fn apply_postgres(
        &mut self,
        e: &Envelope<OrderPlaced>,
        conn: &mut diesel::PgConnection,
    ) -> Result<(), HandlerError> {
        use diesel::prelude::*;
        use diesel::sql_types::{BigInt, Text};
        diesel::sql_query("INSERT INTO applied (position, stream, seq) VALUES ($1, $2, $3)")
            .bind::<BigInt, _>(e.position().unwrap_or(0) as i64)
            .bind::<Text, _>(e.stream_id())
            .bind::<BigInt, _>(e.seq as i64)
            .execute(conn)?;
        Ok(())
    }

    #[cfg(feature = "postgres")]
    fn reset_postgres(&mut self, conn: &mut diesel::PgConnection) -> Result<(), HandlerError> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("DELETE FROM applied")?;
        Ok(())
    }
}

/// A new store at `path` with the `applied` read model's table.
pub fn create_with_read_model(path: &Path) {
    use diesel::connection::SimpleConnection;
    let store = actorbus::Store::create(path).unwrap();
    store
        .with_connection(|conn| conn.batch_execute(APPLIED_DDL))
        .unwrap();
}

/// (applications, distinct events applied) of the `applied` read model of the store at `path`.
pub fn applications(path: &Path) -> (i64, i64) {
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        rows: i64,
        #[diesel(sql_type = BigInt)]
        events: i64,
    }
    let c = actorbus::Store::open(path)
        .unwrap()
        .with_connection(|conn| {
            diesel::sql_query(
                "SELECT count(*) AS rows, count(DISTINCT position) AS events FROM applied",
            )
            .get_result::<Counts>(conn)
        })
        .unwrap();
    (c.rows, c.events)
}

/// A plain SQLite connection to the store at `db`, as another program would open it; it
/// waits up to 10 s for another connection's lock.
pub fn raw_sqlite(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("rusqlite opens the store");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Creates an empty store (schema only) at `path` and shuts its bus down.
pub async fn create_store(path: &Path) {
    let bus = EventBus::builder()
        .sqlite(path)
        .build()
        .expect("store opens");
    drain(&bus).await;
}

/// The number of events in the store at `db` (read by plain SQLite, as another program
/// would), 0 while it cannot be read.
pub fn stored_events(db: &Path) -> u64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap_or(0)
}
