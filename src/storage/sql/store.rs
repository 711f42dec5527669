//! The storage seam ([`LogWriter`], [`LogReader`]) over this database's SQL: the single
//! writer's connection, a pool of readers beside it, and the registration of a starting
//! bus's subscriptions. What only one database needs to open a store (SQLite's lock file
//! and WAL checkpointer, PostgreSQL's advisory locks) stays in `storage/sqlite.rs` and
//! `storage/postgres.rs`, and rides along in [`SqlWriter::_guards`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};

use super::writer::Writer;
use super::{progress, queries, registry, retention, Conn, Dialect};
use crate::dead_letter::DeadLetter;
use crate::event::Record;
use crate::storage::backend::{
    Fenced, LetterChange, LogReader, LogWriter, Progress, ProjectError, ProjectionJob, Unit,
    UnitOutcome,
};
use crate::storage::convert::{micros, time_of};
use crate::storage::error::{classify, classify_connection};
use crate::storage::models::{DeadLetterRow, StoredEvent};
use crate::storage::registry::{RegisterError, Resume, SubscriptionSpec};
use crate::storage::{Retention, StoreError};

/// The single writer of a store, and what must live as long as it does (dropping it
/// releases the store for the next bus).
pub(crate) struct SqlWriter {
    pub(crate) writer: Writer,
    /// Held, never used: the store's claim and its background work, released on drop.
    pub(crate) _guards: Vec<Box<dyn std::any::Any + Send>>,
}

/// The readers of a store: a pool of connections.
pub(crate) struct SqlReader {
    pool: Pool<ConnectionManager<Conn>>,
    /// The store, as errors name it.
    path: PathBuf,
}

impl SqlReader {
    pub(crate) fn new(pool: Pool<ConnectionManager<Conn>>, path: PathBuf) -> Self {
        Self { pool, path }
    }

    /// Runs `read` on a pooled connection, in one read transaction (one snapshot).
    fn read<T>(&self, read: impl FnOnce(&mut Conn) -> QueryResult<T>) -> Result<T, StoreError> {
        let mut pooled = self
            .pool
            .get()
            .map_err(|e| classify_connection(&self.path, e))?;
        let conn: &mut Conn = &mut pooled;
        conn.read_transaction(read)
            .map_err(|e| classify(&self.path, e))
    }
}

impl LogReader for SqlReader {
    fn events_of_types_after(
        &self,
        types: &[String],
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Record>, u64), StoreError> {
        let (rows, head) = self.read(|conn| {
            let rows = queries::read_types_after(conn, types, signed(after), signed(limit))?;
            Ok((rows, queries::head(conn)?))
        })?;
        let records = rows.into_iter().map(StoredEvent::into_record).collect();
        Ok((records, non_negative(head)))
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.read(|conn| queries::stream_version(conn, stream))
            .map(non_negative)
    }

    fn dead_letters(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self.read(|conn| {
            queries::load_dead_letter_page(conn, subscription, signed(after), signed(limit))
        })?;
        Ok(rows.into_iter().map(stored_letter).collect())
    }

    fn requested_redrives(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self.read(queries::load_requested_redrives)?;
        Ok(rows.into_iter().map(stored_letter).collect())
    }
}

impl SqlWriter {
    /// Runs `f` in one write transaction that first stores `queued` dead-letter changes, so
    /// nothing `f` writes (a purge, a projection's checkpoint) lands ahead of them.
    fn after_letters<T>(
        &mut self,
        queued: &[LetterChange],
        f: impl FnOnce(&mut Conn) -> QueryResult<T>,
    ) -> Result<T, StoreError> {
        let member = self.writer.member().map(str::to_owned);
        self.writer.transaction(|conn| {
            progress::save_dead_letters(conn, queued, member.as_deref())?;
            f(conn)
        })
    }
}

impl LogWriter for SqlWriter {
    fn append(
        &mut self,
        units: &[Unit],
        outcomes: Vec<UnitOutcome>,
    ) -> Result<Vec<UnitOutcome>, StoreError> {
        self.writer.append(units, outcomes)
    }

    fn save_progress(
        &mut self,
        checkpoints: &[Progress],
        letters: &[LetterChange],
    ) -> Result<(), StoreError> {
        self.writer.save_checkpoints(checkpoints, letters)
    }

    fn index_behind(&self) -> bool {
        self.writer.index_behind()
    }

    fn index_tail(&mut self) -> Result<bool, StoreError> {
        self.writer.index_tail()
    }

    fn drop_covered_layouts(
        &mut self,
        subscription: &str,
        partitions: usize,
    ) -> Result<bool, StoreError> {
        let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
        self.writer
            .transaction(|conn| progress::drop_covered_layouts(conn, subscription, partitions))
    }

    fn prune(
        &mut self,
        retention: &Retention,
        subscriptions: &[(String, usize)],
        batch: u64,
    ) -> Result<u64, StoreError> {
        let now = micros(SystemTime::now());
        let deleted = self.writer.transaction(|conn| {
            let rows = queries::load_all_checkpoints(conn)?;
            // A subscription of this bus without a checkpoint for each actor still needs
            // everything (registration writes them all at start: this is a safety net).
            let incomplete = subscriptions.iter().any(|(name, partitions)| {
                rows.iter()
                    .filter(|r| r.handler == *name && r.partitions as usize == *partitions)
                    .count()
                    < *partitions
            });
            let safe = if incomplete {
                0
            } else {
                rows.iter().map(|r| r.position).min().unwrap_or(0)
            };
            retention::prune(conn, retention, safe, now, signed(batch))
        })?;
        Ok(deleted as u64)
    }

    fn delete_dead_letters(
        &mut self,
        queued: &[LetterChange],
        subscription: Option<&str>,
    ) -> Result<usize, StoreError> {
        use crate::storage::schema::dead_letters;
        self.after_letters(queued, |conn| {
            let mut query = diesel::delete(dead_letters::table).into_boxed();
            if let Some(name) = subscription {
                query = query.filter(dead_letters::handler.eq(name.to_owned()));
            }
            query.execute(conn)
        })
    }

    fn project(&mut self, queued: &[LetterChange], job: ProjectionJob) -> Result<(), ProjectError> {
        let member = self.writer.member().map(str::to_owned);
        let mut failure = None;
        let mut fenced = false;
        let result = self.after_letters(queued, |conn| match job(conn.tx()) {
            Ok(None) => Ok(()),
            Ok(Some(progress)) => {
                // Checked once, in the transaction that stores the read model: all of it
                // commits with its checkpoint, or none of it does.
                if !progress::claim_holds(conn, &progress, member.as_deref())? {
                    fenced = true;
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                progress::save_checkpoint(conn, &progress.row)
            }
            Err(e) => {
                failure = Some(e);
                Err(diesel::result::Error::RollbackTransaction)
            }
        });
        match (result, failure) {
            (_, Some(e)) => Err(e),
            // Another process owns the partition now: it applies these events. The dead
            // letters queued ahead are stored on their own.
            (Err(_), None) if fenced => {
                self.after_letters(queued, |_| Ok(()))?;
                Err(Fenced.into())
            }
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(()),
        }
    }
}

/// Registers `subscriptions` in one transaction (rebuilding the projections an operator
/// asked to): the head at start, and where each subscription's actors resume.
///
/// # Errors
/// A database error; a failed rebuild as [`StoreError::Rebuild`].
pub(crate) fn register(
    writer: &mut Writer,
    subscriptions: &mut [SubscriptionSpec],
) -> Result<(u64, Vec<Resume>), StoreError> {
    let now = micros(SystemTime::now());
    let mut rebuild = None;
    let registered = writer.transaction(|conn| {
        let head = queries::head(conn)?;
        match registry::register(conn, subscriptions, head, now) {
            Ok(resumes) => Ok((head, resumes)),
            Err(RegisterError::Db(e)) => Err(e),
            Err(RegisterError::Rebuild {
                subscription,
                source,
            }) => {
                rebuild = Some(StoreError::Rebuild {
                    subscription,
                    source: Arc::from(source),
                });
                Err(diesel::result::Error::RollbackTransaction)
            }
        }
    });
    match (registered, rebuild) {
        (_, Some(e)) => Err(e),
        (result, None) => result.map(|(head, resumes)| (non_negative(head), resumes)),
    }
}

/// A stored letter, with its event ready to be redriven.
fn stored_letter((row, event): (DeadLetterRow, StoredEvent)) -> DeadLetter {
    let mut record = event.into_record();
    record.letter = Some(row.id);
    DeadLetter::new(
        row.id as u64,
        row.handler,
        row.attempts.max(0) as u32,
        row.last_error,
        time_of(row.failed_at),
        record,
    )
}

fn non_negative(n: i64) -> u64 {
    n.max(0) as u64
}

fn signed(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
