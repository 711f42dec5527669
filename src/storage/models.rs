//! diesel row types of the store, in Queryable/Insertable pairs.

use diesel::prelude::*;

use crate::storage::schema::{checkpoints, dead_letters, events};

/// An event row as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct StoredEvent {
    pub(crate) position: i64,
    pub(crate) event_id: Vec<u8>,
    pub(crate) stream_id: String,
    pub(crate) stream_version: i64,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) payload: String,
    pub(crate) metadata: Option<String>,
    pub(crate) recorded_at: i64,
}

/// An event row to insert. `treat_none_as_default_value = false` keeps a batch of these
/// one multi-row INSERT on SQLite (otherwise an `Option` field splits it into one INSERT per row).
#[derive(Debug, Insertable)]
#[diesel(table_name = events)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewStoredEvent<'a> {
    pub(crate) position: i64,
    pub(crate) event_id: &'a [u8],
    pub(crate) stream_id: &'a str,
    pub(crate) stream_version: i64,
    pub(crate) event_type: &'a str,
    pub(crate) schema_version: i32,
    pub(crate) payload: &'a str,
    pub(crate) metadata: Option<&'a str>,
    pub(crate) recorded_at: i64,
}

/// A checkpoint row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = checkpoints)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct CheckpointRow {
    pub(crate) handler: String,
    pub(crate) partition: i32,
    pub(crate) partitions: i32,
    pub(crate) position: i64,
    pub(crate) updated_at: i64,
}

/// A dead-letter row as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dead_letters)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct DeadLetterRow {
    pub(crate) id: i64,
    #[allow(dead_code)] // selected to match the table; the joined event carries it too
    pub(crate) position: i64,
    pub(crate) handler: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: String,
    pub(crate) failed_at: i64,
    pub(crate) redrive_requested: i32,
}

/// A dead-letter row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = dead_letters)]
pub(crate) struct NewDeadLetter {
    pub(crate) position: i64,
    pub(crate) handler: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: String,
    pub(crate) failed_at: i64,
}
