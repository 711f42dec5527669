//! What an operator's reads are made of, whichever database answers them (the SQL is
//! `storage/sql/inspect.rs`).

use crate::storage::models::CheckpointRow;

/// Which events `inspect::events` reads.
#[derive(Debug, Default)]
pub(crate) struct Selection<'a> {
    pub(crate) stream: Option<&'a str>,
    pub(crate) event_type: Option<&'a str>,
    pub(crate) after: Option<i64>,
    pub(crate) limit: Option<i64>,
    /// The newest `limit` (still returned oldest first).
    pub(crate) newest: bool,
}

/// What a summary of the store is made of, read in one snapshot when called inside a
/// transaction.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) events: i64,
    /// Streams ever written (the index keeps each stream's newest entry after retention).
    pub(crate) streams: i64,
    pub(crate) schema_version: i64,
    pub(crate) standing: Standing,
}

/// Where each subscription is, without counting the log: what a live view reads often.
#[derive(Debug)]
pub(crate) struct Standing {
    pub(crate) head: i64,
    pub(crate) checkpoints: Vec<CheckpointRow>,
    /// (subscription, partitions) of the registered subscriptions.
    pub(crate) layouts: Vec<(String, i32)>,
    /// (subscription, dead letters).
    pub(crate) letters: Vec<(String, i64)>,
    /// Every subscription name the store knows, sorted.
    pub(crate) names: Vec<String>,
}
