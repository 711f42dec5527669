//! The store's SQL, written once for every database it runs on.
//!
//! The files under `storage/sql/` are compiled once per database: [`sqlite`] mounts them
//! with `Conn = SqliteConnection`, [`postgres`] (feature `postgres`) with
//! `Conn = PgConnection`. The schema is the same on both (`migrations/` and
//! `migrations/postgres/`), so the same diesel queries type-check against each, and a query
//! that one database cannot run fails to compile rather than at run time. What differs
//! between the databases is the [`Dialect`] of their connection, and nothing else.

// Mounting each file once per database is the point of this module.
#![allow(clippy::duplicate_mod)]

use diesel::prelude::*;

use crate::storage::backend::Tx;
use crate::storage::models::NewStoredEvent;
use crate::storage::rows::IndexEntry;

/// What the store's SQL needs that the databases spell differently.
pub(crate) trait Dialect: Connection + Sized {
    /// The SQL function for the larger of two values.
    const GREATEST: &'static str;

    /// Whether the bus's writer is the store's only appender while it runs (SQLite: one bus
    /// per store, held by its lock file), so that it need not read the head and the index
    /// mark at each commit: nothing else moves them.
    const SOLE_APPENDER: bool;

    /// Runs `f` in a transaction that no other appender of the store runs beside, so that
    /// positions are given out, and become visible, in order: no reader ever passes over a
    /// position whose transaction commits later. SQLite: `BEGIN IMMEDIATE`. PostgreSQL: a
    /// transaction-scoped advisory lock, taken first (group commit keeps it cheap: one lock
    /// per chunk of publishes).
    fn append_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T>;

    /// Runs `f` in a read-only transaction that sees one snapshot throughout (a page of
    /// events and the head beside it must agree).
    fn read_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T>;

    /// Runs `f` in a write transaction (checkpoints, dead letters, retention, projections).
    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T>;

    /// Inserts a group commit's events.
    fn insert_events(&mut self, rows: &[NewStoredEvent<'_>]) -> QueryResult<()>;

    /// Inserts entries of the stream index.
    fn insert_index(&mut self, entries: &[IndexEntry<'_>]) -> QueryResult<()>;

    /// Copies the WAL back into the database ([`crate::storage::pool::WalRestart`]; SQLite).
    fn checkpoint_wal(&mut self) -> QueryResult<()>;

    /// The connection as a projection's work takes it.
    fn tx(&mut self) -> Tx<'_>;
}

impl Dialect for SqliteConnection {
    const GREATEST: &'static str = "max";
    const SOLE_APPENDER: bool = true;

    fn append_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.immediate_transaction(f)
    }

    fn read_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        // WAL: a deferred transaction reads one snapshot from its first read on.
        self.transaction(f)
    }

    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.immediate_transaction(f)
    }

    fn insert_events(&mut self, rows: &[NewStoredEvent<'_>]) -> QueryResult<()> {
        crate::storage::rows::write_all::<crate::storage::rows::Events<'_>, _>(self, rows)
    }

    fn insert_index(&mut self, entries: &[IndexEntry<'_>]) -> QueryResult<()> {
        crate::storage::rows::write_all::<crate::storage::rows::Index<'_>, _>(self, entries)
    }

    fn checkpoint_wal(&mut self) -> QueryResult<()> {
        crate::storage::pool::passive(self).map(drop)
    }

    fn tx(&mut self) -> Tx<'_> {
        Tx::Sqlite(self)
    }
}

#[cfg(feature = "postgres")]
impl Dialect for diesel::PgConnection {
    const GREATEST: &'static str = "greatest";
    const SOLE_APPENDER: bool = false;

    fn append_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
        // BEGIN and the lock in one round trip.
        let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})");
        if let Err(e) = AnsiTransactionManager::begin_transaction_sql(self, &begin) {
            // The BEGIN may have run without the lock: leave no transaction open.
            let _ = self.batch_execute("ROLLBACK");
            return Err(e);
        }
        match f(self) {
            Ok(value) => AnsiTransactionManager::commit_transaction(self).map(|()| value),
            Err(e) => match AnsiTransactionManager::rollback_transaction(self) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(e),
                Err(rollback) => Err(rollback),
            },
        }
    }

    fn read_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        // READ COMMITTED would take a new snapshot per statement.
        self.build_transaction()
            .read_only()
            .repeatable_read()
            .run(f)
    }

    fn write_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.transaction(f)
    }

    fn insert_events(&mut self, rows: &[NewStoredEvent<'_>]) -> QueryResult<()> {
        use crate::storage::schema::events;
        // One COPY (binary) for the whole commit: no statement to parse and plan per commit,
        // as a multi-row INSERT of varying length would need, and one round trip. Appends
        // hold the append lock meanwhile, so this is what every other appender waits for.
        diesel::copy_from(events::table)
            .from_insertable(rows)
            .execute(self)
            .map(drop)
    }

    fn insert_index(&mut self, entries: &[IndexEntry<'_>]) -> QueryResult<()> {
        crate::storage::rows::write_all::<crate::storage::rows::Index<'_>, _>(self, entries)
    }

    fn checkpoint_wal(&mut self) -> QueryResult<()> {
        Ok(())
    }

    fn tx(&mut self) -> Tx<'_> {
        Tx::Postgres(self)
    }
}

/// The channel every append notifies, with the new head as payload (PostgreSQL): the
/// `events` table's trigger (`migrations/postgres/…_appended_trigger`) sends it from inside
/// the insert, so an append spends no round trip of its own on it.
#[cfg(feature = "postgres")]
pub(crate) const APPENDED_CHANNEL: &str = "actorbus_appended";

/// The advisory lock key appends serialize on (PostgreSQL): "actorbus" in ASCII.
#[cfg(feature = "postgres")]
pub(crate) const APPEND_LOCK: i64 = 0x6163_746f_7262_7573;

/// The store's SQL on SQLite.
#[path = "sql"]
pub(crate) mod sqlite {
    /// The connection the SQL below runs on.
    pub(crate) type Conn = diesel::SqliteConnection;
    pub(crate) use super::Dialect;

    pub(crate) mod inspect;
    pub(crate) mod progress;
    pub(crate) mod queries;
    pub(crate) mod registry;
    pub(crate) mod repair;
    pub(crate) mod retention;
    pub(crate) mod store;
    pub(crate) mod writer;
}

/// The same SQL on PostgreSQL.
#[cfg(feature = "postgres")]
#[path = "sql"]
pub(crate) mod postgres {
    /// The connection the SQL below runs on.
    pub(crate) type Conn = diesel::PgConnection;
    pub(crate) use super::Dialect;

    pub(crate) mod inspect;
    pub(crate) mod progress;
    pub(crate) mod queries;
    pub(crate) mod registry;
    pub(crate) mod repair;
    pub(crate) mod retention;
    pub(crate) mod store;
    pub(crate) mod writer;
}
