//! StorageActor: the single writer of the store, alone on an arbiter thread of its own (so
//! its blocking diesel calls stall nothing else, and shutdown can join the thread). The
//! router sends it each intake chunk as one [`Append`] (group commit); checkpoints ride along.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::storage::log::{micros, Unit, UnitOutcome, Writer};
use crate::storage::models::CheckpointRow;
use crate::storage::pool::{SqlitePool, WalCheckpointer};
use crate::storage::StoreError;

/// Append these units in one transaction, with the checkpoints advanced since the last commit.
pub(crate) struct Append(pub(crate) Vec<Unit>);

impl Message for Append {
    /// The units come back, so that the router can deliver them without a copy.
    type Result = (Vec<Unit>, Result<Vec<UnitOutcome>, StoreError>);
}

/// Write the advanced checkpoints now (idle bus, shutdown).
pub(crate) struct FlushCheckpoints;

impl Message for FlushCheckpoints {
    type Result = Result<(), StoreError>;
}

/// Positions handler actors have reached, written in batches with the next commit: a
/// handler never waits for its checkpoint, and each actor has one entry, so memory is flat.
#[derive(Debug, Default)]
pub(crate) struct CheckpointBoard {
    dirty: Mutex<HashMap<ActorKey, Reached>>,
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
    /// Stopped and joined when the actor goes.
    _checkpointer: WalCheckpointer,
}

impl StorageActor {
    pub(crate) fn new(writer: Writer, board: Arc<CheckpointBoard>, pool: SqlitePool) -> Self {
        Self {
            writer,
            board,
            _checkpointer: WalCheckpointer::start(pool),
        }
    }
}

impl Actor for StorageActor {
    type Context = Context<Self>;
}

impl Handler<Append> for StorageActor {
    type Result = MessageResult<Append>;

    fn handle(&mut self, Append(units): Append, _ctx: &mut Context<Self>) -> Self::Result {
        let checkpoints = self.board.take();
        let result = self.writer.append(&units, &checkpoints);
        if let Err(e) = &result {
            log::error!("append of {} unit(s) failed: {e}", units.len());
            self.board.restore(checkpoints);
        }
        MessageResult((units, result))
    }
}

impl Handler<FlushCheckpoints> for StorageActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _: FlushCheckpoints, _ctx: &mut Context<Self>) -> Self::Result {
        let checkpoints = self.board.take();
        let result = self.writer.save_checkpoints(&checkpoints);
        if result.is_err() {
            self.board.restore(checkpoints);
        }
        result
    }
}
