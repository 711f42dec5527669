//! The demo's order domain: the events it generates (deterministic from a seed), its read
//! model (the `Inventory` projection and its tables) and the per-stream order checker.

use actorbus::{DomainEvent, Envelope, HandlerError, Projection, Store};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};

/// Orders per block: a block's events interleave their streams (all placements, then all
/// payments, then all shipments or cancellations).
pub(super) const BLOCK: u64 = 64;
/// Events per order.
pub(super) const STEPS: u64 = 3;
/// Events per `publish_all`: stored all or nothing, so the store always holds a prefix of the
/// generated sequence and a rerun continues exactly where the last one stopped.
pub(super) const BATCH: u64 = 250;
/// Distinct products.
pub(super) const SKUS: u64 = 20;

/// The events of one order (one stream), as one enum: every subscription below receives all
/// of them, in per-order order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderEvent {
    Placed {
        order: u64,
        sku: u64,
        qty: i64,
        cents: i64,
    },
    Paid {
        order: u64,
        cents: i64,
    },
    Shipped {
        order: u64,
    },
    Cancelled {
        order: u64,
        reason: String,
    },
}

impl DomainEvent for OrderEvent {
    const EVENT_TYPE: &'static str = "order.placed";
    const EVENT_TYPES: &'static [&'static str] = &[
        "order.placed",
        "order.paid",
        "order.shipped",
        "order.cancelled",
    ];

    fn stream_id(&self) -> String {
        format!("order-{}", self.order())
    }

    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "order.placed",
            OrderEvent::Paid { .. } => "order.paid",
            OrderEvent::Shipped { .. } => "order.shipped",
            OrderEvent::Cancelled { .. } => "order.cancelled",
        }
    }
}

impl OrderEvent {
    pub(crate) fn order(&self) -> u64 {
        match self {
            OrderEvent::Placed { order, .. }
            | OrderEvent::Paid { order, .. }
            | OrderEvent::Shipped { order }
            | OrderEvent::Cancelled { order, .. } => *order,
        }
    }

    /// The order's status in the read model after this event. With [`Self::stock_change`],
    /// the one rule of the read model: the projection applies it, `actorbus check` folds the
    /// log with it and compares.
    pub(crate) fn status(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "placed",
            OrderEvent::Paid { .. } => "paid",
            OrderEvent::Shipped { .. } => "shipped",
            OrderEvent::Cancelled { .. } => "cancelled",
        }
    }

    /// How this event changes the stock of the order's product, per unit the order holds:
    /// (reserved, shipped). Placing reserves, shipping turns reserved into shipped,
    /// cancelling releases; paying leaves stock alone (`None`).
    pub(crate) fn stock_change(&self) -> Option<(i64, i64)> {
        match self {
            OrderEvent::Placed { .. } => Some((1, 0)),
            OrderEvent::Paid { .. } => None,
            OrderEvent::Shipped { .. } => Some((-1, 1)),
            OrderEvent::Cancelled { .. } => Some((-1, 0)),
        }
    }
}

/// SplitMix64: a deterministic mix of the seed and a key.
pub(super) fn mix(seed: u64, key: u64) -> u64 {
    let mut z = seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn chance(seed: u64, key: u64, rate: f64) -> bool {
    (mix(seed, key) >> 11) as f64 / (1u64 << 53) as f64 <= rate
}

/// The `index`-th demo event: the same for a given seed in every run. `first_order` sets
/// apart the orders of demos sharing one store (0 for a SQLite store's single demo).
pub(crate) fn demo_event(seed: u64, first_order: u64, index: u64) -> OrderEvent {
    let block = index / (BLOCK * STEPS);
    let within = index % (BLOCK * STEPS);
    let order = first_order + block * BLOCK + within % BLOCK;
    let r = mix(seed, order);
    let qty = (r % 5 + 1) as i64;
    let cents = qty * (((r >> 8) % 9_000 + 500) as i64);
    match within / BLOCK {
        0 => OrderEvent::Placed {
            order,
            sku: (r >> 20) % SKUS,
            qty,
            cents,
        },
        1 => OrderEvent::Paid { order, cents },
        _ if (r >> 32).is_multiple_of(10) => OrderEvent::Cancelled {
            order,
            reason: "customer changed their mind".into(),
        },
        _ => OrderEvent::Shipped { order },
    }
}

/// The read model: orders and stock per product, written in the projection's transaction.
pub(super) struct Inventory;

pub(crate) const READ_MODEL_DDL: &str = "
    CREATE TABLE IF NOT EXISTS demo_orders (
        order_id INTEGER PRIMARY KEY NOT NULL, sku INTEGER NOT NULL, qty INTEGER NOT NULL,
        cents INTEGER NOT NULL, status TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_inventory (
        sku INTEGER PRIMARY KEY NOT NULL, reserved INTEGER NOT NULL, shipped INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_checker (
        stream TEXT PRIMARY KEY NOT NULL, last_version INTEGER NOT NULL, state TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_violations (
        position INTEGER PRIMARY KEY NOT NULL, stream TEXT NOT NULL, reason TEXT NOT NULL);";

/// The same read model on PostgreSQL (its INTEGER is 32 bits).
#[cfg(feature = "postgres")]
pub(crate) const READ_MODEL_DDL_POSTGRES: &str = "
    CREATE TABLE IF NOT EXISTS demo_orders (
        order_id BIGINT PRIMARY KEY, sku BIGINT NOT NULL, qty BIGINT NOT NULL,
        cents BIGINT NOT NULL, status TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_inventory (
        sku BIGINT PRIMARY KEY, reserved BIGINT NOT NULL, shipped BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_checker (
        stream TEXT PRIMARY KEY, last_version BIGINT NOT NULL, state TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS demo_violations (
        position BIGINT PRIMARY KEY, stream TEXT NOT NULL, reason TEXT NOT NULL);";

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = BigInt)]
    sku: i64,
    #[diesel(sql_type = BigInt)]
    qty: i64,
}

/// `Projection<OrderEvent>` for `$projection` on SQLite and PostgreSQL, both running the
/// body macro `$body` (the same SQL, for each connection type).
macro_rules! on_both_databases {
    ($projection:ty, $body:ident) => {
        impl Projection<OrderEvent> for $projection {
            fn apply(
                &mut self,
                e: &Envelope<OrderEvent>,
                conn: &mut SqliteConnection,
            ) -> Result<(), HandlerError> {
                $body!(SqliteConnection, e, conn)
            }

            #[cfg(feature = "postgres")]
            const POSTGRES: bool = true;

            #[cfg(feature = "postgres")]
            fn apply_postgres(
                &mut self,
                e: &Envelope<OrderEvent>,
                conn: &mut PgConnection,
            ) -> Result<(), HandlerError> {
                $body!(PgConnection, e, conn)
            }
        }
    };
}

/// Applies one event to the read model: the same SQL on SQLite and PostgreSQL, written once
/// for both connection types.
macro_rules! apply_inventory {
    ($conn_type:ty, $e:expr, $conn:expr) => {{
        let (e, conn): (&Envelope<OrderEvent>, &mut $conn_type) = ($e, $conn);
        let stock = |conn: &mut $conn_type, sku: i64, reserved: i64, shipped: i64| {
            diesel::sql_query(
                "INSERT INTO demo_inventory (sku, reserved, shipped) VALUES ($1, $2, $3)
                 ON CONFLICT(sku) DO UPDATE SET
                     reserved = demo_inventory.reserved + excluded.reserved,
                     shipped = demo_inventory.shipped + excluded.shipped",
            )
            .bind::<BigInt, _>(sku)
            .bind::<BigInt, _>(reserved)
            .bind::<BigInt, _>(shipped)
            .execute(conn)
        };
        let set_status = |conn: &mut $conn_type, order: u64, status: &str| {
            diesel::sql_query("UPDATE demo_orders SET status = $1 WHERE order_id = $2")
                .bind::<Text, _>(status)
                .bind::<BigInt, _>(order as i64)
                .execute(conn)
        };
        let order_row = |conn: &mut $conn_type, order: u64| {
            diesel::sql_query("SELECT sku, qty FROM demo_orders WHERE order_id = $1")
                .bind::<BigInt, _>(order as i64)
                .get_result::<OrderRow>(conn)
        };
        let event = e.event();
        if let OrderEvent::Placed {
            order,
            sku,
            qty,
            cents,
        } = event
        {
            diesel::sql_query(
                "INSERT INTO demo_orders (order_id, sku, qty, cents, status) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind::<BigInt, _>(*order as i64)
            .bind::<BigInt, _>(*sku as i64)
            .bind::<BigInt, _>(*qty)
            .bind::<BigInt, _>(*cents)
            .bind::<Text, _>(event.status())
            .execute(conn)?;
        } else {
            set_status(conn, event.order(), event.status())?;
        }
        if let Some((reserved, shipped)) = event.stock_change() {
            let row = match event {
                OrderEvent::Placed { sku, qty, .. } => OrderRow {
                    sku: *sku as i64,
                    qty: *qty,
                },
                _ => order_row(conn, event.order())?,
            };
            stock(conn, row.sku, reserved * row.qty, shipped * row.qty)?;
        }
        Ok(())
    }};
}

on_both_databases!(Inventory, apply_inventory);

/// Checks every order's events arrive in order: versions without gaps, and the lifecycle
/// placed -> paid -> shipped | cancelled. Its state and findings commit with its checkpoint,
/// so a crash neither loses nor double-counts them.
pub(super) struct OrderChecker;

#[derive(QueryableByName)]
struct CheckerRow {
    #[diesel(sql_type = BigInt)]
    last_version: i64,
    #[diesel(sql_type = Text)]
    state: String,
}

/// Checks one event against its stream's state, on either database.
macro_rules! apply_checker {
    ($conn_type:ty, $e:expr, $conn:expr) => {{
        let (e, conn): (&Envelope<OrderEvent>, &mut $conn_type) = ($e, $conn);
        let previous =
            diesel::sql_query("SELECT last_version, state FROM demo_checker WHERE stream = $1")
                .bind::<Text, _>(e.stream_id())
                .get_result::<CheckerRow>(conn)
                .optional()?;
        let (last, state) =
            previous.map_or((0, String::from("new")), |r| (r.last_version, r.state));
        let version = e.stream_version().unwrap_or(0) as i64;
        let next = e.event_type().trim_start_matches("order.");
        let allowed = matches!(
            (state.as_str(), next),
            ("new", "placed") | ("placed", "paid") | ("paid", "shipped") | ("paid", "cancelled")
        );
        let mut problems = Vec::new();
        if version != last + 1 {
            problems.push(format!("version {version} after {last}"));
        }
        if !allowed {
            problems.push(format!("{next} after {state}"));
        }
        if !problems.is_empty() {
            diesel::sql_query(
                "INSERT INTO demo_violations (position, stream, reason) VALUES ($1, $2, $3)",
            )
            .bind::<BigInt, _>(e.position().unwrap_or(0) as i64)
            .bind::<Text, _>(e.stream_id())
            .bind::<Text, _>(problems.join("; "))
            .execute(conn)?;
        }
        diesel::sql_query(
            "INSERT INTO demo_checker (stream, last_version, state) VALUES ($1, $2, $3)
             ON CONFLICT(stream) DO UPDATE SET last_version = excluded.last_version, state = excluded.state",
        )
        .bind::<Text, _>(e.stream_id())
        .bind::<BigInt, _>(version)
        .bind::<Text, _>(next)
        .execute(conn)?;
        Ok(())
    }};
}

on_both_databases!(OrderChecker, apply_checker);

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Ordering violations the checker recorded (by every process, on a shared store).
pub(super) fn violations(store: &Store) -> anyhow::Result<i64> {
    const SQL: &str = "SELECT count(*) AS n FROM demo_violations";
    #[cfg(feature = "postgres")]
    if let Ok(count) =
        store.with_postgres_connection(|c| diesel::sql_query(SQL).get_result::<Count>(c))
    {
        return Ok(count.n);
    }
    Ok(store
        .with_connection(|conn| diesel::sql_query(SQL).get_result::<Count>(conn))?
        .n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_gets_placed_paid_then_shipped_or_cancelled() {
        let events: Vec<_> = (0..BLOCK * STEPS * 3)
            .map(|i| demo_event(7, 0, i))
            .collect();
        for order in 0..BLOCK * 3 {
            let mine: Vec<_> = events.iter().filter(|e| e.order() == order).collect();
            assert_eq!(mine.len(), 3);
            assert!(matches!(mine[0], OrderEvent::Placed { .. }));
            assert!(matches!(mine[1], OrderEvent::Paid { .. }));
            assert!(matches!(
                mine[2],
                OrderEvent::Shipped { .. } | OrderEvent::Cancelled { .. }
            ));
        }
        assert_eq!(demo_event(7, 0, 5), demo_event(7, 0, 5), "deterministic");
        assert_eq!(
            demo_event(7, 1000, 5).order(),
            demo_event(7, 0, 5).order() + 1000
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, OrderEvent::Cancelled { .. })));
    }
}
