//! A group commit's event rows as fixed-width multi-row INSERTs (SQLite): `N` rows per
//! statement, so each width is one prepared statement that diesel caches, parses once and
//! binds again at every commit. One row per statement pays the statement's own work (diesel's
//! query building and cache lookup, SQLite's step and reset) on every event; one VALUES list
//! of the commit's own length would be a new statement, parsed again, at every commit.

use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;

use crate::storage::models::NewStoredEvent;

/// `N` event rows, inserted by one statement.
pub(crate) struct EventRows<'a, const N: usize>(pub(crate) &'a [NewStoredEvent<'a>; N]);

/// What tells each width's statement apart in diesel's cache.
pub(crate) struct EventRowsOf<const N: usize>;

impl<const N: usize> QueryId for EventRows<'_, N> {
    type QueryId = EventRowsOf<N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const N: usize> QueryFragment<Sqlite> for EventRows<'_, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
             schema_version, payload, metadata, recorded_at) VALUES ",
        );
        for (i, row) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<BigInt, _>(&row.position)?;
            out.push_sql(", ");
            out.push_bind_param::<Binary, _>(&row.event_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.stream_id)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&row.stream_version)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.event_type)?;
            out.push_sql(", ");
            out.push_bind_param::<Integer, _>(&row.schema_version)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.payload)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&row.metadata)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&row.recorded_at)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl<const N: usize> diesel::RunQueryDsl<diesel::SqliteConnection> for EventRows<'_, N> {}

/// Inserts `rows`: 32 at a time while that many are left, then 4, then one by one.
pub(crate) fn insert(
    conn: &mut diesel::SqliteConnection,
    rows: &[NewStoredEvent<'_>],
) -> QueryResult<()> {
    let rest = insert_by::<32>(conn, rows)?;
    let rest = insert_by::<4>(conn, rest)?;
    insert_by::<1>(conn, rest).map(drop)
}

/// Inserts `N` rows per statement while `N` are left; returns the rows left over.
fn insert_by<'r, 'e, const N: usize>(
    conn: &mut diesel::SqliteConnection,
    rows: &'r [NewStoredEvent<'e>],
) -> QueryResult<&'r [NewStoredEvent<'e>]> {
    use diesel::RunQueryDsl;
    let mut chunks = rows.chunks_exact(N);
    for chunk in &mut chunks {
        EventRows::<N>(chunk.try_into().expect("exact chunks")).execute(conn)?;
    }
    Ok(chunks.remainder())
}
