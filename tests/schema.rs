//! schema.rs (what diesel compiles against) and the embedded migrations (what a store
//! holds) must declare the same tables, columns, types and nullability: a drift would fail
//! only at run time, on the first query that touches it.

mod common;

use common::*;

/// One column as `diesel::table!` declares it.
#[derive(Debug, PartialEq, Eq)]
struct DeclaredColumn {
    name: String,
    sql_type: String,
    nullable: bool,
}

/// One table of `schema.rs`: its name, primary key and columns in order.
#[derive(Debug)]
struct DeclaredTable {
    name: String,
    primary_key: Vec<String>,
    columns: Vec<DeclaredColumn>,
}

/// Reads the `diesel::table!` blocks of a schema.rs as `diesel print-schema` writes them.
fn parse_schema(source: &str) -> Vec<DeclaredTable> {
    let mut tables = Vec::new();
    let mut lines = source.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != "diesel::table! {" {
            continue;
        }
        let header = lines
            .by_ref()
            .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#["))
            .expect("a table header");
        let (name, rest) = header.split_once(" (").expect("`name (key) {`");
        let (key, _) = rest.split_once(')').expect("`name (key) {`");
        let mut table = DeclaredTable {
            name: name.trim().to_owned(),
            primary_key: key.split(',').map(|k| k.trim().to_owned()).collect(),
            columns: Vec::new(),
        };
        for line in lines.by_ref() {
            if line == "}" {
                break;
            }
            if line.is_empty() || line.starts_with("//") || line.starts_with("#[") {
                continue;
            }
            let (column, ty) = line
                .trim_end_matches(',')
                .split_once("->")
                .unwrap_or_else(|| panic!("unparsed schema.rs line: {line}"));
            let ty = ty.trim();
            let (nullable, ty) = match ty.strip_prefix("Nullable<") {
                Some(inner) => (true, inner.trim_end_matches('>')),
                None => (false, ty),
            };
            table.columns.push(DeclaredColumn {
                name: column.trim().to_owned(),
                sql_type: ty.to_owned(),
                nullable,
            });
        }
        tables.push(table);
    }
    tables
}

/// The SQL types SQLite may declare for a diesel type (`INTEGER PRIMARY KEY` is the rowid,
/// a 64-bit integer, so it stands for `BigInt` too).
fn sql_types_for(diesel_type: &str, rowid: bool) -> &'static [&'static str] {
    match (diesel_type, rowid) {
        ("Integer", _) => &["INTEGER"],
        ("BigInt", true) => &["BIGINT", "INTEGER"],
        ("BigInt", false) => &["BIGINT"],
        ("Text", _) => &["TEXT"],
        ("Binary", _) => &["BLOB"],
        ("Double", _) => &["DOUBLE", "REAL"],
        ("Bool", _) => &["BOOLEAN"],
        (other, _) => panic!("no SQLite type mapped for diesel's {other}: extend this test"),
    }
}

#[actix::test]
async fn schema_rs_declares_exactly_the_tables_and_columns_the_migrations_create() {
    let declared = parse_schema(include_str!("../src/storage/schema.rs"));
    assert!(declared.len() >= 4, "parsed {declared:?}");
    let tmp = TempStore::new();
    let path = tmp.path();
    create_store(path).await;
    let conn = raw_sqlite(path);

    let mut created: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    created.sort();
    let mut names: Vec<String> = declared.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, created, "tables in schema.rs vs the migrated store");

    for table in &declared {
        // (name, declared type, notnull, pk index)
        let actual: Vec<(String, String, bool, i64)> = conn
            .prepare(&format!("PRAGMA table_info({})", table.name))
            .unwrap()
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let actual_names: Vec<&str> = actual.iter().map(|c| c.0.as_str()).collect();
        let declared_names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(declared_names, actual_names, "columns of `{}`", table.name);

        let actual_key: Vec<String> = {
            let mut key: Vec<_> = actual.iter().filter(|c| c.3 > 0).collect();
            key.sort_by_key(|c| c.3);
            key.into_iter().map(|c| c.0.clone()).collect()
        };
        assert_eq!(
            table.primary_key, actual_key,
            "primary key of `{}`",
            table.name
        );

        let rowid = table.primary_key.len() == 1;
        for (column, (name, sql_type, notnull, pk)) in table.columns.iter().zip(&actual) {
            let allowed = sql_types_for(&column.sql_type, rowid && *pk == 1);
            assert!(
                allowed.contains(&sql_type.to_uppercase().as_str()),
                "`{}.{name}` is {sql_type} in the migrations but {} in schema.rs",
                table.name,
                column.sql_type
            );
            assert_eq!(
                column.nullable, !notnull,
                "nullability of `{}.{name}`: schema.rs says Nullable = {}, the migrations NOT NULL = {notnull}",
                table.name, column.nullable
            );
        }
    }
}

#[test]
fn the_schema_parser_reads_keys_types_and_nullability() {
    let tables = parse_schema(
        "diesel::table! {\n    pairs (a, b) {\n        a -> Text,\n        b -> Integer,\n        \
         c -> Nullable<Binary>,\n    }\n}\n",
    );
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].name, "pairs");
    assert_eq!(tables[0].primary_key, vec!["a", "b"]);
    assert_eq!(
        tables[0].columns[2],
        DeclaredColumn {
            name: "c".into(),
            sql_type: "Binary".into(),
            nullable: true
        }
    );
}
