//! StorageActor: the single writer of the store, alone on an arbiter thread of its own (so
//! its blocking database calls stall nothing else, and shutdown can join the thread). The
//! router sends it each intake chunk as one [`Append`] (group commit, two outstanding at
//! most); checkpoints, dead letters and the stream index of the newest events are written
//! on the router's 200 ms timer ([`FlushCheckpoints`]), the index in pieces, each sent to
//! itself ([`IndexTail`]) so that the appends waiting meanwhile go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::actors::thread::ActorThread;
use crate::storage::backend::{
    LetterChange, LogWriter, Progress, ProjectError, ProjectionJob, Unit, UnitOutcome,
};
use crate::storage::convert::micros;
use crate::storage::models::CheckpointRow;
use crate::storage::registry::Resume;
use crate::storage::{Retention, StoreError};

/// Append these units in one transaction (group commit); checkpoints go with [`FlushCheckpoints`].
/// The list the outcomes go in comes empty, with room for one per unit: allocated and freed
/// in the router's thread. (Freed there after the writer's thread allocated it, it took the
/// writer's malloc arena's lock, against the writer's own allocations, at every commit.)
pub(crate) struct Append {
    pub(crate) units: Vec<Unit>,
    pub(crate) outcomes: Vec<UnitOutcome>,
}

impl Append {
    /// `units`, and an empty list of outcomes with room for each.
    pub(crate) fn new(units: Vec<Unit>) -> Self {
        let outcomes = Vec::with_capacity(units.len());
        Self { units, outcomes }
    }
}

impl Message for Append {
    /// The units come back, so that the router can deliver them without a copy.
    type Result = (Vec<Unit>, Result<Vec<UnitOutcome>, StoreError>);
}

/// Write the advanced checkpoints and index the newest events by stream (timer, shutdown).
pub(crate) struct FlushCheckpoints;

impl Message for FlushCheckpoints {
    type Result = Result<(), StoreError>;
}

/// Positions handler actors have reached and dead-letter changes, written in batches: a
/// handler never waits for its checkpoint, and each actor has one entry, so memory is flat.
/// Both sit behind one lock and are taken together, so a checkpoint is never stored ahead of
/// the dead letter of an event it passes.
#[derive(Debug, Default)]
pub(crate) struct CheckpointBoard {
    state: Mutex<Board>,
}

#[derive(Debug, Default)]
struct Board {
    dirty: HashMap<ActorKey, Reached>,
    letters: Vec<LetterChange>,
}

/// (subscription, partition): one handler actor.
type ActorKey = (Arc<str>, i32);
/// (partitions, position, the claim it was reached under).
type Reached = (i32, i64, Option<i64>);

/// Merges a newly reached position into an entry: a newer claim replaces what an older one
/// reached (positions under different claims do not compare), an older one is dropped.
fn merge(entry: &mut Reached, position: i64, fence: Option<i64>) {
    if fence > entry.2 {
        entry.1 = position;
        entry.2 = fence;
    } else if fence == entry.2 {
        entry.1 = entry.1.max(position);
    }
}

impl CheckpointBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn advance(
        &self,
        subscription: &Arc<str>,
        partition: usize,
        partitions: usize,
        position: u64,
        fence: Option<i64>,
    ) {
        let mut board = self.lock();
        let entry = board
            .dirty
            .entry((Arc::clone(subscription), partition as i32))
            .or_insert((partitions as i32, 0, fence));
        merge(entry, position as i64, fence);
    }

    /// Queues a dead-letter change for the next write.
    pub(crate) fn letter(&self, change: LetterChange) {
        self.lock().letters.push(change);
    }

    /// Everything to write: the dead-letter changes and the checkpoints.
    fn take(&self) -> (Vec<LetterChange>, Vec<Progress>) {
        let now = micros(std::time::SystemTime::now());
        let mut board = self.lock();
        let letters = std::mem::take(&mut board.letters);
        let rows = board
            .dirty
            .drain()
            .map(
                |((handler, partition), (partitions, position, fence))| Progress {
                    row: CheckpointRow {
                        handler: handler.to_string(),
                        partition,
                        partitions,
                        position,
                        updated_at: now,
                    },
                    fence,
                },
            )
            .collect();
        (letters, rows)
    }

    /// Only the dead-letter changes (a projection's transaction stores them with its own).
    fn take_letters(&self) -> Vec<LetterChange> {
        std::mem::take(&mut self.lock().letters)
    }

    /// Puts what a failed write took back, ahead of anything queued since, unless a newer
    /// position arrived meanwhile.
    fn restore(&self, mut letters: Vec<LetterChange>, rows: Vec<Progress>) {
        let mut board = self.lock();
        letters.append(&mut board.letters);
        board.letters = letters;
        for Progress { row, fence } in rows {
            let entry = board
                .dirty
                .entry((Arc::from(row.handler.as_str()), row.partition))
                .or_insert((row.partitions, 0, fence));
            merge(entry, row.position, fence);
        }
    }
}

pub(crate) struct StorageActor {
    /// The database's writer; dropping it releases the store.
    writer: Box<dyn LogWriter>,
    board: Arc<CheckpointBoard>,
    /// (subscription, partitions) of this bus: retention keeps what any of them still needs.
    subscriptions: Vec<(String, usize)>,
    /// Subscriptions whose checkpoints of an earlier concurrency are still stored: dropped
    /// once the current layout has passed them.
    relayouts: Vec<(String, usize)>,
    retention: Retention,
    /// Each group commit's size and duration.
    metrics: crate::telemetry::BusMetrics,
    /// An `IndexTail` is on its way to this actor.
    index_queued: bool,
}

/// The actix system may stop before the application calls `shutdown` (a signal handler that
/// stops the system, as web servers have): the arbiters' actors are then dropped without
/// being stopped. The writer still writes what the board holds (the checkpoints of what was
/// handled and the dead letters given up on), so none of it is handled or failed again.
impl Drop for StorageActor {
    fn drop(&mut self) {
        let (letters, checkpoints) = self.board.take();
        if letters.is_empty() && checkpoints.is_empty() {
            return;
        }
        match self.writer.save_progress(&checkpoints, &letters) {
            Ok(()) => log::info!(
                "the store's writer stopped with the bus running: wrote {} checkpoint(s) and {} dead-letter change(s)",
                checkpoints.len(),
                letters.len()
            ),
            Err(e) => log::error!(
                "writing the last checkpoints as the writer stopped failed: {}",
                crate::error::chain(&e)
            ),
        }
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    /// Every address is gone (the bus was dropped without `shutdown`, or its actix system
    /// ended): the writer's own system ends with it, and its thread.
    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        actix_rt::System::current().stop();
    }
}

/// Delete what retention allows (the router's timer sends it: the writer has no timers of its
/// own, so that it stops once its last address is gone).
pub(crate) struct Prune;

impl Message for Prune {
    type Result = ();
}

impl Handler<Prune> for StorageActor {
    type Result = ();

    fn handle(&mut self, _: Prune, _ctx: &mut Context<Self>) {
        if self.retention.is_enabled() {
            self.prune();
        }
    }
}

/// Most events one retention pass deletes (one short transaction).
const RETENTION_BATCH: u64 = 10_000;

impl StorageActor {
    /// Runs `f` with the dead-letter changes queued so far, which it stores first, so
    /// nothing it writes (a purge, a projection's checkpoint) lands ahead of them; if it
    /// fails they go back on the board, ahead of any queued since.
    fn after_queued_letters<T, E>(
        &mut self,
        f: impl FnOnce(&mut dyn LogWriter, &[LetterChange]) -> Result<T, E>,
    ) -> Result<T, E> {
        let letters = self.board.take_letters();
        let result = f(&mut *self.writer, &letters);
        if result.is_err() {
            self.board.restore(letters, Vec::new());
        }
        result
    }

    /// Deletes what every subscription has processed, as the retention policy allows.
    fn prune(&mut self) {
        match self
            .writer
            .prune(&self.retention, &self.subscriptions, RETENTION_BATCH)
        {
            Ok(0) => {}
            Ok(n) => log::info!("retention deleted {n} processed event(s)"),
            Err(e) => log::warn!("retention pass failed: {}", crate::error::chain(&e)),
        }
    }
}

/// Purge the dead letters of a handler (all when `None`). Answers how many went.
pub(crate) struct DeleteDeadLetters {
    pub(crate) handler: Option<String>,
}

impl Message for DeleteDeadLetters {
    type Result = Result<usize, StoreError>;
}

impl Handler<DeleteDeadLetters> for StorageActor {
    type Result = Result<usize, StoreError>;

    fn handle(&mut self, msg: DeleteDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        // Letters given up on before the purge are purged too, not written after it.
        self.after_queued_letters(|writer, queued| {
            writer.delete_dead_letters(queued, msg.handler.as_deref())
        })
    }
}

/// Run a projection's work (read model + checkpoint) in one transaction.
pub(crate) struct Project(pub(crate) ProjectionJob);

impl Message for Project {
    type Result = Result<(), ProjectError>;
}

impl Handler<Project> for StorageActor {
    type Result = Result<(), ProjectError>;

    fn handle(&mut self, Project(job): Project, _ctx: &mut Context<Self>) -> Self::Result {
        // Dead letters given up on so far go in this transaction too: the projection's
        // checkpoint may pass an event whose letter is still queued.
        self.after_queued_letters(|writer, queued| writer.project(queued, job))
    }
}

impl Handler<Append> for StorageActor {
    type Result = MessageResult<Append>;

    fn handle(
        &mut self,
        Append { units, outcomes }: Append,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        if self.writer.index_behind() {
            // A piece first: appends go at the pace the index keeps.
            self.index_tail(ctx);
        }
        // Checkpoints and dead letters are written by FlushCheckpoints, on a timer: carrying
        // them in every append would cost each small commit a few more page writes.
        let events: usize = units.iter().map(|u| u.records.len()).sum();
        let span = crate::telemetry::commit_span(events);
        let _entered = span.as_ref().map(tracing::Span::enter);
        let started = std::time::Instant::now();
        let result = self.writer.append(&units, outcomes);
        match &result {
            Ok(outcomes) => {
                let metrics = &self.metrics;
                metrics
                    .commit_seconds
                    .record(started.elapsed().as_secs_f64());
                metrics.commit_events.record(events as f64);
                metrics.commits.increment(1);
                let positions = outcomes.iter().flat_map(|o| match o {
                    UnitOutcome::Stored(places) => places.as_slice(),
                    _ => &[],
                });
                let (mut first, mut last, mut stored) = (None, None, 0);
                for &(position, _) in positions {
                    first = first.or(Some(position));
                    last = Some(position);
                    stored += 1;
                }
                metrics.committed.increment(stored);
                if let Some(span) = &span {
                    span.record("first_position", first);
                    span.record("last_position", last);
                }
            }
            Err(e) => log::error!(
                "append of {} unit(s) failed: {}",
                units.len(),
                crate::error::chain(e)
            ),
        }
        MessageResult((units, result))
    }
}

/// Write the next piece of the stream index's pass (sent to itself, so that the appends
/// waiting meanwhile run first).
struct IndexTail;

impl Message for IndexTail {
    type Result = ();
}

impl Handler<IndexTail> for StorageActor {
    type Result = ();

    fn handle(&mut self, _: IndexTail, ctx: &mut Context<Self>) {
        self.index_queued = false;
        self.index_tail(ctx);
    }
}

impl StorageActor {
    /// One piece of the stream index; the next one after what waits in the mailbox (one
    /// `IndexTail` queued at a time).
    fn index_tail(&mut self, ctx: &mut Context<Self>) {
        match self.writer.index_tail() {
            Ok(true) if !self.index_queued => {
                self.index_queued = true;
                ctx.notify(IndexTail);
            }
            Ok(_) => {}
            Err(e) => log::warn!(
                "indexing the newest events by stream failed (retried later): {}",
                crate::error::chain(&e)
            ),
        }
    }
}

impl Handler<FlushCheckpoints> for StorageActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _: FlushCheckpoints, ctx: &mut Context<Self>) -> Self::Result {
        let (letters, checkpoints) = self.board.take();
        let result = self.writer.save_progress(&checkpoints, &letters);
        if result.is_err() {
            self.board.restore(letters, checkpoints);
            return result;
        }
        // The same timer keeps the un-indexed tail a moment's worth of events.
        self.index_tail(ctx);
        let relayouts = std::mem::take(&mut self.relayouts);
        for (handler, partitions) in relayouts {
            match self.writer.drop_covered_layouts(&handler, partitions) {
                Ok(false) => log::info!(
                    "`{handler}`: checkpoints of its earlier concurrency are passed and dropped"
                ),
                Ok(true) => self.relayouts.push((handler, partitions)),
                Err(e) => {
                    log::warn!(
                        "could not drop checkpoints of an earlier concurrency: {}",
                        crate::error::chain(&e)
                    );
                    self.relayouts.push((handler, partitions));
                }
            }
        }
        Ok(())
    }
}

impl StorageActor {
    /// Starts the writer of an opened store on a thread of its own (`actorbus-writer`),
    /// with an actix system of its own. `layouts` are the (subscription, partitions) of this
    /// bus, in the order of `resumes`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub(crate) fn start_writer(
        writer: Box<dyn LogWriter>,
        layouts: Vec<(String, usize)>,
        resumes: &[Resume],
        retention: Retention,
    ) -> std::io::Result<(Addr<Self>, ActorThread, Arc<CheckpointBoard>)> {
        let relayouts = layouts
            .iter()
            .zip(resumes)
            .filter(|(_, r)| !r.older.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        let board = Arc::new(CheckpointBoard::default());
        let actor = StorageActor {
            writer,
            board: Arc::clone(&board),
            subscriptions: layouts,
            relayouts,
            metrics: crate::telemetry::BusMetrics::default(),
            retention,
            index_queued: false,
        };
        let (arbiter, thread) = ActorThread::spawn("actorbus-writer")?;
        let storage = StorageActor::start_in_arbiter(&arbiter, move |_| actor);
        Ok((storage, thread, board))
    }
}
