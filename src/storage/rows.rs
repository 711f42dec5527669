//! Multi-row INSERTs of fixed width: `N` rows per statement, so each width is one prepared
//! statement that diesel caches, parses once and binds again at every use. One row per
//! statement pays the statement's own work (diesel's query building and cache lookup, the
//! database's step and reset) on every row; one VALUES list of the batch's own length would
//! be a new statement, parsed again, at every batch.
//!
//! - [`EventRows`]: a group commit's event rows (SQLite; PostgreSQL copies them in).
//! - [`IndexRows`]: entries of the stream index, written in pieces by the writer (both
//!   databases).

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Binary, HasSqlType, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;

use crate::storage::models::NewStoredEvent;

/// `N` event rows, inserted by one statement. `OR ROLLBACK`: a failing row ends the whole
/// transaction at once, as the writer would anyway, so SQLite keeps no statement journal to
/// undo the statement alone (about 5% of the writer thread's samples; bench --mode sqlite
/// 2-4% more events/s).
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
            "INSERT OR ROLLBACK INTO events (position, event_id, stream_id, stream_version, event_type, \
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

/// One entry of the stream index: (stream, version, position).
pub(crate) type IndexEntry<'a> = (&'a str, i64, i64);

/// `N` entries of the stream index, inserted by one statement.
pub(crate) struct IndexRows<'a, const N: usize>(pub(crate) &'a [IndexEntry<'a>; N]);

/// What tells each width's statement apart in diesel's cache.
pub(crate) struct IndexRowsOf<const N: usize>;

impl<const N: usize> QueryId for IndexRows<'_, N> {
    type QueryId = IndexRowsOf<N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB, const N: usize> QueryFragment<DB> for IndexRows<'_, N>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("INSERT INTO stream_events (stream_id, stream_version, position) VALUES ");
        for (i, (stream, version, position)) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(*stream)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(version)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(position)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

/// A statement that writes `N` rows of type `Row` at a time.
pub(crate) trait FixedWidth<Conn> {
    /// One row.
    type Row;
    /// Writes exactly `N` rows with one statement.
    fn write<const N: usize>(conn: &mut Conn, rows: &[Self::Row; N]) -> QueryResult<()>;
}

/// Writes `rows` through `W`: 32 at a time while that many are left, then 4, then one by one.
pub(crate) fn write_all<W: FixedWidth<Conn>, Conn>(
    conn: &mut Conn,
    rows: &[W::Row],
) -> QueryResult<()> {
    let rest = write_by::<W, Conn, 32>(conn, rows)?;
    let rest = write_by::<W, Conn, 4>(conn, rest)?;
    write_by::<W, Conn, 1>(conn, rest).map(drop)
}

/// Writes `N` rows per statement while `N` are left; returns the rows left over.
fn write_by<'r, W: FixedWidth<Conn>, Conn, const N: usize>(
    conn: &mut Conn,
    rows: &'r [W::Row],
) -> QueryResult<&'r [W::Row]> {
    let mut chunks = rows.chunks_exact(N);
    for chunk in &mut chunks {
        W::write::<N>(conn, chunk.try_into().expect("exact chunks"))?;
    }
    Ok(chunks.remainder())
}

/// The event rows of a group commit (SQLite).
pub(crate) struct Events<'e>(std::marker::PhantomData<&'e ()>);

impl<'e> FixedWidth<diesel::SqliteConnection> for Events<'e> {
    type Row = NewStoredEvent<'e>;
    fn write<const N: usize>(
        conn: &mut diesel::SqliteConnection,
        rows: &[Self::Row; N],
    ) -> QueryResult<()> {
        use diesel::Connection;
        conn.execute_returning_count(&EventRows::<N>(rows))
            .map(drop)
    }
}

/// Entries of the stream index (either database).
pub(crate) struct Index<'e>(std::marker::PhantomData<&'e ()>);

impl<'e, Conn> FixedWidth<Conn> for Index<'e>
where
    Conn: diesel::Connection,
    Conn::Backend: HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, Conn::Backend>,
    i64: ToSql<BigInt, Conn::Backend>,
{
    type Row = IndexEntry<'e>;
    fn write<const N: usize>(conn: &mut Conn, rows: &[Self::Row; N]) -> QueryResult<()> {
        conn.execute_returning_count(&IndexRows::<N>(rows))
            .map(drop)
    }
}
