//! The operator's view of a store (a SQLite file, or a PostgreSQL database), used by the
//! `actorbus` command: read events, checkpoints and dead letters, and repair what went
//! wrong.

mod info;

use std::path::{Path, PathBuf};

use diesel::prelude::*;

pub use info::{
    CheckpointInfo, DeadLetterInfo, EventFilter, HandlerSummary, Replay, RunningBus, StoreSummary,
    StoredEventInfo,
};

use crate::error::{Error, Result};
use crate::storage::convert::time_of;
use crate::storage::error::{classify, classify_connection};
use crate::storage::inspect::Selection;
use crate::storage::pool::{self, SqlitePool};
use crate::storage::sql::Dialect;
use crate::storage::{lock, registry};
use crate::storage::{SqliteOptions, StoreConfig, StoreError};
use info::letter_info;

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
    /// The file, or the PostgreSQL URL without its password.
    path: PathBuf,
    backend: Backend,
}

/// The database a [`Store`] reads.
#[derive(Debug)]
enum Backend {
    Sqlite(SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(crate::storage::postgres::PgPool),
}

/// Runs `$body` with `$conn`, a pooled connection to whichever database `$store` is, and
/// `$db`, that database's SQL (`storage::sql::sqlite` or `storage::sql::postgres`); its
/// `QueryResult` becomes a [`Result`] with the failure classified.
macro_rules! on_store {
    ($store:expr, |$conn:ident, $db:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(pool) => {
                #[allow(unused_imports)]
                use crate::storage::sql::sqlite as $db;
                let mut pooled = $store.pooled(pool)?;
                let $conn = &mut *pooled;
                ($body).map_err(|e| $store.failed(e))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                #[allow(unused_imports)]
                use crate::storage::sql::postgres as $db;
                let mut pooled = $store.pooled(pool)?;
                let $conn = &mut *pooled;
                ($body).map_err(|e| $store.failed(e))
            }
        }
    };
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
        Ok(Self {
            path,
            backend: Backend::Sqlite(pool),
        })
    }

    /// Opens the store a URL names: `sqlite://PATH` (an existing file, as
    /// [`open`](Self::open)) or `postgres://…` (migrated when needed; feature `postgres`).
    /// A string without a scheme is a SQLite file's path.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`Error::Config`] for `memory://`, another scheme, or a
    /// PostgreSQL URL in a build without the `postgres` feature; a connection error.
    pub fn open_url(url: &str) -> Result<Self> {
        Self::at(url, false)
    }

    /// As [`open_url`](Self::open_url), creating a missing SQLite file.
    ///
    /// # Errors
    /// As [`open_url`](Self::open_url), except for a missing file.
    pub fn create_url(url: &str) -> Result<Self> {
        Self::at(url, true)
    }

    fn at(url: &str, create: bool) -> Result<Self> {
        if !url.contains("://") && !url.starts_with("sqlite:") {
            return if create {
                Self::create(url)
            } else {
                Self::open(url)
            };
        }
        match StoreConfig::from_url(url)? {
            StoreConfig::Sqlite(o) if create => Self::create(o.path),
            StoreConfig::Sqlite(o) => Self::open(o.path),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(o) => {
                let (path, pool) = crate::storage::postgres::admin_pool(&o)?;
                Ok(Self {
                    path,
                    backend: Backend::Postgres(pool),
                })
            }
            #[cfg(not(feature = "postgres"))]
            StoreConfig::Postgres(_) => {
                Err(Error::Config(crate::storage::backend::NO_POSTGRES.into()))
            }
            StoreConfig::Memory => Err(Error::Config(
                "an in-memory bus keeps no store to open".into(),
            )),
        }
    }

    /// The file (for PostgreSQL: the URL without its password).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A connection from `pool`; failing to get one is classified.
    fn pooled<M: diesel::r2d2::R2D2Connection + 'static>(
        &self,
        pool: &diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<M>>,
    ) -> Result<diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<M>>> {
        pool.get()
            .map_err(|e| Error::Store(classify_connection(&self.path, e)))
    }

    fn failed(&self, e: diesel::result::Error) -> Error {
        Error::Store(classify(&self.path, e))
    }

    /// The schema version of the store.
    ///
    /// # Errors
    /// A database error.
    pub fn schema_version(&self) -> Result<i64> {
        on_store!(self, |c, db| db::inspect::schema_version(c))
    }

    /// The last position given out (0 when nothing was ever stored). Retention may have
    /// deleted the event there; positions are never given out twice.
    ///
    /// # Errors
    /// A database error.
    pub fn head(&self) -> Result<u64> {
        Ok(on_store!(self, |c, db| db::queries::head(c))?.max(0) as u64)
    }

    /// The current version of `stream` (0 for a stream never written).
    ///
    /// # Errors
    /// A database error.
    pub fn stream_version(&self, stream: &str) -> Result<u64> {
        Ok(on_store!(self, |c, db| db::queries::stream_version(c, stream))?.max(0) as u64)
    }

    /// Events matching `filter`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<StoredEventInfo>> {
        let selection = Selection {
            stream: filter.stream.as_deref(),
            event_type: filter.event_type.as_deref(),
            after: filter.after.map(|a| a.min(i64::MAX as u64) as i64),
            limit: filter.limit.map(|n| n.min(i64::MAX as u64) as i64),
            newest: filter.newest,
        };
        let rows = on_store!(self, |c, db| db::inspect::events(c, &selection))?;
        Ok(rows.into_iter().map(StoredEventInfo::from).collect())
    }

    /// Every checkpoint.
    ///
    /// # Errors
    /// A database error.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        let rows = on_store!(self, |c, db| db::inspect::checkpoints(c))?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointInfo {
                handler: r.handler,
                partition: r.partition.max(0) as u32,
                partitions: r.partitions.max(0) as u32,
                position: r.position.max(0) as u64,
                updated_at: time_of(r.updated_at),
            })
            .collect())
    }

    /// Subscription names the store knows (registered, or from checkpoints and dead letters), sorted.
    ///
    /// # Errors
    /// A database error.
    pub fn handlers(&self) -> Result<Vec<String>> {
        on_store!(self, |c, db| db::inspect::handler_names(c))
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
        let rows = on_store!(self, |c, db| db::queries::load_dead_letters(c, handler))?;
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
        on_store!(self, |c, db| db::repair::request_redrive(c, handler))
    }

    /// Deletes the dead letters of `handler` (all when `None`). Returns how many.
    ///
    /// # Errors
    /// A database error or a lock held past the busy timeout.
    pub fn purge_dead_letters(&self, handler: Option<&str>) -> Result<usize> {
        on_store!(self, |c, db| db::repair::purge_dead_letters(c, handler))
    }

    /// Moves every checkpoint of `handler` back (or forward) to `position`: at its next start
    /// the handler processes every event after it again. Returns how many checkpoints moved.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`] when the store has no checkpoint for it; a database error.
    pub fn reset_checkpoint(&self, handler: &str, position: u64) -> Result<usize> {
        let position = i64::try_from(position).unwrap_or(i64::MAX);
        let n = on_store!(self, |c, db| db::repair::move_checkpoints(
            c, handler, position
        ))?;
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
        let tally = on_store!(self, |c, db| c.read_transaction(db::inspect::tally))?;
        let (head, handlers) = summaries(tally.standing);
        Ok(StoreSummary {
            events: tally.events as u64,
            streams: tally.streams as u64,
            head,
            schema_version: tally.schema_version,
            handlers,
        })
    }

    /// The head, and each subscription's checkpoint, lag, dead letters and concurrency, as in
    /// [`summary`](Self::summary) but without counting the events and streams: cheap enough
    /// to read every second.
    ///
    /// # Errors
    /// A database error.
    pub fn handler_summaries(&self) -> Result<(u64, Vec<HandlerSummary>)> {
        let standing = on_store!(self, |c, db| c.read_transaction(db::inspect::standing))?;
        Ok(summaries(standing))
    }

    /// Whether a bus is running on this store: `Some(who)` (e.g. `process 4242`) if one is.
    ///
    /// # Errors
    /// The lock file exists but cannot be read.
    pub fn running_bus(&self) -> Result<Option<String>> {
        let running = self.running()?;
        Ok((!running.is_empty()).then(|| {
            running
                .into_iter()
                .map(|r| r.label)
                .collect::<Vec<_>>()
                .join(", ")
        }))
    }

    /// The processes running a bus on this store, and on PostgreSQL the share of the
    /// partitions each owns.
    ///
    /// # Errors
    /// The lock file exists but cannot be read; a database error.
    pub fn running(&self) -> Result<Vec<RunningBus>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(lock::holder(&self.path)?
                .map(|label| RunningBus {
                    label,
                    partitions: None,
                })
                .into_iter()
                .collect()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => {
                let mut conn = self.pooled(pool)?;
                let live = crate::storage::postgres::coordinator::live_members(&mut conn)
                    .map_err(|e| self.failed(e))?;
                Ok(live
                    .into_iter()
                    .map(|(label, owned)| RunningBus {
                        label,
                        partitions: Some(owned),
                    })
                    .collect())
            }
        }
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
        let kind = on_store!(self, |c, db| db::registry::kind_of(c, handler))?;
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
            let pruned = on_store!(self, |c, db| db::queries::pruned_through(c))?;
            if pruned > 0 {
                return Err(not(format!(
                    "retention deleted events up to position {pruned}: the read model cannot \
                     be rebuilt from the log"
                )));
            }
            on_store!(self, |c, db| db::registry::request_rebuild(c, handler))?;
            return Ok(Replay::Rebuild);
        }
        self.reset_checkpoint(handler, from).map(Replay::Moved)
    }

    /// Checks the invariants of the log: stream versions contiguous and unique, event ids
    /// unique, the stream index complete up to its mark, every checkpoint at or below the head. Returns what differs (empty: consistent).
    ///
    /// # Errors
    /// A database error.
    pub fn check(&self) -> Result<Vec<String>> {
        on_store!(self, |c, db| c.read_transaction(db::inspect::check))
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
        match &self.backend {
            Backend::Sqlite(pool) => {
                let mut pooled = self.pooled(pool)?;
                f(&mut pooled).map_err(|e| self.failed(e))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(Error::Config(
                "this store is PostgreSQL: use Store::with_postgres_connection".into(),
            )),
        }
    }

    /// As [`with_connection`](Self::with_connection), on a PostgreSQL store.
    ///
    /// # Errors
    /// What `f` returns, a connection error, or [`Error::Config`] on a SQLite store.
    #[cfg(feature = "postgres")]
    pub fn with_postgres_connection<T>(
        &self,
        f: impl FnOnce(&mut diesel::PgConnection) -> QueryResult<T>,
    ) -> Result<T> {
        match &self.backend {
            Backend::Postgres(pool) => {
                let mut pooled = self.pooled(pool)?;
                f(&mut pooled).map_err(|e| self.failed(e))
            }
            Backend::Sqlite(_) => Err(Error::Config(
                "this store is SQLite: use Store::with_connection".into(),
            )),
        }
    }
}

/// The head and each subscription's summary, from where the subscriptions stand.
fn summaries(standing: crate::storage::inspect::Standing) -> (u64, Vec<HandlerSummary>) {
    let head = standing.head.max(0) as u64;
    let handlers = standing
        .names
        .into_iter()
        .map(|name| {
            // The current layout's actors: an earlier concurrency's rows are kept only
            // until the current ones pass them.
            let current = standing
                .layouts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|l| l.1);
            let checkpoint = standing
                .checkpoints
                .iter()
                .filter(|c| c.handler == name)
                .filter(|c| current.is_none_or(|p| c.partitions == p))
                .map(|c| c.position.max(0) as u64)
                .min();
            HandlerSummary {
                lag: head.saturating_sub(checkpoint.unwrap_or(0)),
                dead_letters: standing
                    .letters
                    .iter()
                    .find(|(h, _)| *h == name)
                    .map_or(0, |l| l.1 as u64),
                checkpoint,
                partitions: current.map(|p| p.max(0) as u32),
                name,
            }
        })
        .collect();
    (head, handlers)
}
