//! The seam between the actors and a database. The storage actor writes through one
//! [`LogWriter`]; the router, the dead-letter bridge and the bus handle read through one
//! [`Reader`]. Neither names a database: [`open`] picks the implementation from the
//! [`StoreConfig`](crate::StoreConfig) (today SQLite, `storage/sqlite.rs`), so a second
//! database plugs in here without touching the router or the handler actors.
//!
//! What crosses the seam is the bus's own vocabulary ([`Record`], [`DeadLetter`],
//! [`Unit`], [`LetterChange`], [`CheckpointRow`]), never a connection. The one exception is
//! a projection's work ([`ProjectionJob`]), which runs on the writer's connection because
//! the public [`Projection`](crate::Projection) API hands it that connection.

use std::sync::Arc;

use crate::dead_letter::DeadLetter;
use crate::error::HandlerError;
use crate::event::Record;
use crate::storage::models::{CheckpointRow, NewDeadLetter};
use crate::storage::registry::{Resume, SubscriptionSpec};
use crate::storage::{Retention, StoreConfig, StoreError};

/// One publish (or `publish_all`): all of it is stored, or none.
#[derive(Debug)]
pub(crate) struct Unit {
    pub(crate) records: Vec<Record>,
    /// The version the stream must be at before this unit (all records on one stream).
    pub(crate) expected_version: Option<u64>,
    /// The publisher chose the event ids: an id already stored is answered, not stored again.
    pub(crate) check_ids: bool,
}

/// Where a unit's records were stored: (position, stream version) per record. The place of a
/// unit of one record (a plain `publish`) is kept inline: the writer's thread allocates
/// nothing per unit that the router's thread would then free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Places {
    /// The one record of the unit.
    One([(u64, u64); 1]),
    /// Every record of the unit, in order (none: an empty unit).
    Many(Vec<(u64, u64)>),
}

impl Places {
    /// The places, one per record, in the unit's order.
    pub(crate) fn as_slice(&self) -> &[(u64, u64)] {
        match self {
            Places::One(one) => one,
            Places::Many(many) => many,
        }
    }
}

impl FromIterator<(u64, u64)> for Places {
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(places: I) -> Self {
        let mut places = places.into_iter();
        match (places.next(), places.next()) {
            (Some(one), None) => Places::One([one]),
            (first, second) => {
                Places::Many(first.into_iter().chain(second).chain(places).collect())
            }
        }
    }
}

/// What became of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitOutcome {
    /// Stored: where each record went.
    Stored(Places),
    /// Every id was stored before (a retried publish): where they are; nothing new stored.
    Duplicate(Vec<(u64, u64)>),
    /// The stream was not at the expected version; nothing was stored.
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
}

/// What happened to dead letters since the last write, in the order it happened.
#[derive(Debug, Clone)]
pub(crate) enum LetterChange {
    /// A handler gave up on an event: one letter per (subscription, event); a letter that
    /// fails again after a redrive is updated (attempts, error, time), not repeated. Given
    /// up under a claim (a shared store), it is stored only while the claim holds.
    Keep(NewDeadLetter, Option<LetterClaim>),
    /// A redriven letter was handled: it goes.
    Resolved(i64),
}

/// A checkpoint to store, and the claim it was reached under: on a PostgreSQL store shared
/// by several processes, the token of the claim on its partition (`None` where one bus owns
/// the whole store). A checkpoint whose claim no longer holds is not stored (fencing).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) row: CheckpointRow,
    pub(crate) fence: Option<i64>,
}

/// The claim a dead letter was given up under: (partitions, partition, token).
pub(crate) type LetterClaim = (i32, i32, i64);

/// The writer's connection inside a transaction, whichever database it is: what a
/// projection's work (and its reset) runs on.
pub(crate) enum Tx<'a> {
    Sqlite(&'a mut diesel::SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(&'a mut diesel::PgConnection),
}

impl Tx<'_> {
    /// Runs `f` in a savepoint of its own (a nested transaction): what `f` wrote is rolled
    /// back alone when it fails, and the rest of the transaction goes on.
    pub(crate) fn savepoint<T, E: From<diesel::result::Error>>(
        &mut self,
        f: impl FnOnce(Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        use diesel::Connection;
        match self {
            Tx::Sqlite(c) => c.transaction(|c| f(Tx::Sqlite(c))),
            #[cfg(feature = "postgres")]
            Tx::Postgres(c) => c.transaction(|c| f(Tx::Postgres(c))),
        }
    }

    /// A shorter borrow of the same connection.
    pub(crate) fn reborrow(&mut self) -> Tx<'_> {
        match self {
            Tx::Sqlite(c) => Tx::Sqlite(c),
            #[cfg(feature = "postgres")]
            Tx::Postgres(c) => Tx::Postgres(c),
        }
    }
}

/// A projection's work in the writer's transaction: it applies its events and returns the
/// checkpoint to store with them (`None`: nothing was applied). It catches its own panics.
/// When the checkpoint's claim no longer holds, the whole transaction is rolled back.
pub(crate) type ProjectionJob =
    Box<dyn FnOnce(Tx<'_>) -> Result<Option<Progress>, ProjectError> + Send>;

/// Why a projection's transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProjectError {
    /// The projection failed (or panicked) on an event.
    #[error(transparent)]
    Handler(HandlerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The partition's claim no longer holds: another process owns it and applies these
    /// events; nothing of the transaction was stored.
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

/// The claim a write was made under no longer holds (a store shared by several processes):
/// the partition's new owner does this work. Not a failure to retry or dead-letter.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("another process owns this partition now")]
pub(crate) struct Fenced;

impl ProjectError {
    /// The error the handler actor retries and dead-letters with ([`Fenced`] stops its
    /// batch instead).
    pub(crate) fn into_handler_error(self) -> HandlerError {
        match self {
            ProjectError::Handler(e) => e,
            ProjectError::Store(e) => Box::new(e),
            ProjectError::Fenced(e) => Box::new(e),
        }
    }
}

/// The storage actor's side of a database: every write goes through it, on one thread.
/// Each method is one transaction.
pub(crate) trait LogWriter: Send + 'static {
    /// Appends every unit (group commit): positions, stream versions, optimistic
    /// concurrency and idempotent ids; one outcome per unit, pushed onto `outcomes` (given
    /// empty, so that the caller's thread allocates it). Nothing of a failed call is stored.
    fn append(
        &mut self,
        units: &[Unit],
        outcomes: Vec<UnitOutcome>,
    ) -> Result<Vec<UnitOutcome>, StoreError>;

    /// Stores dead-letter changes, then the checkpoints whose claims still hold.
    fn save_progress(
        &mut self,
        checkpoints: &[Progress],
        letters: &[LetterChange],
    ) -> Result<(), StoreError>;

    /// Brings the by-stream index toward the newest events, one short transaction at a time
    /// (timer work; may do nothing). Answers whether more is left of the pass it began: the
    /// caller calls again once whatever waits (appends) has run.
    fn index_tail(&mut self) -> Result<bool, StoreError>;

    /// Whether the by-stream index is so far behind that a piece of it should go before
    /// the next append.
    fn index_behind(&self) -> bool;

    /// Deletes the checkpoints of `subscription` of another concurrency than `partitions`
    /// that the current layout has passed; answers whether any remain.
    fn drop_covered_layouts(
        &mut self,
        subscription: &str,
        partitions: usize,
    ) -> Result<bool, StoreError>;

    /// Deletes at most `batch` events that every subscription of `subscriptions` (name,
    /// partitions) has processed, as `retention` allows; answers how many went.
    fn prune(
        &mut self,
        retention: &Retention,
        subscriptions: &[(String, usize)],
        batch: u64,
    ) -> Result<u64, StoreError>;

    /// Stores `queued` dead-letter changes, then deletes the letters of `subscription` (all
    /// when `None`); answers how many went.
    fn delete_dead_letters(
        &mut self,
        queued: &[LetterChange],
        subscription: Option<&str>,
    ) -> Result<usize, StoreError>;

    /// Stores `queued` dead-letter changes, then runs `job` and stores the checkpoint it
    /// returns, all in one transaction: a projection's read model commits with its
    /// checkpoint, or neither does (when the checkpoint's claim no longer holds, nothing of
    /// the job is stored and this answers [`ProjectError::Fenced`]).
    fn project(&mut self, queued: &[LetterChange], job: ProjectionJob) -> Result<(), ProjectError>;
}

/// The readers' side of a database: safe to share between threads, and used off the
/// arbiters (see [`in_background`]).
pub(crate) trait LogReader: Send + Sync + 'static {
    /// Up to `limit` events of any of `types` after `after`, oldest first, and the head
    /// read in the same snapshot.
    fn events_of_types_after(
        &self,
        types: &[String],
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Record>, u64), StoreError>;

    /// The version `stream` is at (0 for a stream never written).
    fn stream_version(&self, stream: &str) -> Result<u64, StoreError>;

    /// Up to `limit` dead letters of `subscription` (all when `None`) with ids above
    /// `after`, oldest first, each with its event ready to be redriven.
    fn dead_letters(
        &self,
        subscription: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// The dead letters an operator asked to redrive (`actorbus dlq redrive`), oldest first.
    fn requested_redrives(&self) -> Result<Vec<DeadLetter>, StoreError>;
}

/// A shared reader.
pub(crate) type Reader = Arc<dyn LogReader>;

/// A change in a process's share of a store that several processes run on (PostgreSQL).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // only PostgreSQL is shared
pub(crate) enum Change {
    /// This process claimed these partitions.
    Claimed(Vec<Claim>),
    /// Another live process is due these (subscription, partition): hand them nothing more,
    /// let their actors finish what they hold, write their checkpoints, then call the
    /// [`Handoff`] for each; only then is the claim let go (so the next owner starts where
    /// this one stopped, and a stream's events are never handled by two processes at once).
    Release(Vec<(String, usize)>, Handoff),
    /// This process no longer owns these (subscription, partition): another live process
    /// was due them, or its claim lapsed while it stalled.
    Released(Vec<(String, usize)>),
    /// Another process appended events up to this position.
    Appended(u64),
}

/// Says a released partition is drained and checkpointed: its claim may go.
#[derive(Clone)]
pub(crate) struct Handoff(pub(crate) Arc<dyn Fn(String, usize) + Send + Sync>);

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handoff")
    }
}

/// A partition this process claimed: its token fences every write for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // only PostgreSQL is shared
pub(crate) struct Claim {
    pub(crate) subscription: String,
    pub(crate) partition: usize,
    pub(crate) token: i64,
    /// The stored checkpoint when it was claimed: where its actor starts again.
    pub(crate) checkpoint: u64,
}

/// Where a [`Coordination`] reports its changes.
pub(crate) type Report = Box<dyn Fn(Change) + Send>;

/// What a store shared by several processes runs beside the writer (PostgreSQL: the
/// member's heartbeat, its claims, and wake-ups on other processes' appends), started once
/// the router exists. `start` answers the function that stops it: that lets every claim go
/// and leaves the membership, once the last checkpoints are written.
pub(crate) type Coordination =
    Box<dyn FnOnce(Report) -> std::io::Result<Box<dyn FnOnce() + Send>> + Send>;

/// Runs `read` on the blocking pool, so that no arbiter waits for the database.
///
/// # Errors
/// What `read` met; a read that panicked as [`StoreError::Database`].
pub(crate) fn in_background<T: Send + 'static>(
    reader: &Reader,
    read: impl FnOnce(&dyn LogReader) -> Result<T, StoreError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, StoreError>> + 'static {
    let reader = Arc::clone(reader);
    async move {
        actix_rt::task::spawn_blocking(move || read(&*reader))
            .await
            .map_err(StoreError::database)?
    }
}

/// A store opened for a bus: claimed (one bus per store), migrated, its subscriptions
/// registered.
pub(crate) struct Opened {
    pub(crate) writer: Box<dyn LogWriter>,
    pub(crate) reader: Reader,
    /// The newest position at start.
    pub(crate) head: u64,
    /// Where the actors of each subscription resume, in the order given to [`open`].
    pub(crate) resumes: Vec<Resume>,
    /// Other processes may run on the store too: this process's actors run only the
    /// partitions it claims, as [`Coordination`] reports.
    pub(crate) coordination: Option<Coordination>,
}

/// Why a build without the `postgres` feature cannot open a PostgreSQL store.
#[cfg(not(feature = "postgres"))]
pub(crate) const NO_POSTGRES: &str =
    "this build has no PostgreSQL support: enable actorbus's `postgres` feature";

/// Claims and opens the store `config` names, and registers `subscriptions` (rebuilding
/// the projections an operator asked to); `None` for a bus in memory.
///
/// # Errors
/// [`StoreError::InUse`] when another bus runs on it; whatever opening met (see
/// [`StoreError`]); a failed rebuild as [`StoreError::Rebuild`]; a PostgreSQL URL in a
/// build without the `postgres` feature as a connection error ([`NO_POSTGRES`]).
pub(crate) fn open(
    config: &StoreConfig,
    subscriptions: Vec<SubscriptionSpec>,
) -> Result<Option<Opened>, StoreError> {
    match config {
        StoreConfig::Memory => Ok(None),
        StoreConfig::Sqlite(options) => {
            crate::storage::sqlite::open(options, subscriptions).map(Some)
        }
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(options) => {
            crate::storage::postgres::open(options, subscriptions).map(Some)
        }
        #[cfg(not(feature = "postgres"))]
        StoreConfig::Postgres(_) => Err(StoreError::connection(std::io::Error::other(NO_POSTGRES))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_keep_every_record_in_order_and_one_record_inline() {
        let one: Places = [(7, 1)].into_iter().collect();
        assert_eq!(one, Places::One([(7, 1)]));
        assert_eq!(one.as_slice(), [(7, 1)]);
        for n in [0u64, 2, 3, 40] {
            let places: Places = (0..n).map(|i| (100 + i, i + 1)).collect();
            assert!(matches!(places, Places::Many(_)), "{n}: {places:?}");
            let expected: Vec<(u64, u64)> = (0..n).map(|i| (100 + i, i + 1)).collect();
            assert_eq!(places.as_slice(), expected.as_slice(), "{n}");
        }
    }
}
