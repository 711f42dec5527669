//! Statements of fixed text with `BIGINT` binds that diesel prepares once per connection and
//! keeps in its statement cache. `diesel::sql_query` is never cached: SQLite parses and plans
//! it again at every call, and PostgreSQL too. On the writer's path (every group commit reads
//! the marks) that parse is a measurable share of the commit.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Untyped};
use diesel::QueryResult;

/// The text of one statement; its binds are written `$1` .. `$N`, each a `BIGINT`. The type
/// is the statement's key in diesel's cache, so each text has a type of its own
/// ([`statement!`](crate::storage::prepared::statement)).
pub(crate) trait Text: 'static {
    /// The SQL, with `$k` for the k-th bind (a placeholder may appear more than once).
    const SQL: &'static str;
}

/// Declares a zero-sized type whose [`Text`] is the given SQL.
macro_rules! statement {
    ($(#[$meta:meta])* $name:ident = $sql:expr) => {
        $(#[$meta])*
        pub(crate) struct $name;
        impl $crate::storage::prepared::Text for $name {
            const SQL: &'static str = $sql;
        }
    };
}
pub(crate) use statement;

/// The statement `S` with its `N` binds, ready to run (`execute`, `load`, `get_result`).
pub(crate) struct Prepared<S, const N: usize> {
    binds: [i64; N],
    text: PhantomData<S>,
}

impl<S: Text, const N: usize> Prepared<S, N> {
    /// `S` with `binds[k - 1]` for each `$k`.
    pub(crate) fn new(binds: [i64; N]) -> Self {
        Self {
            binds,
            text: PhantomData,
        }
    }
}

impl<S: Text, const N: usize> QueryId for Prepared<S, N> {
    type QueryId = S;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<S: Text, const N: usize> Query for Prepared<S, N> {
    type SqlType = Untyped;
}

impl<S: Text, DB, const N: usize> QueryFragment<DB> for Prepared<S, N>
where
    DB: Backend + HasSqlType<BigInt>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let mut rest = S::SQL;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |end| at + 1 + end);
            let bind = rest[at + 1..digits]
                .parse::<usize>()
                .ok()
                .and_then(|k| self.binds.get(k.checked_sub(1)?))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!(
                            "no bind for `{}` in a prepared statement",
                            &rest[at..digits]
                        )
                        .into(),
                    )
                })?;
            out.push_bind_param::<BigInt, _>(bind)?;
            rest = &rest[digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<S, Conn, const N: usize> diesel::RunQueryDsl<Conn> for Prepared<S, N> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::InstrumentationEvent;
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    use std::sync::{Arc, Mutex};

    statement!(Sum = "SELECT $1 + $2 * $1 AS value");
    statement!(Missing = "SELECT $3 AS value");

    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }

    #[test]
    fn binds_go_where_their_placeholders_are_and_the_statement_is_cached() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let cached = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&cached);
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                seen.lock().unwrap().push(sql.to_owned());
            }
        });
        for (a, b) in [(2, 3), (5, 7), (1, 1)] {
            let got: Value = Prepared::<Sum, 2>::new([a, b])
                .get_result(&mut conn)
                .unwrap();
            assert_eq!(got.value, a + b * a);
        }
        assert_eq!(
            *cached.lock().unwrap(),
            ["SELECT ? + ? * ? AS value"],
            "prepared once, reused by the later calls"
        );
        // A second text is a second cached statement, not the first one's plan.
        let err = Prepared::<Missing, 2>::new([1, 2])
            .get_result::<Value>(&mut conn)
            .unwrap_err();
        assert!(err.to_string().contains("no bind for `$3`"), "{err}");
    }
}
