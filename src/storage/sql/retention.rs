//! Retention: deleting processed events the policy allows, never one a subscription still
//! needs or a dead letter refers to; each stream keeps its newest index entry.

use diesel::prelude::*;

use super::Conn;

use super::queries::{head, indexed_through, meta_number, set_meta_number, PRUNED_THROUGH};
use crate::storage::schema::{dead_letters, events, stream_events};
use crate::storage::Retention;

/// Deletes processed events as `retention` allows: only at or below `safe` (the lowest
/// checkpoint of every subscription), never one a dead letter refers to. At most `limit` per
/// call, so the writer's transaction stays short. Returns how many were deleted.
pub(crate) fn prune(
    conn: &mut Conn,
    retention: &Retention,
    safe: i64,
    now_micros: i64,
    limit: i64,
) -> QueryResult<usize> {
    let head = head(conn)?;
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
