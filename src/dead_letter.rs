//! Dead letters: events a handler gave up on, kept with the reason so that they can be listed,
//! redriven to their handler once it is fixed, or purged.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::event::{Metadata, Record};

/// An event that one handler could not process.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    id: u64,
    handler: String,
    attempts: u32,
    last_error: String,
    failed_at: SystemTime,
    pub(crate) record: Record,
}

impl DeadLetter {
    /// Sequence number of the dead letter (unique within the bus).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The subscription that gave up.
    pub fn handler(&self) -> &str {
        &self.handler
    }
    /// The event's metadata (id, stream, type ...).
    pub fn event(&self) -> &Metadata {
        &self.record.meta
    }
    /// Attempts made, panics included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// The last error (or panic message, or decoding error).
    pub fn last_error(&self) -> &str {
        &self.last_error
    }
    /// When the handler gave up.
    pub fn failed_at(&self) -> SystemTime {
        self.failed_at
    }
}

/// The in-memory dead-letter list of a bus, in the order the letters arrived.
#[derive(Debug, Default)]
pub(crate) struct DeadLetters {
    next_id: AtomicU64,
    letters: Mutex<Vec<DeadLetter>>,
}

impl DeadLetters {
    pub(crate) fn push(&self, handler: &str, record: Record, attempts: u32, last_error: String) {
        log::warn!(
            "handler `{handler}` gave up on event {} ({}) after {attempts} attempt(s): {last_error}",
            record.meta.id,
            record.meta.event_type
        );
        let letter = DeadLetter {
            id: self.next_id.fetch_add(1, Relaxed) + 1,
            handler: handler.to_owned(),
            attempts,
            last_error,
            failed_at: SystemTime::now(),
            record,
        };
        self.lock().push(letter);
    }

    pub(crate) fn list(&self, handler: Option<&str>) -> Vec<DeadLetter> {
        self.lock()
            .iter()
            .filter(|l| handler.is_none_or(|h| l.handler == h))
            .cloned()
            .collect()
    }

    /// Removes and returns the letters of `handler` (all when `None`), oldest first.
    pub(crate) fn take(&self, handler: Option<&str>) -> Vec<DeadLetter> {
        let mut letters = self.lock();
        let (taken, kept) = std::mem::take(&mut *letters)
            .into_iter()
            .partition(|l| handler.is_none_or(|h| l.handler == h));
        *letters = kept;
        taken
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DeadLetter>> {
        self.letters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
