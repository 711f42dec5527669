//! The store's reads: the head, the stream index's mark, checkpoints, dead letters, pages
//! of events by type (catch-up), a stream's version; and rows back into records.

use diesel::prelude::*;

use super::Conn;
use crate::storage::models::{CheckpointRow, DeadLetterRow, StoredEvent};
use crate::storage::prepared::{statement, Prepared};
use crate::storage::schema::{checkpoints, dead_letters, events, store_meta, stream_events};

/// The `store_meta` key of the last position `stream_events` covers.
pub(crate) const INDEXED_THROUGH: &str = "indexed_through";
/// The `store_meta` key of the newest position retention deleted.
pub(crate) const PRUNED_THROUGH: &str = "pruned_through";
/// The last position ever assigned: the newest event's, or the newest retention deleted if
/// that is later (it deleted everything after it too). Positions are never given out twice,
/// whatever was deleted: a checkpoint past a reused position would skip the new event.
pub(crate) fn head(conn: &mut Conn) -> QueryResult<i64> {
    let newest = events::table
        .select(diesel::dsl::max(events::position))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0);
    Ok(newest.max(pruned_through(conn)?))
}
/// The head and the two marks, read in one statement.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub(crate) struct Marks {
    /// As [`head`].
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) head: i64,
    /// As [`pruned_through`].
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) pruned: i64,
    /// As [`indexed_through`].
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) indexed: i64,
}

impl Marks {
    /// Whether events another writer appended since `cached_head` may have been pruned
    /// already: a writer's cached stream versions can no longer be brought up to date from
    /// the log, and start over from the index.
    pub(crate) fn pruned_since(&self, cached_head: i64) -> bool {
        self.head != cached_head && self.pruned > cached_head
    }
}

/// The columns `head`, `pruned` and `indexed` of [`marks`] (a macro, so that `concat!` can
/// put them into more than one statement).
macro_rules! marks_columns {
    () => {
        "coalesce((SELECT max(position) FROM events), 0) AS head, \
         coalesce((SELECT CAST(value AS BIGINT) FROM store_meta WHERE key = 'pruned_through'), 0) AS pruned, \
         coalesce((SELECT CAST(value AS BIGINT) FROM store_meta WHERE key = 'indexed_through'), 0) AS indexed"
    };
}

impl Marks {
    /// The marks as stored: the head never goes below what retention pruned.
    fn read(head: i64, pruned: i64, indexed: i64) -> Self {
        Self {
            head: head.max(pruned),
            pruned,
            indexed,
        }
    }
}

/// [`head`], [`pruned_through`] and [`indexed_through`] in one round trip.
pub(crate) fn marks(conn: &mut Conn) -> QueryResult<Marks> {
    statement!(ReadMarks = concat!("SELECT ", marks_columns!()));
    let read = Prepared::<ReadMarks, 0>::new([]).get_result::<Marks>(conn)?;
    Ok(Marks::read(read.head, read.pruned, read.indexed))
}

/// [`marks`], and the newest version of every stream with an event past `since`, in one
/// round trip (an append runs it under the append lock, where every round trip is one each
/// other appender waits for). Nothing past `since` is read when `since` is `None`.
pub(crate) fn marks_and_streams_since(
    conn: &mut Conn,
    since: Option<i64>,
) -> QueryResult<(Marks, Vec<(String, i64)>)> {
    use diesel::sql_types::{BigInt, Nullable, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Nullable<Text>)]
        stream_id: Option<String>,
        #[diesel(sql_type = BigInt)]
        head: i64,
        #[diesel(sql_type = BigInt)]
        pruned: i64,
        #[diesel(sql_type = BigInt)]
        indexed: i64,
    }
    // The marks' row has no stream; each stream's row carries its version as `head`.
    statement!(
        MarksAndStreams = concat!(
            "SELECT NULL AS stream_id, ",
            marks_columns!(),
            " UNION ALL SELECT stream_id, max(stream_version), 0, 0 FROM events \
         WHERE position > $1 AND position <= $2 GROUP BY stream_id"
        )
    );
    // Bounded on both sides: a plan made for any `$1` (PostgreSQL's generic plan of a
    // prepared statement) then still expects a narrow range, and reads the position index
    // rather than the whole table.
    let rows = Prepared::<MarksAndStreams, 2>::new([since.unwrap_or(i64::MAX), i64::MAX])
        .load::<Row>(conn)?;
    let mut marks = None;
    let mut streams = Vec::with_capacity(rows.len().saturating_sub(1));
    for row in rows {
        match row.stream_id {
            Some(stream) => streams.push((stream, row.head)),
            None => marks = Some(Marks::read(row.head, row.pruned, row.indexed)),
        }
    }
    let marks = marks.ok_or(diesel::result::Error::NotFound)?;
    Ok((marks, streams))
}

/// The last position `stream_events` covers (0 for a store with nothing indexed).
pub(crate) fn indexed_through(conn: &mut Conn) -> QueryResult<i64> {
    meta_number(conn, INDEXED_THROUGH)
}
/// The newest position retention deleted (0 if it never ran).
pub(crate) fn pruned_through(conn: &mut Conn) -> QueryResult<i64> {
    meta_number(conn, PRUNED_THROUGH)
}
pub(crate) fn meta_number(conn: &mut Conn, key: &str) -> QueryResult<i64> {
    let value = store_meta::table
        .filter(store_meta::key.eq(key))
        .select(store_meta::value)
        .first::<String>(conn)
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}
pub(crate) fn set_meta_number(conn: &mut Conn, key: &str, value: i64) -> QueryResult<()> {
    diesel::insert_into(store_meta::table)
        .values((
            store_meta::key.eq(key),
            store_meta::value.eq(value.to_string()),
        ))
        .on_conflict(store_meta::key)
        .do_update()
        .set(store_meta::value.eq(value.to_string()))
        .execute(conn)
        .map(drop)
}
/// Dead letters an operator asked to redrive, with their events, oldest first.
pub(crate) fn load_requested_redrives(
    conn: &mut Conn,
) -> QueryResult<Vec<(DeadLetterRow, StoredEvent)>> {
    dead_letters::table
        .inner_join(events::table.on(events::position.eq(dead_letters::position)))
        .filter(dead_letters::redrive_requested.ne(0))
        .select((DeadLetterRow::as_select(), StoredEvent::as_select()))
        .order(dead_letters::id.asc())
        .load(conn)
}
/// Dead letters of `handler` (all when `None`) with their events, oldest first.
pub(crate) fn load_dead_letters(
    conn: &mut Conn,
    handler: Option<&str>,
) -> QueryResult<Vec<(DeadLetterRow, StoredEvent)>> {
    load_dead_letter_page(conn, handler, 0, i64::MAX)
}
/// Up to `limit` dead letters of `handler` (all when `None`) with ids above `after`, oldest
/// first.
pub(crate) fn load_dead_letter_page(
    conn: &mut Conn,
    handler: Option<&str>,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<(DeadLetterRow, StoredEvent)>> {
    let mut query = dead_letters::table
        .inner_join(events::table.on(events::position.eq(dead_letters::position)))
        .select((DeadLetterRow::as_select(), StoredEvent::as_select()))
        .filter(dead_letters::id.gt(after))
        .order(dead_letters::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(h) = handler {
        query = query.filter(dead_letters::handler.eq(h.to_owned()));
    }
    query.load(conn)
}
/// The stream's current version (0 for a stream never written): the index, and the short
/// tail past its mark.
pub(crate) fn stream_version(conn: &mut Conn, stream: &str) -> QueryResult<i64> {
    let indexed = indexed_through(conn)?;
    let in_index = stream_events::table
        .filter(stream_events::stream_id.eq(stream))
        .select(diesel::dsl::max(stream_events::stream_version))
        .first::<Option<i64>>(conn)?;
    let in_tail = events::table
        .filter(events::position.gt(indexed))
        .filter(events::stream_id.eq(stream))
        .select(diesel::dsl::max(events::stream_version))
        .first::<Option<i64>>(conn)?;
    Ok(in_index.max(in_tail).unwrap_or(0))
}
/// Every checkpoint in the store.
pub(crate) fn load_all_checkpoints(conn: &mut Conn) -> QueryResult<Vec<CheckpointRow>> {
    checkpoints::table
        .select(CheckpointRow::as_select())
        .load(conn)
}
/// Up to `limit` events of any of `types` after `after`, oldest first.
pub(crate) fn read_types_after(
    conn: &mut Conn,
    types: &[String],
    after: i64,
    limit: i64,
) -> QueryResult<Vec<StoredEvent>> {
    events::table
        .filter(events::event_type.eq_any(types))
        .filter(events::position.gt(after))
        .order(events::position.asc())
        .limit(limit)
        .select(StoredEvent::as_select())
        .load(conn)
}
