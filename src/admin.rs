//! The operator's view of a SQLite store, used by the `actorbus` command: read events,
//! checkpoints and dead letters, and repair what went wrong, with no bus running.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::storage::error::{classify, classify_connection};
use crate::storage::models::{CheckpointRow, DeadLetterRow, StoredEvent};
use crate::storage::pool::{self, SqlitePool};
use crate::storage::queries;
use crate::storage::queries::micros;
use crate::storage::schema::{checkpoints, dead_letters, events, subscriptions};
use crate::storage::{inspect, lock, registry};
use crate::storage::{SqliteOptions, StoreError};

/// An operator's handle on a SQLite store file. Safe beside a running bus on the same file,
/// in this process or another (SQLite locks; writes wait `busy_timeout`; every report reads
/// one snapshot). Repairs that a running bus would overwrite ([`replay`](Self::replay)) are
/// refused while one runs.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("bus.db");
/// use actorbus::Store;
///
/// let store = Store::create(&path)?;                 // or Store::open for an existing one
/// assert_eq!(store.head()?, 0);
/// assert!(Store::open(dir.path().join("missing.db")).is_err());
/// # Ok::<_, actorbus::Error>(())
/// ```
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    pool: SqlitePool,
}

/// One stored event, as an operator sees it (serializes with `recorded_at` in Unix µs).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct StoredEventInfo {
    /// Global position.
    pub position: u64,
    /// Event id.
    pub id: Uuid,
    /// Stream (aggregate) id.
    pub stream_id: String,
    /// Version within the stream.
    pub stream_version: u64,
    /// Event type name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u32,
    /// The payload as stored (JSON text).
    pub payload: String,
    /// Correlation, causation and headers as stored (JSON), if any.
    pub metadata: Option<String>,
    /// When it was published.
    #[serde(serialize_with = "crate::stats::as_unix_micros")]
    pub recorded_at: SystemTime,
}

/// How far one handler actor got (serializes with `updated_at` in Unix µs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// Subscription name.
    pub handler: String,
    /// Partition (handler actor index).
    pub partition: u32,
    /// Partitions (the concurrency) the index refers to.
    pub partitions: u32,
    /// Last position processed.
    pub position: u64,
    /// When it was written.
    #[serde(serialize_with = "crate::stats::as_unix_micros")]
    pub updated_at: SystemTime,
}

/// A stored dead letter with its event (serializes with `failed_at` in Unix µs).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// Dead-letter id.
    pub id: u64,
    /// Subscription that gave up.
    pub handler: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// When the handler gave up.
    #[serde(serialize_with = "crate::stats::as_unix_micros")]
    pub failed_at: SystemTime,
    /// Whether an operator asked for it to be redriven at the next start.
    pub redrive_requested: bool,
    /// The event.
    pub event: StoredEventInfo,
}

/// Which events [`Store::events`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Only this stream.
    pub stream: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only after this position.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: Option<u64>,
    /// The newest `limit` (still returned oldest first) instead of the oldest.
    pub newest: bool,
}

impl EventFilter {
    /// Every event, oldest first.
    pub fn all() -> Self {
        Self::default()
    }
    /// Only `stream`.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }
    /// Only `event_type`.
    pub fn event_type(mut self, t: impl Into<String>) -> Self {
        self.event_type = Some(t.into());
        self
    }
    /// Only after `position`.
    pub fn after(mut self, position: u64) -> Self {
        self.after = Some(position);
        self
    }
    /// At most `n`.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
    /// The newest ones (with `limit`).
    pub fn newest(mut self) -> Self {
        self.newest = true;
        self
    }
}

/// A summary of a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoreSummary {
    /// Events stored.
    pub events: u64,
    /// Distinct streams.
    pub streams: u64,
    /// Position of the newest event.
    pub head: u64,
    /// Schema version.
    pub schema_version: i64,
    /// Per subscription: (name, lowest checkpoint, lag = head - lowest checkpoint, dead letters).
    pub handlers: Vec<HandlerSummary>,
}

/// What [`Store::replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The handler's checkpoints moved: at its next start it processes the events after the
    /// position again. The number of checkpoints moved.
    Moved(usize),
    /// The projection will reset its read model at the next start of its bus and apply the
    /// whole log again.
    Rebuild,
}

/// One subscription in a [`StoreSummary`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HandlerSummary {
    /// Subscription name.
    pub name: String,
    /// Its lowest checkpoint over the actors of its current concurrency (`None`: only dead
    /// letters known).
    pub checkpoint: Option<u64>,
    /// Events stored after that checkpoint.
    pub lag: u64,
    /// Its dead letters.
    pub dead_letters: u64,
}

fn db(e: diesel::result::Error) -> Error {
    Error::Store(StoreError::database(e))
}

fn time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

impl From<StoredEvent> for StoredEventInfo {
    fn from(e: StoredEvent) -> Self {
        Self {
            position: e.position as u64,
            id: Uuid::from_slice(&e.event_id).unwrap_or_default(),
            stream_id: e.stream_id,
            stream_version: e.stream_version as u64,
            event_type: e.event_type,
            schema_version: e.schema_version as u32,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: time(e.recorded_at),
        }
    }
}

impl Store {
    /// Opens an existing store (migrating an older schema).
    ///
    /// # Errors
    /// A missing file, a file that is not SQLite, a newer schema, a lock: all as
    /// [`Error::Store`]; the file is left untouched.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such store file");
            return Err(Error::Store(StoreError::io(path, missing)));
        }
        // SQLite would take an empty file for a new database; an operator means a store.
        if std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(false)
        {
            return Err(Error::Store(StoreError::NotADatabase {
                path: path.to_path_buf(),
            }));
        }
        Self::create(path)
    }

    /// Opens the store at `path`, creating it with its schema when missing.
    ///
    /// # Errors
    /// As [`open`](Self::open), except for a missing file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let pool = pool::open(&SqliteOptions::new(&path))?;
        Ok(Self { path, pool })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<pool::PooledSqlite> {
        self.pool
            .get()
            .map_err(|e| Error::Store(classify_connection(&self.path, e)))
    }

    /// The schema version of the store.
    ///
    /// # Errors
    /// A database error.
    pub fn schema_version(&self) -> Result<i64> {
        inspect::schema_version(&mut *self.conn()?).map_err(db)
    }

    /// The last position given out (0 when nothing was ever stored). Retention may have
    /// deleted the event there; positions are never given out twice.
    ///
    /// # Errors
    /// A database error.
    pub fn head(&self) -> Result<u64> {
        Ok(queries::head(&mut *self.conn()?).map_err(db)?.max(0) as u64)
    }

    /// The current version of `stream` (0 for a stream never written).
    ///
    /// # Errors
    /// A database error.
    pub fn stream_version(&self, stream: &str) -> Result<u64> {
        Ok(queries::stream_version(&mut *self.conn()?, stream)
            .map_err(db)?
            .max(0) as u64)
    }

    /// Events matching `filter`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<StoredEventInfo>> {
        let rows = inspect::events(
            &mut *self.conn()?,
            &inspect::Selection {
                stream: filter.stream.as_deref(),
                event_type: filter.event_type.as_deref(),
                after: filter.after.map(|a| a.min(i64::MAX as u64) as i64),
                limit: filter.limit.map(|n| n.min(i64::MAX as u64) as i64),
                newest: filter.newest,
            },
        )
        .map_err(db)?;
        Ok(rows.into_iter().map(StoredEventInfo::from).collect())
    }

    /// Every checkpoint.
    ///
    /// # Errors
    /// A database error.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        let rows: Vec<CheckpointRow> = checkpoints::table
            .select(CheckpointRow::as_select())
            .order((checkpoints::handler.asc(), checkpoints::partition.asc()))
            .load(&mut self.conn()?)
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointInfo {
                handler: r.handler,
                partition: r.partition.max(0) as u32,
                partitions: r.partitions.max(0) as u32,
                position: r.position.max(0) as u64,
                updated_at: time(r.updated_at),
            })
            .collect())
    }

    /// Subscription names the store knows (registered, or from checkpoints and dead letters), sorted.
    ///
    /// # Errors
    /// A database error.
    pub fn handlers(&self) -> Result<Vec<String>> {
        inspect::handler_names(&mut *self.conn()?).map_err(db)
    }

    /// Fails with [`Error::UnknownHandler`] unless the store knows `handler`.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`], or a database error.
    pub fn require_handler(&self, handler: &str) -> Result<()> {
        if self.handlers()?.iter().any(|h| h == handler) {
            Ok(())
        } else {
            Err(Error::UnknownHandler(handler.to_owned()))
        }
    }

    /// Dead letters of `handler` (all when `None`), oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn dead_letters(&self, handler: Option<&str>) -> Result<Vec<DeadLetterInfo>> {
        let rows = queries::load_dead_letters(&mut *self.conn()?, handler).map_err(db)?;
        Ok(rows.into_iter().map(letter_info).collect())
    }

    /// One dead letter by id.
    ///
    /// # Errors
    /// A database error.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetterInfo>> {
        Ok(self.dead_letters(None)?.into_iter().find(|l| l.id == id))
    }

    /// Asks the next bus that starts to hand the dead letters of `handler` (all when `None`)
    /// back to their handler, in order, before anything else. Returns how many.
    ///
    /// # Errors
    /// A database error or a lock held past the busy timeout.
    pub fn request_redrive(&self, handler: Option<&str>) -> Result<usize> {
        let mut q = diesel::update(dead_letters::table).into_boxed();
        if let Some(h) = handler {
            q = q.filter(dead_letters::handler.eq(h.to_owned()));
        }
        q.set(dead_letters::redrive_requested.eq(1))
            .execute(&mut self.conn()?)
            .map_err(|e| Error::Store(classify(&self.path, e)))
    }

    /// Deletes the dead letters of `handler` (all when `None`). Returns how many.
    ///
    /// # Errors
    /// A database error or a lock held past the busy timeout.
    pub fn purge_dead_letters(&self, handler: Option<&str>) -> Result<usize> {
        let mut q = diesel::delete(dead_letters::table).into_boxed();
        if let Some(h) = handler {
            q = q.filter(dead_letters::handler.eq(h.to_owned()));
        }
        q.execute(&mut self.conn()?)
            .map_err(|e| Error::Store(classify(&self.path, e)))
    }

    /// Moves every checkpoint of `handler` back (or forward) to `position`: at its next start
    /// the handler processes every event after it again. Returns how many checkpoints moved.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`] when the store has no checkpoint for it; a database error.
    pub fn reset_checkpoint(&self, handler: &str, position: u64) -> Result<usize> {
        let n = diesel::update(checkpoints::table.filter(checkpoints::handler.eq(handler)))
            .set((
                checkpoints::position.eq(position as i64),
                checkpoints::updated_at.eq(micros(SystemTime::now())),
            ))
            .execute(&mut self.conn()?)
            .map_err(|e| Error::Store(classify(&self.path, e)))?;
        if n == 0 {
            return Err(Error::UnknownHandler(handler.to_owned()));
        }
        Ok(n)
    }

    /// Events, streams, head and per-subscription progress, read in one snapshot.
    ///
    /// # Errors
    /// A database error.
    pub fn summary(&self) -> Result<StoreSummary> {
        self.read(|conn| {
            let events: i64 = events::table.count().get_result(conn)?;
            let indexed = queries::indexed_through(conn)?;
            // The index keeps each stream's newest entry after retention: streams ever written.
            let streams: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "SELECT count(*) FROM (SELECT stream_id FROM stream_events \
                 UNION SELECT stream_id FROM events WHERE position > ",
            )
            .bind::<diesel::sql_types::BigInt, _>(indexed)
            .sql(")")
            .get_result(conn)?;
            let head = queries::head(conn)?.max(0) as u64;
            let checkpoints = queries::load_all_checkpoints(conn)?;
            let layouts: Vec<(String, i32)> = subscriptions::table
                .select((subscriptions::name, subscriptions::partitions))
                .load(conn)?;
            let letters: Vec<(String, i64)> = dead_letters::table
                .group_by(dead_letters::handler)
                .select((dead_letters::handler, diesel::dsl::count_star()))
                .load(conn)?;
            let handlers = inspect::handler_names(conn)?
                .into_iter()
                .map(|name| {
                    // The current layout's actors: an earlier concurrency's rows are kept
                    // only until the current ones pass them.
                    let current = layouts.iter().find(|(n, _)| *n == name).map(|l| l.1);
                    let checkpoint = checkpoints
                        .iter()
                        .filter(|c| c.handler == name)
                        .filter(|c| current.is_none_or(|p| c.partitions == p))
                        .map(|c| c.position.max(0) as u64)
                        .min();
                    HandlerSummary {
                        lag: head.saturating_sub(checkpoint.unwrap_or(0)),
                        dead_letters: letters
                            .iter()
                            .find(|(h, _)| *h == name)
                            .map_or(0, |l| l.1 as u64),
                        checkpoint,
                        name,
                    }
                })
                .collect();
            Ok(StoreSummary {
                events: events as u64,
                streams: streams as u64,
                head,
                schema_version: inspect::schema_version(conn)?,
                handlers,
            })
        })
    }

    /// Runs `f` in one read transaction: every query sees the same snapshot of the store,
    /// however much a running bus writes meanwhile.
    fn read<T>(&self, f: impl FnOnce(&mut SqliteConnection) -> QueryResult<T>) -> Result<T> {
        let mut conn = self.conn()?;
        (*conn).transaction(f).map_err(db)
    }

    /// Whether a bus is running on this store: `Some(who)` (e.g. `process 4242`) if one is.
    ///
    /// # Errors
    /// The lock file exists but cannot be read.
    pub fn running_bus(&self) -> Result<Option<String>> {
        Ok(lock::holder(&self.path)?)
    }

    /// Has `handler` process the log again after `from`, at the next start of its bus.
    ///
    /// A plain handler's checkpoints move to `from` now. A projection cannot take its events
    /// twice: it is rebuilt instead, from the beginning: at the next start its read model is
    /// reset ([`Projection::reset`](crate::Projection::reset)) and the whole log applied again.
    ///
    /// # Errors
    /// [`StoreError::InUse`] while a bus runs on the store (it would overwrite the change);
    /// [`Error::UnknownHandler`]; [`Error::NotReplayable`] for a projection without a reset,
    /// a projection with `from` other than 0, or one whose events retention deleted.
    pub fn replay(&self, handler: &str, from: u64) -> Result<Replay> {
        if let Some(holder) = self.running_bus()? {
            return Err(Error::Store(StoreError::InUse {
                path: self.path.clone(),
                holder,
            }));
        }
        let not = |reason: String| Error::NotReplayable {
            handler: handler.to_owned(),
            reason,
        };
        let mut conn = self.conn()?;
        let kind = registry::kind_of(&mut conn, handler).map_err(db)?;
        if let Some((registry::Kind::Projection, resettable)) = kind {
            if !resettable {
                return Err(not(
                    "it is a projection without a reset: its read model already \
                     holds those events and would apply them twice. Give it \
                     `Projection::reset` (and `RESETTABLE = true`) to rebuild it"
                        .into(),
                ));
            }
            if from != 0 {
                return Err(not(format!(
                    "a projection is rebuilt from the beginning (its read model is reset): \
                     replay it from 0, not {from}"
                )));
            }
            let pruned = queries::pruned_through(&mut conn).map_err(db)?;
            if pruned > 0 {
                return Err(not(format!(
                    "retention deleted events up to position {pruned}: the read model cannot \
                     be rebuilt from the log"
                )));
            }
            registry::request_rebuild(&mut conn, handler)
                .map_err(|e| Error::Store(classify(&self.path, e)))?;
            return Ok(Replay::Rebuild);
        }
        drop(conn);
        self.reset_checkpoint(handler, from).map(Replay::Moved)
    }

    /// Checks the invariants of the log: stream versions contiguous and unique, event ids
    /// unique, the stream index complete up to its mark, every checkpoint at or below the head. Returns what differs (empty: consistent).
    ///
    /// # Errors
    /// A database error.
    pub fn check(&self) -> Result<Vec<String>> {
        self.read(inspect::check)
    }

    /// Runs `f` with a connection to the store (for application-specific checks, such as a
    /// projection's read model).
    ///
    /// # Errors
    /// What `f` returns, or a connection error.
    pub fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut SqliteConnection) -> QueryResult<T>,
    ) -> Result<T> {
        f(&mut *self.conn()?).map_err(db)
    }
}

fn letter_info((row, event): (DeadLetterRow, StoredEvent)) -> DeadLetterInfo {
    DeadLetterInfo {
        id: row.id as u64,
        handler: row.handler,
        attempts: row.attempts.max(0) as u32,
        last_error: row.last_error,
        failed_at: time(row.failed_at),
        redrive_requested: row.redrive_requested != 0,
        event: event.into(),
    }
}
