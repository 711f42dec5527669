//! `actorbus check`: verifies a store. The log's invariants always; on a demo store also the
//! demo's read model against a fresh fold of the log, and the order checker's findings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use actorbus::{partition_for, Store};
use clap::Args;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::cli::demo::OrderEvent;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The store to verify: a SQLite file, or `postgres://…`.
    #[arg(long)]
    db: PathBuf,
}

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<()> {
    let store = crate::cli::open_store(&args.db)?;
    let mut problems = store.check()?;
    if has_demo_tables(&store)? {
        problems.extend(check_demo(&store)?);
    }
    if problems.is_empty() {
        say!("consistent");
        return Ok(());
    }
    for p in &problems {
        say!("{p}");
    }
    anyhow::bail!(
        "{} is not consistent: {} problem(s)",
        crate::cli::shown(&args.db),
        problems.len()
    )
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)] // only counted
    name: String,
}

fn has_demo_tables(store: &Store) -> anyhow::Result<bool> {
    let names = store.with_connection(|c| {
        diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('demo_orders', 'demo_inventory', 'demo_violations')",
        )
        .load::<Name>(c)
    });
    match names {
        Ok(names) => Ok(names.len() == 3),
        // A PostgreSQL store: the demo's read model lives in SQLite stores only.
        Err(actorbus::Error::Config(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(QueryableByName, Debug, PartialEq, Eq, Clone)]
struct OrderRow {
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = BigInt)]
    sku: i64,
    #[diesel(sql_type = BigInt)]
    qty: i64,
    #[diesel(sql_type = BigInt)]
    cents: i64,
    #[diesel(sql_type = Text)]
    status: String,
}

#[derive(QueryableByName, Debug, PartialEq, Eq, Clone, Copy)]
struct StockRow {
    #[diesel(sql_type = BigInt)]
    sku: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
    #[diesel(sql_type = BigInt)]
    shipped: i64,
}

#[derive(QueryableByName)]
struct Violation {
    #[diesel(sql_type = BigInt)]
    position: i64,
    #[diesel(sql_type = Text)]
    stream: String,
    #[diesel(sql_type = Text)]
    reason: String,
}

#[derive(QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    partition: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    partitions: i32,
    #[diesel(sql_type = BigInt)]
    position: i64,
}

#[derive(QueryableByName)]
struct LoggedEvent {
    #[diesel(sql_type = BigInt)]
    position: i64,
    #[diesel(sql_type = Text)]
    stream_id: String,
    #[diesel(sql_type = Text)]
    payload: String,
}

/// Events read per page of the fold.
const FOLD_PAGE: i64 = 10_000;

/// The demo's read model must equal a fold of every event its projection has checkpointed
/// past: an event counts when the projection's actor owning its stream, in any layout whose
/// checkpoints are stored (the current concurrency, or an earlier one not yet passed),
/// passed it. Read in one transaction, so a bus writing meanwhile changes nothing seen.
fn check_demo(store: &Store) -> anyhow::Result<Vec<String>> {
    Ok(store.with_connection(|conn| conn.transaction(check_demo_snapshot))?)
}

fn check_demo_snapshot(c: &mut SqliteConnection) -> QueryResult<Vec<String>> {
    let mut problems = Vec::new();
    let violations: Vec<Violation> = diesel::sql_query(
        "SELECT position, stream, reason FROM demo_violations ORDER BY position LIMIT 10",
    )
    .load(c)?;
    for v in &violations {
        problems.push(format!(
            "ordering violation in {} at position {}: {}",
            v.stream, v.position, v.reason
        ));
    }

    let checkpoints: Vec<Checkpoint> = diesel::sql_query(
        "SELECT partition, partitions, position FROM checkpoints WHERE handler = 'inventory'",
    )
    .load(c)?;
    // partitions -> position per partition.
    let mut layouts: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for cp in &checkpoints {
        let n = cp.partitions.max(1) as usize;
        let positions = layouts.entry(n).or_insert_with(|| vec![0; n]);
        if let Some(p) = positions.get_mut(cp.partition.max(0) as usize) {
            *p = cp.position.max(0) as u64;
        }
    }
    let applied = |stream: &str, position: u64| {
        layouts
            .iter()
            .any(|(n, reached)| position <= reached[partition_for(stream, *n)])
    };

    let mut orders: BTreeMap<i64, OrderRow> = BTreeMap::new();
    let mut stock: BTreeMap<i64, StockRow> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page: Vec<LoggedEvent> = diesel::sql_query(
            "SELECT position, stream_id, payload FROM events WHERE position > ? \
             ORDER BY position LIMIT ?",
        )
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(FOLD_PAGE)
        .load(c)?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in page {
            if !applied(&e.stream_id, e.position.max(0) as u64) {
                continue;
            }
            let event: OrderEvent = match serde_json::from_str(&e.payload) {
                Ok(event) => event,
                Err(err) => {
                    problems.push(format!(
                        "event at position {} does not decode: {err}",
                        e.position
                    ));
                    continue;
                }
            };
            fold(&mut orders, &mut stock, &event);
        }
    }

    let table_orders: Vec<OrderRow> = diesel::sql_query(
        "SELECT order_id, sku, qty, cents, status FROM demo_orders ORDER BY order_id",
    )
    .load(c)?;
    let table_stock: Vec<StockRow> =
        diesel::sql_query("SELECT sku, reserved, shipped FROM demo_inventory ORDER BY sku")
            .load(c)?;
    compare(
        "order",
        &orders.into_values().collect::<Vec<_>>(),
        &table_orders,
        &mut problems,
    );
    compare(
        "stock",
        &stock.into_values().collect::<Vec<_>>(),
        &table_stock,
        &mut problems,
    );
    Ok(problems)
}

/// Applies `event` to the fold as the demo's projection applies it to its tables (the
/// rule is [`OrderEvent::status`] and [`OrderEvent::stock_change`]); an event of an order
/// never placed changes nothing.
fn fold(
    orders: &mut BTreeMap<i64, OrderRow>,
    stock: &mut BTreeMap<i64, StockRow>,
    event: &OrderEvent,
) {
    let order_id = event.order() as i64;
    if let OrderEvent::Placed {
        sku, qty, cents, ..
    } = event
    {
        orders.insert(
            order_id,
            OrderRow {
                order_id,
                sku: *sku as i64,
                qty: *qty,
                cents: *cents,
                status: String::new(),
            },
        );
    }
    let Some(o) = orders.get_mut(&order_id) else {
        return;
    };
    o.status = event.status().into();
    if let Some((reserved, shipped)) = event.stock_change() {
        let s = stock.entry(o.sku).or_insert(StockRow {
            sku: o.sku,
            reserved: 0,
            shipped: 0,
        });
        s.reserved += reserved * o.qty;
        s.shipped += shipped * o.qty;
    }
}

/// Lists up to ten rows that differ between the fold and the table.
fn compare<T: PartialEq + std::fmt::Debug>(
    what: &str,
    fold: &[T],
    table: &[T],
    problems: &mut Vec<String>,
) {
    if fold.len() != table.len() {
        problems.push(format!(
            "read model has {} {what} rows, the log folds to {}",
            table.len(),
            fold.len()
        ));
    }
    let differing = fold.iter().zip(table).filter(|(a, b)| a != b).take(10);
    for (expected, found) in differing {
        problems.push(format!(
            "{what} row differs: log says {expected:?}, read model has {found:?}"
        ));
    }
}
