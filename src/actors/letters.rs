//! Where dead letters are kept while the bus runs: a list in memory, or the store's
//! `dead_letters` table (queued on the checkpoint board, written by the storage actor with
//! the checkpoints, read through the pool). Handler actors add to it; the bus handle lists,
//! redrives and purges.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix::Addr;

use crate::actors::storage::{CheckpointBoard, DeleteDeadLetters, StorageActor};
use crate::dead_letter::DeadLetter;
use crate::event::Record;
use crate::storage::backend::LetterChange;
use crate::storage::backend::{in_background, LetterClaim, Reader};
use crate::storage::convert::micros;
use crate::storage::models::NewDeadLetter;
use crate::storage::StoreError;

/// The dead letters of a bus: a list in memory, or the `dead_letters` table of the store.
#[derive(Debug, Default)]
pub(crate) struct DeadLetters {
    next_id: AtomicU64,
    letters: Mutex<Vec<DeadLetter>>,
    store: Option<StoredLetters>,
}

/// Where a durable bus keeps its dead letters: queued on the checkpoint board, written by the
/// storage actor with the checkpoints, read through the store's reader.
struct StoredLetters {
    board: Arc<CheckpointBoard>,
    storage: Addr<StorageActor>,
    reader: Reader,
}

impl std::fmt::Debug for StoredLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredLetters")
    }
}

impl DeadLetters {
    /// Dead letters kept in the store of a durable bus.
    pub(crate) fn stored(
        board: Arc<CheckpointBoard>,
        storage: Addr<StorageActor>,
        reader: Reader,
    ) -> Self {
        Self {
            store: Some(StoredLetters {
                board,
                storage,
                reader,
            }),
            ..Self::default()
        }
    }

    /// Keeps a letter; `claim` is the claim it was given up under, on a shared store.
    pub(crate) fn push(
        &self,
        handler: &str,
        record: Record,
        attempts: u32,
        last_error: String,
        claim: Option<LetterClaim>,
    ) {
        log::warn!(
            "handler `{handler}` gave up on event {} ({}) after {attempts} attempt(s): {last_error}",
            record.meta.id,
            record.meta.event_type
        );
        if let (Some(store), Some(position)) = (&self.store, record.meta.position) {
            // Written no later than the checkpoint that passes this event: same transaction.
            // A redriven letter that fails again is updated in place (one per handler and event).
            store.board.letter(LetterChange::Keep(
                NewDeadLetter {
                    position: position as i64,
                    handler: handler.to_owned(),
                    attempts: attempts as i32,
                    last_error,
                    failed_at: micros(SystemTime::now()),
                },
                claim,
            ));
            return;
        }
        let letter = DeadLetter::new(
            self.next_id.fetch_add(1, Relaxed) + 1,
            handler.to_owned(),
            attempts,
            last_error,
            SystemTime::now(),
            record,
        );
        self.lock().push(letter);
    }

    /// The letters of `handler` (all when `None`), oldest first; stored ones as committed.
    pub(crate) fn list(&self, handler: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(self
                .lock()
                .iter()
                .filter(|l| handler.is_none_or(|h| l.handler_name() == h))
                .cloned()
                .collect());
        };
        store.reader.dead_letters(handler, 0, usize::MAX)
    }

    /// Up to `limit` letters of `handler` (all when `None`) with ids above `after`, oldest
    /// first, including every letter given up on before this call (read-your-writes: what
    /// the handlers queued is written first). Reads off the arbiter.
    pub(crate) async fn page(
        &self,
        handler: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(self
                .lock()
                .iter()
                .filter(|l| handler.is_none_or(|h| l.handler_name() == h) && l.id() > after)
                .take(limit)
                .cloned()
                .collect());
        };
        // A writer that is gone (after shutdown) wrote everything it held as it went.
        if let Ok(written) = store
            .storage
            .send(crate::actors::storage::FlushCheckpoints)
            .await
        {
            written?;
        }
        let handler = handler.map(str::to_owned);
        in_background(&store.reader, move |reader| {
            reader.dead_letters(handler.as_deref(), after, limit)
        })
        .await
    }

    /// The letters to hand back to `handler`. In memory they leave the list now; stored ones
    /// stay until their redelivery has been handled (see [`resolved`](Self::resolved)).
    pub(crate) fn take_for_redrive(&self, handler: &str) -> Result<Vec<DeadLetter>, StoreError> {
        if self.store.is_some() {
            return self.list(Some(handler));
        }
        Ok(self.take_in_memory(Some(handler)))
    }

    /// Stored letters whose redelivery was handled: deleted with the next checkpoint write,
    /// in order with the letters given up on meanwhile.
    pub(crate) fn resolved(&self, ids: impl IntoIterator<Item = i64>) {
        if let Some(store) = &self.store {
            for id in ids {
                store.board.letter(LetterChange::Resolved(id));
            }
        }
    }

    /// Deletes the letters of `handler` (all when `None`); returns how many.
    pub(crate) async fn purge(&self, handler: Option<&str>) -> Result<usize, StoreError> {
        let Some(store) = &self.store else {
            return Ok(self.take_in_memory(handler).len());
        };
        store
            .storage
            .send(DeleteDeadLetters {
                handler: handler.map(str::to_owned),
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?
    }

    fn take_in_memory(&self, handler: Option<&str>) -> Vec<DeadLetter> {
        let mut letters = self.lock();
        let (taken, kept) = std::mem::take(&mut *letters)
            .into_iter()
            .partition(|l| handler.is_none_or(|h| l.handler_name() == h));
        *letters = kept;
        taken
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DeadLetter>> {
        self.letters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
