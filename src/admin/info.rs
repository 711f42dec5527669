//! What the operator's [`Store`](crate::Store) reports: stored events, checkpoints, dead
//! letters, summaries, and the filter and outcome types of its calls.

use std::time::SystemTime;

use uuid::Uuid;

use crate::storage::convert::time_of;
use crate::storage::models::{DeadLetterRow, StoredEvent};

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

/// Which events [`Store::events`](crate::Store::events) returns.
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

/// A process running a bus on a store ([`Store::running`](crate::Store::running)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RunningBus {
    /// Who it is, e.g. `process 4242`.
    pub label: String,
    /// On a PostgreSQL store shared by several processes, the partitions it owns now (its
    /// share of the subscriptions); `None` on SQLite, where one bus owns them all.
    pub partitions: Option<u64>,
}

/// What [`Store::replay`](crate::Store::replay) did.
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
    /// Its current concurrency, as the buses registered it (`None`: not registered).
    pub partitions: Option<u32>,
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
            recorded_at: time_of(e.recorded_at),
        }
    }
}

pub(super) fn letter_info((row, event): (DeadLetterRow, StoredEvent)) -> DeadLetterInfo {
    DeadLetterInfo {
        id: row.id as u64,
        handler: row.handler,
        attempts: row.attempts.max(0) as u32,
        last_error: row.last_error,
        failed_at: time_of(row.failed_at),
        redrive_requested: row.redrive_requested != 0,
        event: event.into(),
    }
}
