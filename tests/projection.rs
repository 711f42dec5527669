//! Transactional projections, durable dead letters and retention on the SQLite store.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::{
    handler_fn, DomainEvent, Envelope, Error, EventBus, HandlerError, HandlerOptions, Projection,
    Retention, RetryPolicy,
};
use common::TempStore;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

/// A quantity added to a cart, which the `CartTotals` read model sums (specific to this
/// file's projections, so not in tests/common).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemAdded {
    cart: u32,
    qty: i64,
}

impl DomainEvent for ItemAdded {
    const EVENT_TYPE: &'static str = "cart.item_added";
    fn stream_id(&self) -> String {
        format!("cart-{}", self.cart)
    }
}

/// Read model: quantity per cart, and how many events were applied.
struct CartTotals {
    /// When set, the first attempt at every third event (by position) fails without
    /// panicking; the set records the events that failed once. Decided per event, not by a
    /// call counter shared by the partitions, so no event can fail every one of its attempts.
    flaky: Option<Arc<Mutex<HashSet<u64>>>>,
}

impl Projection<ItemAdded> for CartTotals {
    fn apply(
        &mut self,
        e: &Envelope<ItemAdded>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS cart_totals (cart TEXT PRIMARY KEY, qty INTEGER NOT NULL, applied INTEGER NOT NULL)",
        )?;
        diesel::sql_query(
            "INSERT INTO cart_totals (cart, qty, applied) VALUES (?, ?, 1) \
             ON CONFLICT(cart) DO UPDATE SET qty = qty + excluded.qty, applied = applied + 1",
        )
        .bind::<diesel::sql_types::Text, _>(e.stream_id())
        .bind::<diesel::sql_types::BigInt, _>(e.qty)
        .execute(conn)?;
        if let (Some(failed), Some(position)) = (&self.flaky, e.position()) {
            // The write above is rolled back with the failing transaction.
            if position % 3 == 0 && failed.lock().unwrap().insert(position) {
                return Err("transient read-model failure".into());
            }
        }
        Ok(())
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::Text)]
    cart: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    qty: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    applied: i64,
}

fn totals(db: &std::path::Path) -> Vec<Total> {
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    diesel::sql_query("SELECT cart, qty, applied FROM cart_totals ORDER BY cart")
        .load(&mut conn)
        .unwrap()
}

const T: Duration = Duration::from_secs(10);
fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(5).base_delay(Duration::from_millis(1))
}

#[actix::test]
async fn a_projection_applies_each_event_exactly_once_even_when_its_transactions_fail() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let failed = Arc::new(Mutex::new(HashSet::new()));
    let flaky = Arc::clone(&failed);
    let bus = EventBus::builder()
        .sqlite(db)
        .projection(
            "cart-totals",
            HandlerOptions::new().concurrency(2).retry(fast_retry()),
            move || CartTotals {
                flaky: Some(Arc::clone(&flaky)),
            },
        )
        .build()
        .unwrap();
    for i in 0..60 {
        bus.publish(ItemAdded {
            cart: i % 3,
            qty: 2,
        })
        .await
        .unwrap();
    }
    bus.shutdown(T).await.unwrap();
    assert_eq!(
        failed.lock().unwrap().len(),
        20,
        "the first attempt at every third event failed, and was retried"
    );
    assert!(
        actorbus::Store::open(db)
            .unwrap()
            .dead_letters(None)
            .unwrap()
            .is_empty(),
        "every event succeeded on its second attempt"
    );
    let expected: Vec<Total> = (0..3)
        .map(|c| Total {
            cart: format!("cart-{c}"),
            qty: 40,
            applied: 20,
        })
        .collect();
    assert_eq!(totals(db), expected);

    // A restart replays nothing into the read model: its checkpoint moved with it.
    let bus = EventBus::builder()
        .sqlite(db)
        .projection("cart-totals", HandlerOptions::new().concurrency(2), || {
            CartTotals { flaky: None }
        })
        .build()
        .unwrap();
    bus.publish(ItemAdded { cart: 0, qty: 1 }).await.unwrap();
    bus.shutdown(T).await.unwrap();
    assert_eq!(
        totals(db)[0],
        Total {
            cart: "cart-0".into(),
            qty: 41,
            applied: 21
        }
    );
}

#[actix::test]
async fn a_new_projection_rebuilds_its_read_model_from_the_log() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let bus = EventBus::builder().sqlite(db).build().unwrap();
    bus.publish_all((0..9).map(|i| ItemAdded {
        cart: i % 3,
        qty: 1,
    }))
    .await
    .unwrap();
    bus.shutdown(T).await.unwrap();

    let bus = EventBus::builder()
        .sqlite(db)
        .projection("cart-totals", HandlerOptions::new(), || CartTotals {
            flaky: None,
        })
        .build()
        .unwrap();
    bus.shutdown(T).await.unwrap();
    assert_eq!(totals(db).iter().map(|t| t.applied).sum::<i64>(), 9);
}

#[actix::test]
async fn a_projection_on_a_bus_without_store_is_a_configuration_error() {
    let err = EventBus::builder()
        .projection("p", HandlerOptions::new(), || CartTotals { flaky: None })
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Polls `f` until it is true, for at most 10 s; the writer stores dead letters asynchronously.
async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}

#[actix::test]
async fn dead_letters_are_stored_survive_a_restart_and_are_redriven_in_order() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let broken = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let build = |broken: &Arc<AtomicBool>, seen: &Arc<Mutex<Vec<i64>>>| {
        let (broken, seen) = (Arc::clone(broken), Arc::clone(seen));
        EventBus::builder()
            .sqlite(db)
            .handler_with(
                "mailer",
                HandlerOptions::new()
                    .retry(RetryPolicy::new(2).base_delay(Duration::from_millis(1))),
                move || {
                    let (broken, seen) = (Arc::clone(&broken), Arc::clone(&seen));
                    handler_fn(move |e: &Envelope<ItemAdded>| -> Result<(), HandlerError> {
                        if e.qty < 0 && broken.load(Ordering::SeqCst) {
                            return Err("negative quantity".into());
                        }
                        seen.lock().unwrap().push(e.qty);
                        Ok(())
                    })
                },
            )
            .build()
            .unwrap()
    };
    let bus = build(&broken, &seen);
    for qty in [1, -1, 2, -2, 3] {
        bus.publish(ItemAdded { cart: 1, qty }).await.unwrap();
    }
    bus.shutdown(T).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);

    // After a restart the dead letters are still there, with their reason and attempts.
    let bus = build(&broken, &seen);
    let letters = bus.dead_letters(Some("mailer")).unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters
        .iter()
        .all(|l| l.attempts() == 2 && l.last_error() == "negative quantity"));
    assert!(letters[0].event().position < letters[1].event().position);

    broken.store(false, Ordering::SeqCst);
    assert_eq!(bus.redrive("mailer").await.unwrap(), 2);
    eventually(|| bus.dead_letters(Some("mailer")).unwrap().is_empty()).await;
    bus.shutdown(T).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, -1, -2]);
}

#[actix::test]
async fn purging_deletes_stored_dead_letters() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let bus = EventBus::builder()
        .sqlite(db)
        .handler_with(
            "never",
            HandlerOptions::new().retry(RetryPolicy::no_retry()),
            || {
                handler_fn(|_: &Envelope<ItemAdded>| -> Result<(), HandlerError> {
                    Err("no".into())
                })
            },
        )
        .build()
        .unwrap();
    bus.publish_all((0..3).map(|i| ItemAdded { cart: i, qty: 1 }))
        .await
        .unwrap();
    eventually(|| bus.dead_letters(None).unwrap().len() == 3).await;
    assert_eq!(bus.purge_dead_letters(Some("never")).await.unwrap(), 3);
    assert!(bus.dead_letters(None).unwrap().is_empty());
    bus.shutdown(T).await.unwrap();
}

fn event_count(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[actix::test]
async fn retention_deletes_only_what_every_subscription_processed_and_no_dead_letter() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let counting = |name: &'static str| {
        move || {
            handler_fn(move |_: &Envelope<ItemAdded>| -> Result<(), HandlerError> {
                let _ = name;
                Ok(())
            })
        }
    };
    // Two subscriptions processed 100 events; one event is a dead letter.
    let bus = EventBus::builder()
        .sqlite(db)
        .handler("a", counting("a"))
        .handler_with(
            "picky",
            HandlerOptions::new().retry(RetryPolicy::no_retry()),
            || {
                handler_fn(|e: &Envelope<ItemAdded>| -> Result<(), HandlerError> {
                    if e.qty == 7 {
                        Err("seven".into())
                    } else {
                        Ok(())
                    }
                })
            },
        )
        .build()
        .unwrap();
    // Cart 2's five events are the oldest: retention deletes all of them.
    bus.publish_all((0..5).map(|qty| ItemAdded { cart: 2, qty }))
        .await
        .unwrap();
    bus.publish_all((0..100).map(|qty| ItemAdded { cart: 1, qty }))
        .await
        .unwrap();
    bus.shutdown(T).await.unwrap();
    assert_eq!(event_count(db), 105);

    // keep_last 10: 95 processed events may go, except the dead-lettered one.
    let bus = EventBus::builder()
        .sqlite(db)
        .retention(Retention::keep_last(10))
        .handler("a", counting("a"))
        .handler_with(
            "picky",
            HandlerOptions::new().retry(RetryPolicy::no_retry()),
            || handler_fn(|_: &Envelope<ItemAdded>| -> Result<(), HandlerError> { Ok(()) }),
        )
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while event_count(db) != 11 && std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        event_count(db),
        11,
        "the newest 10 and the dead-lettered event stay"
    );
    assert_eq!(bus.dead_letters(Some("picky")).unwrap().len(), 1);
    // A stream whose events were all deleted goes on from its version; it does not start over.
    let receipt = bus.publish(ItemAdded { cart: 2, qty: 9 }).await.unwrap();
    assert_eq!(receipt.stream_version, Some(6));
    bus.shutdown(T).await.unwrap();
    let store = actorbus::Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    let cart2 = store
        .events(&actorbus::EventFilter::all().stream("cart-2"))
        .unwrap();
    assert_eq!(
        cart2.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![6]
    );
}
