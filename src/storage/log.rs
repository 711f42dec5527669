//! The event log on SQLite: the writer's group commit (positions, stream versions,
//! optimistic concurrency) and the readers' queries (catch-up, checkpoints).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use uuid::Uuid;

use crate::event::{stable_hash, Metadata, Payload, Record};
use crate::storage::models::{
    CheckpointRow, DeadLetterRow, NewDeadLetter, NewStoredEvent, StoredEvent,
};
use crate::storage::pool::{classify, classify_message};
use crate::storage::schema::{checkpoints, dead_letters, events, store_meta, stream_events};
use crate::storage::{Retention, StoreError};

/// Streams whose last version the writer remembers; past this the cache starts over at the
/// next indexing of the tail, so memory stays flat however many streams there are.
const VERSION_CACHE_LIMIT: usize = 100_000;

/// An append that leaves more events than this past `indexed_through` indexes the tail in its
/// own transaction. The storage actor's timer normally indexes it long before (every 200 ms).
const INDEX_TAIL_LIMIT: i64 = 65_536;

/// Indexes the events in `(?1, ?2]` by stream, sorted so each stream's entries go in together.
pub(crate) const INDEX_TAIL_SQL: &str =
    "INSERT INTO stream_events (stream_id, stream_version, position) \
     SELECT stream_id, stream_version, position FROM events \
     WHERE position > ?1 AND position <= ?2 ORDER BY stream_id, stream_version";

/// The `store_meta` key of the last position `stream_events` covers.
pub(crate) const INDEXED_THROUGH: &str = "indexed_through";
/// The `store_meta` key of the newest position retention deleted.
const PRUNED_THROUGH: &str = "pruned_through";

/// One publish (or `publish_all`): all of it is stored, or none.
#[derive(Debug)]
pub(crate) struct Unit {
    pub(crate) records: Vec<Record>,
    /// The version the stream must be at before this unit (all records on one stream).
    pub(crate) expected_version: Option<u64>,
    /// The publisher chose the event ids: an id already stored is answered, not stored again.
    pub(crate) check_ids: bool,
}

/// What became of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitOutcome {
    /// Stored: (position, stream version) per record.
    Stored(Vec<(u64, u64)>),
    /// Every id was stored before (a retried publish): where they are; nothing new stored.
    Duplicate(Vec<(u64, u64)>),
    /// The stream was not at the expected version; nothing was stored.
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
}

/// The single writer's connection and what it remembers between commits.
pub(crate) struct Writer {
    conn: PooledConnection<ConnectionManager<SqliteConnection>>,
    path: PathBuf,
    head: i64,
    /// The last position `stream_events` covers (-1: not known, read it at the next commit).
    /// Invariant: every stream with an event past it is in `versions`.
    indexed: i64,
    versions: HashMap<String, i64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("head", &self.head)
            .field("indexed", &self.indexed)
            .finish()
    }
}

impl Writer {
    pub(crate) fn new(
        conn: PooledConnection<ConnectionManager<SqliteConnection>>,
        path: PathBuf,
    ) -> Self {
        Self {
            conn,
            path,
            head: -1,
            indexed: -1,
            versions: HashMap::new(),
        }
    }

    /// Appends every unit and upserts `checkpoints` in one transaction.
    ///
    /// # Errors
    /// A database error (disk full, lock timeout ...): nothing of this call was stored.
    pub(crate) fn append(
        &mut self,
        units: &[Unit],
        checkpoints: &[CheckpointRow],
        letters: &[LetterChange],
    ) -> Result<Vec<UnitOutcome>, StoreError> {
        let mut versions = std::mem::take(&mut self.versions);
        let cached_head = self.head;
        let mut indexed = self.indexed;
        let result = in_transaction(&mut self.conn, &self.path, |conn| {
            let head = current_head(conn)?;
            if head != cached_head || indexed < 0 {
                // Someone else wrote (or this is the first commit): cached versions may be
                // stale. Index the tail first, so every version not cached is in the index.
                versions.clear();
                let mark = indexed_through(conn)?;
                indexed = index_tail(conn, mark, head)?;
            }
            let mut changed: HashMap<&str, i64> = HashMap::new();
            let mut outcomes = Vec::with_capacity(units.len());
            let mut rows: Vec<(usize, usize, i64, i64)> = Vec::new(); // (unit, record, position, version)
            let mut next_position = head;
            for (u, unit) in units.iter().enumerate() {
                if unit.check_ids {
                    if let Some(existing) = already_stored(conn, &unit.records)? {
                        outcomes.push(UnitOutcome::Duplicate(existing));
                        continue;
                    }
                }
                let mut local: HashMap<&str, i64> = HashMap::new();
                let mut assigned = Vec::with_capacity(unit.records.len());
                let mut conflict = None;
                for record in &unit.records {
                    let stream = record.meta.stream_id.as_str();
                    let current = match local.get(stream).or(changed.get(stream)) {
                        Some(v) => *v,
                        None => indexed_version(conn, &mut versions, stream)?,
                    };
                    if let (Some(expected), true) = (unit.expected_version, assigned.is_empty()) {
                        if current as u64 != expected {
                            conflict = Some(UnitOutcome::Conflict {
                                stream: stream.to_owned(),
                                expected,
                                actual: current as u64,
                            });
                            break;
                        }
                    }
                    local.insert(stream, current + 1);
                    assigned.push(current + 1);
                }
                if let Some(c) = conflict {
                    outcomes.push(c);
                    continue;
                }
                changed.extend(local);
                let mut stored = Vec::with_capacity(assigned.len());
                for (r, version) in assigned.into_iter().enumerate() {
                    next_position += 1;
                    rows.push((u, r, next_position, version));
                    stored.push((next_position as u64, version as u64));
                }
                outcomes.push(UnitOutcome::Stored(stored));
            }
            let encoded: Vec<(Option<String>, i64)> = rows
                .iter()
                .map(|&(u, r, _, _)| {
                    let meta = &units[u].records[r].meta;
                    (encode_metadata(meta), micros(meta.occurred_at))
                })
                .collect();
            let new_rows: Vec<NewStoredEvent<'_>> = rows
                .iter()
                .zip(&encoded)
                .map(|(&(u, r, position, version), (metadata, recorded_at))| {
                    let record = &units[u].records[r];
                    NewStoredEvent {
                        position,
                        event_id: record.meta.id.as_bytes(),
                        stream_id: &record.meta.stream_id,
                        stream_version: version,
                        event_type: &record.meta.event_type,
                        schema_version: record.meta.schema_version as i32,
                        payload: record.encoded.as_deref().unwrap_or("null"),
                        metadata: metadata.as_deref(),
                        recorded_at: *recorded_at,
                    }
                })
                .collect();
            // One cached prepared statement, executed per row: a multi-row VALUES list differs
            // in length from commit to commit, so SQLite would parse it again every time.
            for row in &new_rows {
                diesel::insert_into(events::table)
                    .values(row)
                    .execute(conn)?;
            }
            save_checkpoints(conn, checkpoints)?;
            save_dead_letters(conn, letters)?;
            let mut reindexed = false;
            if next_position - indexed > INDEX_TAIL_LIMIT
                || versions.len() + changed.len() > VERSION_CACHE_LIMIT
            {
                indexed = index_tail(conn, indexed, next_position)?;
                reindexed = true;
            }
            let changed: Vec<(String, i64)> = changed
                .into_iter()
                .map(|(s, v)| (s.to_owned(), v))
                .collect();
            Ok::<_, diesel::result::Error>((outcomes, next_position, changed, reindexed))
        });
        match result {
            Ok((outcomes, head, changed, reindexed)) => {
                self.versions = versions;
                self.indexed = indexed;
                self.head = head;
                if reindexed {
                    self.indexed_tail();
                }
                self.versions.extend(changed);
                Ok(outcomes)
            }
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// Writes the stream index for every event past `indexed_through` (one sorted bulk insert,
    /// a few pages per stream rather than one random page per event). Called by the storage
    /// actor's timer, so the tail per-stream reads must scan stays short.
    ///
    /// # Errors
    /// A database error: the tail stays as it was, to be indexed by a later call.
    pub(crate) fn index_tail(&mut self) -> Result<(), StoreError> {
        if self.head < 0 || self.indexed < 0 || self.indexed >= self.head {
            return Ok(());
        }
        let (from, to) = (self.indexed, self.head);
        let result = in_transaction(&mut self.conn, &self.path, |conn| {
            if current_head(conn)? != to {
                return Ok(None);
            }
            index_tail(conn, from, to).map(Some)
        });
        match result {
            Ok(Some(indexed)) => {
                self.indexed = indexed;
                self.indexed_tail();
                Ok(())
            }
            // Another writer appended: the next append reads everything again.
            Ok(None) => {
                self.forget();
                Ok(())
            }
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// After the tail was indexed: the cache may start over without breaking its invariant.
    fn indexed_tail(&mut self) {
        if self.versions.len() > VERSION_CACHE_LIMIT {
            self.versions.clear();
        }
    }

    /// Forget what is cached: the next append reads the head and the index mark again.
    fn forget(&mut self) {
        self.head = -1;
        self.indexed = -1;
        self.versions.clear();
    }

    /// Runs `f` in one write transaction; an `Err` rolls it back.
    ///
    /// # Errors
    /// What `f` returned, or a database error.
    pub(crate) fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut SqliteConnection) -> QueryResult<T>,
    ) -> Result<T, StoreError> {
        in_transaction(&mut self.conn, &self.path, f)
    }

    /// Stores dead-letter changes and checkpoints in one transaction (no events to append).
    ///
    /// # Errors
    /// A database error.
    pub(crate) fn save_checkpoints(
        &mut self,
        rows: &[CheckpointRow],
        letters: &[LetterChange],
    ) -> Result<(), StoreError> {
        if rows.is_empty() && letters.is_empty() {
            return Ok(());
        }
        in_transaction(&mut self.conn, &self.path, |conn| {
            save_checkpoints(conn, rows)?;
            save_dead_letters(conn, letters)
        })
    }
}

/// Runs `f` in an immediate transaction. Reports the first error `f` met: when SQLite has
/// already rolled back by itself (a full disk), diesel's own ROLLBACK fails too, and that
/// second error would otherwise hide the cause.
fn in_transaction<T>(
    conn: &mut SqliteConnection,
    path: &std::path::Path,
    f: impl FnOnce(&mut SqliteConnection) -> QueryResult<T>,
) -> Result<T, StoreError> {
    let mut first = None;
    let result = conn.immediate_transaction(|c| {
        let r = f(c);
        if let Err(e) = &r {
            if !matches!(e, diesel::result::Error::RollbackTransaction) {
                first = Some(e.to_string());
            }
        }
        r
    });
    result.map_err(|e| match first {
        Some(text) => classify_message(path, text),
        None => classify(path, e),
    })
}

/// What happened to dead letters since the last write, in the order it happened.
#[derive(Debug, Clone)]
pub(crate) enum LetterChange {
    /// A handler gave up on an event: one letter per (handler, event); a letter that fails
    /// again after a redrive is updated (attempts, error, time), not repeated.
    Keep(NewDeadLetter),
    /// A redriven letter was handled: it goes.
    Resolved(i64),
}

pub(crate) fn save_dead_letters(
    conn: &mut SqliteConnection,
    changes: &[LetterChange],
) -> QueryResult<()> {
    use diesel::upsert::excluded;
    for change in changes {
        match change {
            LetterChange::Keep(letter) => {
                diesel::insert_into(dead_letters::table)
                    .values(letter)
                    .on_conflict((dead_letters::handler, dead_letters::position))
                    .do_update()
                    .set((
                        dead_letters::attempts.eq(excluded(dead_letters::attempts)),
                        dead_letters::last_error.eq(excluded(dead_letters::last_error)),
                        dead_letters::failed_at.eq(excluded(dead_letters::failed_at)),
                        dead_letters::redrive_requested.eq(0),
                    ))
                    .execute(conn)?;
            }
            LetterChange::Resolved(id) => {
                diesel::delete(dead_letters::table.find(id)).execute(conn)?;
            }
        }
    }
    Ok(())
}

/// The last position ever assigned: the newest event's, or the newest retention deleted if
/// that is later (it deleted everything after it too). Positions are never given out twice,
/// whatever was deleted: a checkpoint past a reused position would skip the new event.
fn current_head(conn: &mut SqliteConnection) -> QueryResult<i64> {
    let newest = events::table
        .select(diesel::dsl::max(events::position))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0);
    Ok(newest.max(pruned_through(conn)?))
}

/// The stream's version: cached, or else in the index (a stream not cached has no event in
/// the tail, by the writer's invariant).
fn indexed_version(
    conn: &mut SqliteConnection,
    cache: &mut HashMap<String, i64>,
    stream: &str,
) -> QueryResult<i64> {
    if let Some(v) = cache.get(stream) {
        return Ok(*v);
    }
    let v = stream_events::table
        .filter(stream_events::stream_id.eq(stream))
        .select(diesel::dsl::max(stream_events::stream_version))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0);
    cache.insert(stream.to_owned(), v);
    Ok(v)
}

/// The last position `stream_events` covers (0 for a store with nothing indexed).
pub(crate) fn indexed_through(conn: &mut SqliteConnection) -> QueryResult<i64> {
    meta_number(conn, INDEXED_THROUGH)
}

/// The newest position retention deleted (0 if it never ran).
pub(crate) fn pruned_through(conn: &mut SqliteConnection) -> QueryResult<i64> {
    meta_number(conn, PRUNED_THROUGH)
}

fn meta_number(conn: &mut SqliteConnection, key: &str) -> QueryResult<i64> {
    let value = store_meta::table
        .filter(store_meta::key.eq(key))
        .select(store_meta::value)
        .first::<String>(conn)
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn set_meta_number(conn: &mut SqliteConnection, key: &str, value: i64) -> QueryResult<()> {
    diesel::replace_into(store_meta::table)
        .values((
            store_meta::key.eq(key),
            store_meta::value.eq(value.to_string()),
        ))
        .execute(conn)
        .map(drop)
}

/// Indexes the events in `(from, to]`, sorted by stream so that each stream's entries go in
/// together, and moves the mark to `to`. Returns `to`.
fn index_tail(conn: &mut SqliteConnection, from: i64, to: i64) -> QueryResult<i64> {
    use diesel::sql_types::BigInt;
    if to <= from {
        return Ok(from);
    }
    diesel::sql_query(INDEX_TAIL_SQL)
        .bind::<BigInt, _>(from)
        .bind::<BigInt, _>(to)
        .execute(conn)?;
    set_meta_number(conn, INDEXED_THROUGH, to)?;
    Ok(to)
}

/// (position, version) of every record when all of their ids are stored already.
fn already_stored(
    conn: &mut SqliteConnection,
    records: &[Record],
) -> QueryResult<Option<Vec<(u64, u64)>>> {
    let mut found = Vec::with_capacity(records.len());
    for record in records {
        let row = events::table
            .filter(events::event_id.eq(record.meta.id.as_bytes().as_slice()))
            .select((events::position, events::stream_version))
            .first::<(i64, i64)>(conn)
            .optional()?;
        match row {
            Some((p, v)) => found.push((p as u64, v as u64)),
            None => return Ok(None),
        }
    }
    Ok(Some(found))
}

/// Upserts checkpoints; a checkpoint only moves forward here (`replay` moves it back on purpose,
/// elsewhere), so a late batched write never undoes a projection's in-transaction one.
pub(crate) fn save_checkpoints(
    conn: &mut SqliteConnection,
    rows: &[CheckpointRow],
) -> QueryResult<()> {
    use diesel::upsert::excluded;
    for row in rows {
        diesel::insert_into(checkpoints::table)
            .values(row)
            .on_conflict((
                checkpoints::handler,
                checkpoints::partitions,
                checkpoints::partition,
            ))
            .do_update()
            .set((
                checkpoints::position.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "max(checkpoints.position, excluded.position)",
                )),
                checkpoints::updated_at.eq(excluded(checkpoints::updated_at)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Deletes the checkpoints of `handler` written with another concurrency that no longer
/// matter: an old row at or below the lowest checkpoint of the current layout (all of its
/// `partitions` rows present) cannot make any actor skip an event. Returns whether rows of
/// another layout remain.
pub(crate) fn drop_covered_layouts(
    conn: &mut SqliteConnection,
    handler: &str,
    partitions: i32,
) -> QueryResult<bool> {
    use diesel::sql_types::{Integer, Text};
    diesel::sql_query(
        "DELETE FROM checkpoints WHERE handler = ?1 AND partitions != ?2 AND position <= \
         (SELECT CASE WHEN count(*) = ?2 THEN min(position) END FROM checkpoints \
          WHERE handler = ?1 AND partitions = ?2)",
    )
    .bind::<Text, _>(handler)
    .bind::<Integer, _>(partitions)
    .execute(conn)?;
    let left: i64 = checkpoints::table
        .filter(checkpoints::handler.eq(handler))
        .filter(checkpoints::partitions.ne(partitions))
        .count()
        .get_result(conn)?;
    Ok(left > 0)
}

/// Dead letters an operator asked to redrive, with their events, oldest first.
pub(crate) fn load_requested_redrives(
    conn: &mut SqliteConnection,
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
    conn: &mut SqliteConnection,
    handler: Option<&str>,
) -> QueryResult<Vec<(DeadLetterRow, StoredEvent)>> {
    load_dead_letter_page(conn, handler, 0, i64::MAX)
}

/// Up to `limit` dead letters of `handler` (all when `None`) with ids above `after`, oldest
/// first.
pub(crate) fn load_dead_letter_page(
    conn: &mut SqliteConnection,
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
pub(crate) fn stream_version(conn: &mut SqliteConnection, stream: &str) -> QueryResult<i64> {
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

/// Deletes processed events as `retention` allows: only at or below `safe` (the lowest
/// checkpoint of every subscription), never one a dead letter refers to. At most `limit` per
/// call, so the writer's transaction stays short. Returns how many were deleted.
pub(crate) fn prune(
    conn: &mut SqliteConnection,
    retention: &Retention,
    safe: i64,
    now_micros: i64,
    limit: i64,
) -> QueryResult<usize> {
    let head = current_head(conn)?;
    let by_count = retention.keep_last.map_or(i64::MIN, |n| head - n as i64);
    let by_age = retention
        .max_age
        .map_or(i64::MIN, |age| now_micros - age.as_micros() as i64);
    // Only indexed events: their stream index entries go with them (see below).
    let safe = safe.min(indexed_through(conn)?);
    let victims = events::table
        .filter(events::position.le(safe))
        .filter(
            events::position
                .le(by_count)
                .or(events::recorded_at.lt(by_age)),
        )
        .filter(diesel::dsl::not(diesel::dsl::exists(
            dead_letters::table.filter(dead_letters::position.eq(events::position)),
        )))
        .select((events::position, events::stream_id, events::stream_version))
        .order(events::position.asc())
        .limit(limit)
        .load::<(i64, String, i64)>(conn)?;
    let mut deleted = 0;
    for chunk in victims.chunks(1000) {
        let positions: Vec<i64> = chunk.iter().map(|v| v.0).collect();
        deleted += diesel::delete(events::table.filter(events::position.eq_any(positions)))
            .execute(conn)?;
    }
    if let Some(last) = victims.last() {
        // The mark `check` reads: below it, retention may have left gaps in a stream.
        let marked = meta_number(conn, PRUNED_THROUGH)?;
        set_meta_number(conn, PRUNED_THROUGH, marked.max(last.0))?;
    }
    // Each stream keeps its newest index entry: its version outlives its events.
    let newer = diesel::alias!(stream_events as newer);
    for (_, stream, version) in &victims {
        diesel::delete(
            stream_events::table
                .filter(stream_events::stream_id.eq(stream))
                .filter(stream_events::stream_version.eq(version))
                .filter(diesel::dsl::exists(
                    newer
                        .filter(newer.field(stream_events::stream_id).eq(stream))
                        .filter(newer.field(stream_events::stream_version).gt(version)),
                )),
        )
        .execute(conn)?;
    }
    Ok(deleted)
}

/// Every checkpoint in the store.
pub(crate) fn load_all_checkpoints(conn: &mut SqliteConnection) -> QueryResult<Vec<CheckpointRow>> {
    checkpoints::table
        .select(CheckpointRow::as_select())
        .load(conn)
}

/// The position of the newest event (0 for an empty store).
pub(crate) fn head(conn: &mut SqliteConnection) -> QueryResult<i64> {
    current_head(conn)
}

/// Up to `limit` events of any of `types` after `after`, oldest first.
pub(crate) fn read_types_after(
    conn: &mut SqliteConnection,
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

/// Metadata beside the payload: only what is set, `None` when nothing is.
fn encode_metadata(meta: &Metadata) -> Option<String> {
    if meta.correlation_id.is_none() && meta.causation_id.is_none() && meta.headers.is_empty() {
        return None;
    }
    let mut m = serde_json::Map::new();
    if let Some(c) = meta.correlation_id {
        m.insert("correlation_id".into(), c.to_string().into());
    }
    if let Some(c) = meta.causation_id {
        m.insert("causation_id".into(), c.to_string().into());
    }
    if !meta.headers.is_empty() {
        let headers = meta
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        m.insert("headers".into(), serde_json::Value::Object(headers));
    }
    Some(serde_json::Value::Object(m).to_string())
}

pub(crate) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl StoredEvent {
    /// The row as a record for delivery. A payload or metadata that is not JSON still makes a
    /// record (the handler dead-letters it with the reason), never a failed read.
    pub(crate) fn into_record(self) -> Record {
        let payload = match serde_json::from_str(&self.payload) {
            Ok(value) => Payload::Json(Arc::new(value)),
            Err(e) => Payload::Invalid(Arc::from(format!("it is not JSON: {e}"))),
        };
        let extra: serde_json::Value = self
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or(serde_json::Value::Null);
        let uuid_at = |key: &str| {
            extra
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
        };
        let headers = extra
            .get("headers")
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let meta = Metadata {
            id: Uuid::from_slice(&self.event_id).unwrap_or_default(),
            stream_id: self.stream_id,
            stream_version: Some(self.stream_version as u64),
            position: Some(self.position as u64),
            event_type: self.event_type.into(),
            schema_version: self.schema_version as u32,
            occurred_at: UNIX_EPOCH
                + std::time::Duration::from_micros(self.recorded_at.max(0) as u64),
            correlation_id: uuid_at("correlation_id"),
            causation_id: uuid_at("causation_id"),
            headers,
        };
        let partition = stable_hash(meta.stream_id.as_bytes());
        Record {
            meta: Arc::new(meta),
            payload,
            encoded: None,
            published_at: std::time::Instant::now(),
            partition,
            letter: None,
        }
    }
}
