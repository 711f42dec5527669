//! StorageActor: the single writer of the store, alone on an arbiter thread of its own (so
//! its blocking diesel calls stall nothing else, and shutdown can join the thread). The
//! router sends it each intake chunk as one [`Append`] (group commit, two outstanding at
//! most); checkpoints, dead letters and the stream index of the newest events are written
//! on the router's 200 ms timer ([`FlushCheckpoints`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use diesel::prelude::*;

use crate::config::StartFrom;
use crate::storage::log::{self as store_log, micros, Unit, UnitOutcome, Writer};
use crate::storage::models::CheckpointRow;
use crate::storage::models::NewDeadLetter;
use crate::storage::pool::{self, classify, SqlitePool, WalCheckpointer};
use crate::storage::SqliteOptions;
use crate::storage::{Retention, StoreError};
use actix::Arbiter;

/// Append these units in one transaction, with the checkpoints advanced since the last commit.
pub(crate) struct Append(pub(crate) Vec<Unit>);

impl Message for Append {
    /// The units come back, so that the router can deliver them without a copy.
    type Result = (Vec<Unit>, Result<Vec<UnitOutcome>, StoreError>);
}

/// Write the advanced checkpoints and index the newest events by stream (timer, shutdown).
pub(crate) struct FlushCheckpoints;

impl Message for FlushCheckpoints {
    type Result = Result<(), StoreError>;
}

/// Positions handler actors have reached, written in batches with the next commit: a
/// handler never waits for its checkpoint, and each actor has one entry, so memory is flat.
#[derive(Debug, Default)]
pub(crate) struct CheckpointBoard {
    dirty: Mutex<HashMap<ActorKey, Reached>>,
    /// Subscriptions whose stored checkpoints were written for another concurrency.
    relayout: Mutex<Vec<(String, i32)>>,
    /// Dead letters not yet stored: written in the same transaction as the checkpoints, so a
    /// checkpoint never passes an event whose dead letter is not kept.
    letters: Mutex<Vec<NewDeadLetter>>,
}

/// (subscription, partition): one handler actor.
type ActorKey = (Arc<str>, i32);
/// (partitions, position).
type Reached = (i32, i64);

impl CheckpointBoard {
    pub(crate) fn advance(
        &self,
        handler: &Arc<str>,
        partition: usize,
        partitions: usize,
        position: u64,
    ) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let entry = dirty
            .entry((Arc::clone(handler), partition as i32))
            .or_insert((partitions as i32, 0));
        entry.1 = entry.1.max(position as i64);
    }

    /// Marks `handler`'s stored checkpoints of another layout for deletion at the next write.
    pub(crate) fn relayout(&self, handler: &str, partitions: usize) {
        self.relayout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((handler.to_owned(), partitions as i32));
    }

    fn pending_relayout(&self) -> Vec<(String, i32)> {
        self.relayout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn relayout_done(&self, handler: &str) {
        self.relayout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(h, _)| h != handler);
    }

    /// Queues a dead letter for the next write.
    pub(crate) fn add_letter(&self, letter: NewDeadLetter) {
        self.letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(letter);
    }

    fn take_letters(&self) -> Vec<NewDeadLetter> {
        std::mem::take(&mut *self.letters.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn restore_letters(&self, mut letters: Vec<NewDeadLetter>) {
        let mut queued = self.letters.lock().unwrap_or_else(|p| p.into_inner());
        letters.append(&mut queued);
        *queued = letters;
    }

    fn take(&self) -> Vec<CheckpointRow> {
        let now = micros(std::time::SystemTime::now());
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        dirty
            .drain()
            .map(
                |((handler, partition), (partitions, position))| CheckpointRow {
                    handler: handler.to_string(),
                    partition,
                    partitions,
                    position,
                    updated_at: now,
                },
            )
            .collect()
    }

    /// Puts rows back after a failed write, unless a newer position arrived meanwhile.
    fn restore(&self, rows: Vec<CheckpointRow>) {
        for row in rows {
            let handler: Arc<str> = Arc::from(row.handler.as_str());
            self.advance(
                &handler,
                row.partition as usize,
                row.partitions as usize,
                row.position as u64,
            );
        }
    }
}

pub(crate) struct StorageActor {
    writer: Writer,
    board: Arc<CheckpointBoard>,
    /// (subscription, partitions) of this bus: retention keeps what any of them still needs.
    subscriptions: Vec<(String, usize)>,
    retention: Retention,
    /// Stopped and joined when the actor goes.
    _checkpointer: WalCheckpointer,
}

impl StorageActor {
    pub(crate) fn new(
        writer: Writer,
        board: Arc<CheckpointBoard>,
        pool: SqlitePool,
        subscriptions: Vec<(String, usize)>,
        retention: Retention,
    ) -> Self {
        Self {
            writer,
            board,
            subscriptions,
            retention,
            _checkpointer: WalCheckpointer::start(pool),
        }
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.retention.is_enabled() {
            ctx.run_interval(RETENTION_EVERY, |act, _| act.prune());
        }
    }
}

/// How often retention looks for processed events to delete.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Most events one retention pass deletes (one short transaction).
const RETENTION_BATCH: i64 = 10_000;

impl StorageActor {
    /// Deletes what every subscription has processed, as the retention policy allows.
    fn prune(&mut self) {
        let retention = self.retention;
        let subscriptions = self.subscriptions.clone();
        let now = micros(std::time::SystemTime::now());
        let result = self.writer.transaction(|conn| {
            let rows = store_log::load_all_checkpoints(conn)?;
            // A subscription of this bus without a checkpoint for each actor still needs everything.
            let incomplete = subscriptions.iter().any(|(name, partitions)| {
                rows.iter().filter(|r| r.handler == *name).count() < *partitions
            });
            let safe = if incomplete {
                0
            } else {
                rows.iter().map(|r| r.position).min().unwrap_or(0)
            };
            store_log::prune(conn, &retention, safe, now, RETENTION_BATCH)
        });
        match result {
            Ok(0) => {}
            Ok(n) => log::info!("retention deleted {n} processed event(s)"),
            Err(e) => log::warn!("retention pass failed: {e}"),
        }
    }
}

/// Delete dead letters: redriven and handled, or purged. Answers how many went.
pub(crate) struct DeleteDeadLetters {
    pub(crate) ids: Option<Vec<i64>>,
    pub(crate) handler: Option<String>,
}

impl Message for DeleteDeadLetters {
    type Result = Result<usize, StoreError>;
}

impl Handler<DeleteDeadLetters> for StorageActor {
    type Result = Result<usize, StoreError>;

    fn handle(&mut self, msg: DeleteDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        use crate::storage::schema::dead_letters;
        self.writer.transaction(|conn| {
            let mut query = diesel::delete(dead_letters::table).into_boxed();
            if let Some(ids) = &msg.ids {
                query = query.filter(dead_letters::id.eq_any(ids.clone()));
            }
            if let Some(h) = &msg.handler {
                query = query.filter(dead_letters::handler.eq(h.clone()));
            }
            query.execute(conn)
        })
    }
}

/// Work a projection does in the writer's transaction, with its checkpoint.
pub(crate) type ProjectionJob =
    Box<dyn FnOnce(&mut diesel::SqliteConnection) -> Result<(), String> + Send>;

/// Run a projection's work (read model + checkpoint) in one transaction.
pub(crate) struct Project(pub(crate) ProjectionJob);

impl Message for Project {
    type Result = Result<(), String>;
}

impl Handler<Project> for StorageActor {
    type Result = Result<(), String>;

    fn handle(&mut self, Project(job): Project, _ctx: &mut Context<Self>) -> Self::Result {
        let mut failure = None;
        let result = self.writer.transaction(|conn| {
            // User code on the writer's thread: a panic must not take the writer down.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)))
                .unwrap_or_else(|p| {
                    Err(format!(
                        "projection panicked: {}",
                        crate::actors::handler::panic_message(&*p)
                    ))
                });
            match outcome {
                Ok(()) => Ok(()),
                Err(e) => {
                    failure = Some(e);
                    Err(diesel::result::Error::RollbackTransaction)
                }
            }
        });
        match (result, failure) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.to_string()),
            (Ok(()), None) => Ok(()),
        }
    }
}

impl Handler<Append> for StorageActor {
    type Result = MessageResult<Append>;

    fn handle(&mut self, Append(units): Append, _ctx: &mut Context<Self>) -> Self::Result {
        // Checkpoints and dead letters are written by FlushCheckpoints, on a timer: carrying
        // them in every append would cost each small commit a few more page writes.
        let result = self.writer.append(&units, &[], &[]);
        if let Err(e) = &result {
            log::error!("append of {} unit(s) failed: {e}", units.len());
        }
        MessageResult((units, result))
    }
}

impl Handler<FlushCheckpoints> for StorageActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _: FlushCheckpoints, _ctx: &mut Context<Self>) -> Self::Result {
        let letters = self.board.take_letters();
        let checkpoints = self.board.take();
        let result = self.writer.save_checkpoints(&checkpoints, &letters);
        if result.is_err() {
            self.board.restore(checkpoints);
            self.board.restore_letters(letters);
            return result;
        }
        // The same timer keeps the un-indexed tail a moment's worth of events.
        if let Err(e) = self.writer.index_tail() {
            log::warn!("indexing the newest events by stream failed (retried later): {e}");
        }
        for (handler, partitions) in self.board.pending_relayout() {
            match self
                .writer
                .transaction(|conn| store_log::drop_stale_checkpoints(conn, &handler, partitions))
            {
                Ok(true) => self.board.relayout_done(&handler),
                Ok(false) => {}
                Err(e) => log::warn!("could not drop checkpoints of an old concurrency: {e}"),
            }
        }
        Ok(())
    }
}

/// An opened SQLite store, before its actors start.
pub(crate) struct OpenStore {
    pub(crate) pool: SqlitePool,
    pub(crate) storage: Addr<StorageActor>,
    pub(crate) thread: Arbiter,
    pub(crate) board: Arc<CheckpointBoard>,
    pub(crate) head: i64,
    checkpoints: Vec<CheckpointRow>,
}

impl OpenStore {
    /// Opens the store and starts its writer; `subscriptions` (name, concurrency) are the
    /// bus's, which retention must not outrun.
    ///
    /// # Errors
    /// Whatever opening the file met (see [`StoreError`]).
    pub(crate) fn start(
        options: &SqliteOptions,
        subscriptions: Vec<(String, usize)>,
    ) -> Result<Self, StoreError> {
        let path = options.path.as_path();
        let pool = pool::open(options)?;
        let mut conn = pool
            .get()
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let head = store_log::head(&mut conn).map_err(|e| classify(path, e))?;
        let checkpoints =
            store_log::load_all_checkpoints(&mut conn).map_err(|e| classify(path, e))?;
        drop(conn);
        let writer_conn = pool
            .get()
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let board = Arc::new(CheckpointBoard::default());
        let writer = Writer::new(writer_conn, path.to_path_buf());
        let actor_board = Arc::clone(&board);
        let actor_pool = pool.clone();
        let retention = options.retention;
        // A thread of its own for the single writer: its diesel calls block only it. A plain
        // arbiter rather than a SyncArbiter, because shutdown must be able to join the thread
        // while the actix system still runs.
        let thread = Arbiter::new();
        let storage = StorageActor::start_in_arbiter(&thread.handle(), move |_| {
            StorageActor::new(writer, actor_board, actor_pool, subscriptions, retention)
        });
        Ok(OpenStore {
            pool,
            storage,
            thread,
            board,
            head,
            checkpoints,
        })
    }

    /// Where each of the `partitions` actors of `handler` resumes. A checkpoint written with
    /// another concurrency maps streams to other actors: then every actor resumes from the
    /// lowest position (events may be handled again, none is skipped).
    pub(crate) fn starts(
        &self,
        handler: &str,
        partitions: usize,
        start_from: StartFrom,
    ) -> Vec<u64> {
        let rows: Vec<_> = self
            .checkpoints
            .iter()
            .filter(|c| c.handler == handler)
            .collect();
        if rows.is_empty() {
            let start = match start_from {
                StartFrom::Beginning => 0,
                StartFrom::Now => self.head.max(0) as u64,
            };
            return vec![start; partitions];
        }
        let same_layout =
            rows.iter().all(|c| c.partitions as usize == partitions) && rows.len() == partitions;
        if same_layout {
            let mut starts = vec![0; partitions];
            for c in rows {
                starts[c.partition as usize] = c.position.max(0) as u64;
            }
            return starts;
        }
        let lowest = rows.iter().map(|c| c.position).min().unwrap_or(0).max(0) as u64;
        self.board.relayout(handler, partitions);
        vec![lowest; partitions]
    }
}
