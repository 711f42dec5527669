//! What an operator reads: events by stream, type and position, the store's invariants
//! (`check`), and the names and schema version a summary reports.

use diesel::prelude::*;

use super::{queries, Conn};
use crate::storage::inspect::{Selection, Standing, Tally};
use crate::storage::models::{CheckpointRow, StoredEvent};
use crate::storage::schema::{checkpoints, dead_letters, events, store_meta, subscriptions};

/// The events `selection` names, oldest first. A stream's events are found through the
/// stream index, and the short tail past its mark by scanning.
pub(crate) fn events(conn: &mut Conn, selection: &Selection<'_>) -> QueryResult<Vec<StoredEvent>> {
    let mut q = events::table.select(StoredEvent::as_select()).into_boxed();
    if let Some(s) = selection.stream {
        let indexed = queries::indexed_through(conn)?;
        // One IN list of positions (a UNION ALL), so SQLite seeks by position rather than
        // scanning the log, as it would for an OR of the two.
        use diesel::sql_types::{BigInt, Bool, Text};
        q = q.filter(
            diesel::dsl::sql::<Bool>(
                "events.position IN (SELECT position FROM stream_events WHERE stream_id = ",
            )
            .bind::<Text, _>(s.to_owned())
            .sql(" UNION ALL SELECT position FROM events WHERE position > ")
            .bind::<BigInt, _>(indexed)
            .sql(" AND stream_id = ")
            .bind::<Text, _>(s.to_owned())
            .sql(")"),
        );
    }
    if let Some(t) = selection.event_type {
        q = q.filter(events::event_type.eq(t.to_owned()));
    }
    if let Some(a) = selection.after {
        q = q.filter(events::position.gt(a));
    }
    q = if selection.newest {
        q.order(events::position.desc())
    } else {
        q.order(events::position.asc())
    };
    if let Some(n) = selection.limit {
        q = q.limit(n);
    }
    let mut rows = q.load(conn)?;
    if selection.newest {
        rows.reverse();
    }
    Ok(rows)
}

/// The log's invariants, in one snapshot when called inside a transaction: stream versions
/// contiguous (past retention's mark) and unique, event ids unique, the stream index complete
/// up to its mark, one dead letter per (handler, event), every checkpoint at or below the
/// head. Returns what differs (empty: consistent).
pub(crate) fn check(conn: &mut Conn) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Gap {
        #[diesel(sql_type = diesel::sql_types::Text)]
        stream_id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        lo: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hi: i64,
    }
    let mut problems = Vec::new();
    // Retention leaves gaps (it keeps dead-lettered events) up to its mark; past the
    // mark each stream's versions are contiguous.
    let pruned = queries::pruned_through(conn)?;
    let gaps: Vec<Gap> = diesel::sql_query(
        "SELECT stream_id, count(*) AS n, min(stream_version) AS lo, max(stream_version) AS hi \
                 FROM events WHERE position > $1 GROUP BY stream_id \
                 HAVING max(stream_version) - min(stream_version) + 1 != count(*) LIMIT 20",
    )
    .bind::<diesel::sql_types::BigInt, _>(pruned)
    .load(conn)?;
    for g in gaps {
        problems.push(format!(
            "stream `{}` has {} events for versions {}..={}",
            g.stream_id, g.n, g.lo, g.hi
        ));
    }
    let dup: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM (SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1) AS d",
    )
    .get_result(conn)?;
    if dup > 0 {
        problems.push(format!("{dup} event id(s) stored more than once"));
    }
    let twice: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM (SELECT 1 FROM events \
                 GROUP BY stream_id, stream_version HAVING count(*) > 1) AS d",
    )
    .get_result(conn)?;
    if twice > 0 {
        problems.push(format!("{twice} stream version(s) stored more than once"));
    }
    let indexed = queries::indexed_through(conn)?;
    let unindexed: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM events e WHERE e.position <= ",
    )
    .bind::<diesel::sql_types::BigInt, _>(indexed)
    .sql(
        " AND NOT EXISTS (SELECT 1 FROM stream_events s WHERE s.stream_id = e.stream_id \
                 AND s.stream_version = e.stream_version AND s.position = e.position)",
    )
    .get_result(conn)?;
    if unindexed > 0 {
        problems.push(format!(
            "{unindexed} event(s) at or below {indexed} missing from the stream index"
        ));
    }
    let letters_twice: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM (SELECT 1 FROM dead_letters \
                 GROUP BY handler, position HAVING count(*) > 1) AS d",
    )
    .get_result(conn)?;
    if letters_twice > 0 {
        problems.push(format!(
            "{letters_twice} event(s) dead-lettered more than once by one handler"
        ));
    }
    let head = queries::head(conn)?;
    for c in queries::load_all_checkpoints(conn)? {
        if c.position > head {
            problems.push(format!(
                "checkpoint of `{}` #{} is at {}, past the head {head}",
                c.handler, c.partition, c.position
            ));
        }
    }
    Ok(problems)
}

pub(crate) fn schema_version(conn: &mut Conn) -> QueryResult<i64> {
    let v: String = store_meta::table
        .filter(store_meta::key.eq("schema_version"))
        .select(store_meta::value)
        .first(conn)?;
    Ok(v.parse().unwrap_or(0))
}

/// Subscription names the store knows (registered, or from checkpoints and dead letters), sorted.
pub(crate) fn handler_names(conn: &mut Conn) -> QueryResult<Vec<String>> {
    let mut names: Vec<String> = subscriptions::table
        .select(subscriptions::name)
        .load(conn)?;
    names.extend(
        checkpoints::table
            .select(checkpoints::handler)
            .distinct()
            .load::<String>(conn)?,
    );
    names.extend(
        dead_letters::table
            .select(dead_letters::handler)
            .distinct()
            .load::<String>(conn)?,
    );
    names.sort();
    names.dedup();
    Ok(names)
}

/// Every checkpoint, by subscription and partition.
pub(crate) fn checkpoints(conn: &mut Conn) -> QueryResult<Vec<CheckpointRow>> {
    checkpoints::table
        .select(CheckpointRow::as_select())
        .order((checkpoints::handler.asc(), checkpoints::partition.asc()))
        .load(conn)
}

/// Counts what a summary reports.
pub(crate) fn tally(conn: &mut Conn) -> QueryResult<Tally> {
    let indexed = queries::indexed_through(conn)?;
    Ok(Tally {
        events: events::table.count().get_result(conn)?,
        streams: diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "SELECT count(*) FROM (SELECT stream_id FROM stream_events \
             UNION SELECT stream_id FROM events WHERE position > ",
        )
        .bind::<diesel::sql_types::BigInt, _>(indexed)
        .sql(") AS s")
        .get_result(conn)?,
        schema_version: schema_version(conn)?,
        standing: standing(conn)?,
    })
}

/// Reads where each subscription is (inside a transaction: in one snapshot).
pub(crate) fn standing(conn: &mut Conn) -> QueryResult<Standing> {
    Ok(Standing {
        head: queries::head(conn)?,
        checkpoints: queries::load_all_checkpoints(conn)?,
        layouts: subscriptions::table
            .select((subscriptions::name, subscriptions::partitions))
            .load(conn)?,
        letters: dead_letters::table
            .group_by(dead_letters::handler)
            .select((dead_letters::handler, diesel::dsl::count_star()))
            .load(conn)?,
        names: handler_names(conn)?,
    })
}
