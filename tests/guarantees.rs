//! The guarantees in ordinary use: each test is a sequence an application runs into (retention
//! then publish, a restart with idle actors or another concurrency, a parked handler, a second
//! bus, an operator command from another process, a shutdown with failures in flight).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use actorbus::{
    handler_fn, DomainEvent, Envelope, Error, EventBus, HandlerError, HandlerOptions, Projection,
    Replay, Retention, Store, StoreError,
};
use common::*;
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

/// The same projection without a reset: it cannot be replayed.
struct AppliedForGood;

impl Projection<OrderPlaced> for AppliedForGood {
    fn apply(
        &mut self,
        e: &Envelope<OrderPlaced>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        Applied.apply(e, conn)
    }
}

fn projection_bus(path: &Path, concurrency: usize) -> EventBus {
    EventBus::builder()
        .sqlite(path)
        .projection(
            "applied",
            HandlerOptions::new().concurrency(concurrency),
            || Applied,
        )
        .build()
        .unwrap()
}

async fn publish_round(bus: &EventBus, streams: u64, events: u64, seq_from: u64) {
    for i in 0..events {
        bus.publish(placed(i % streams, seq_from + i))
            .await
            .unwrap();
    }
}

// Case 1.
#[actix::test]
async fn retention_never_reuses_a_position_and_the_next_event_is_handled() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let bus = EventBus::builder()
        .sqlite(path)
        .retention(Retention::max_age(Duration::ZERO).every(Duration::from_millis(20)))
        .handler("recorder", RecordingHandler::factory(&log))
        .build()
        .unwrap();
    publish_round(&bus, 3, 10, 1).await;
    let store = Store::open(path).unwrap();
    poll_until("retention deleted all 10 events", || {
        store.summary().unwrap().events == 0
    })
    .await;
    let receipt = bus.publish(placed(1, 11)).await.unwrap();
    assert_eq!(
        receipt.position,
        Some(11),
        "position 1 is not given out again"
    );
    drain(&bus).await;
    assert_eq!(
        seqs(&log).len(),
        11,
        "the event after retention was handled"
    );
    assert!(seqs(&log).contains(&11));
    assert_eq!(store.head().unwrap(), 11);
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    let lag: Vec<u64> = store
        .summary()
        .unwrap()
        .handlers
        .iter()
        .map(|h| h.lag)
        .collect();
    assert_eq!(lag, vec![0]);
}

// Case 2.
#[actix::test]
async fn a_restart_with_the_same_concurrency_applies_each_event_once() {
    let tmp = TempStore::new();
    let path = tmp.path();
    create_with_read_model(path);
    for round in 0..3 {
        let bus = projection_bus(path, 4);
        // Two streams: two of the four actors never get an event.
        publish_round(&bus, 2, 10, round * 10).await;
        drain(&bus).await;
    }
    assert_eq!(applications(path), (30, 30));
}

// Case 3.
#[actix::test]
async fn changing_the_concurrency_applies_each_event_once() {
    let tmp = TempStore::new();
    let path = tmp.path();
    create_with_read_model(path);
    let mut total = 0;
    for (round, concurrency) in [4, 2, 3, 1, 4].into_iter().enumerate() {
        let bus = projection_bus(path, concurrency);
        publish_round(&bus, 7, 100, round as u64 * 100).await;
        total += 100;
        drain(&bus).await;
        assert_eq!(
            applications(path),
            (total, total),
            "after concurrency {concurrency}"
        );
    }
    let store = Store::open(path).unwrap();
    let layouts: Vec<u32> = store
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.partitions)
        .collect();
    assert_eq!(
        layouts,
        vec![4; 4],
        "the earlier layouts' checkpoints were passed and dropped"
    );
}

/// A subscription to a type that is published once, at the start.
#[derive(Debug, Serialize, Deserialize)]
struct StoreOpened;

impl DomainEvent for StoreOpened {
    const EVENT_TYPE: &'static str = "store.opened";
    fn stream_id(&self) -> String {
        "store".into()
    }
}

fn rare_and_busy(path: &Path, retention: Retention, log: &Log) -> EventBus {
    EventBus::builder()
        .sqlite(path)
        .retention(retention)
        .handler_with(
            "busy",
            HandlerOptions::new().concurrency(4),
            RecordingHandler::factory(log),
        )
        .handler("rare", || {
            handler_fn(|_: &Envelope<StoreOpened>| -> Result<(), HandlerError> { Ok(()) })
        })
        .build()
        .unwrap()
}

// Case 4.
#[actix::test]
async fn idle_actors_and_a_rare_subscription_do_not_hold_retention_back() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let retention = Retention::keep_last(0).every(Duration::from_millis(20));
    let bus = rare_and_busy(path, retention, &log);
    bus.publish(StoreOpened).await.unwrap();
    // One stream: three of the busy subscription's four actors stay idle.
    publish_round(&bus, 1, 100, 1).await;
    let store = Store::open(path).unwrap();
    poll_until("retention deleted every processed event", || {
        store.summary().unwrap().events == 0
    })
    .await;
    drain(&bus).await;
    assert_eq!(seqs(&log).len(), 100);
}

// Case 5.
#[actix::test]
async fn a_drained_bus_has_lag_zero_for_every_subscription() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let bus = rare_and_busy(path, Retention::keep_all(), &log);
    bus.publish(StoreOpened).await.unwrap();
    publish_round(&bus, 2, 101, 1).await;
    drain(&bus).await;
    let summary = Store::open(path).unwrap().summary().unwrap();
    assert_eq!(summary.head, 102);
    let lags: Vec<(String, u64)> = summary
        .handlers
        .iter()
        .map(|h| (h.name.clone(), h.lag))
        .collect();
    assert_eq!(lags, vec![("busy".into(), 0), ("rare".into(), 0)]);
}

// Case 6.
#[actix::test]
async fn a_parked_handler_keeps_one_dead_letter_per_event_and_does_not_replay_them() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let always = panics(u32::MAX);
    let bus = EventBus::builder()
        .sqlite(path)
        .handler_with(
            "auditor",
            HandlerOptions::new()
                .retry(fast_retry(1))
                .restart(fast_restart(2)),
            PanickingHandler::factory(&always, &log),
        )
        .build()
        .unwrap();
    publish_round(&bus, 5, 50, 1).await;
    drain(&bus).await;
    assert!(bus.stats().handler("auditor").unwrap().parked);
    let store = Store::open(path).unwrap();
    assert_eq!(store.dead_letters(None).unwrap().len(), 50);

    // Restarted with the handler fixed: its dead letters are not handled again by a replay.
    let fixed = panics(0);
    for _ in 0..2 {
        let bus = EventBus::builder()
            .sqlite(path)
            .handler("auditor", PanickingHandler::factory(&fixed, &log))
            .build()
            .unwrap();
        drain(&bus).await;
    }
    assert_eq!(seqs(&log), Vec::<u64>::new(), "handled only by a redrive");
    assert_eq!(store.dead_letters(None).unwrap().len(), 50, "one per event");

    let bus = EventBus::builder()
        .sqlite(path)
        .handler("auditor", PanickingHandler::factory(&fixed, &log))
        .build()
        .unwrap();
    assert_eq!(bus.redrive("auditor").await.unwrap(), 50);
    drain(&bus).await;
    let mut handled = seqs(&log);
    handled.sort_unstable();
    assert_eq!(handled, (1..=50).collect::<Vec<_>>());
    assert_eq!(store.dead_letters(None).unwrap().len(), 0);
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
}

// Case 6, the other half: a letter that fails again after a redrive stays one letter.
#[actix::test]
async fn a_redriven_letter_that_fails_again_is_updated_not_repeated() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let failing = || {
        handler_fn(|_: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
            Err("still down".into())
        })
    };
    let bus = EventBus::builder()
        .sqlite(path)
        .handler_with(
            "mailer",
            HandlerOptions::new().retry(fast_retry(2)),
            failing,
        )
        .build()
        .unwrap();
    publish_round(&bus, 2, 4, 1).await;
    for _ in 0..3 {
        poll_until("every event is a dead letter", || {
            bus.dead_letters(None).unwrap().len() == 4
                && bus.stats().handler("mailer").unwrap().in_flight == 0
        })
        .await;
        assert_eq!(bus.redrive("mailer").await.unwrap(), 4);
    }
    drain(&bus).await;
    let letters = Store::open(path).unwrap().dead_letters(None).unwrap();
    let mut positions: Vec<u64> = letters.iter().map(|l| l.event.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, vec![1, 2, 3, 4]);
}

/// One aggregate's events as one enum, beside the structs `OrderPlaced` and `PaymentCaptured`
/// that publish the same event type names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum OrderLifecycle {
    Placed { order: u64, seq: u64 },
    Paid { order: u64, cents: u64 },
}

impl DomainEvent for OrderLifecycle {
    const EVENT_TYPE: &'static str = "order.placed";
    const EVENT_TYPES: &'static [&'static str] = &["order.placed", "payment.captured"];
    fn stream_id(&self) -> String {
        match self {
            Self::Placed { order, .. } | Self::Paid { order, .. } => format!("order-{order}"),
        }
    }
    fn event_type(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "order.placed",
            Self::Paid { .. } => "payment.captured",
        }
    }
}

// Case 7.
#[actix::test]
async fn an_event_type_shared_by_two_rust_types_is_delivered_live_in_memory_and_on_sqlite() {
    let tmp = TempStore::new();
    for durable in [false, true] {
        let seen = new_log();
        let recorded = std::sync::Arc::clone(&seen);
        let mut builder = EventBus::builder().handler("lifecycle", move || {
            let recorded = std::sync::Arc::clone(&recorded);
            handler_fn(
                move |e: &Envelope<OrderLifecycle>| -> Result<(), HandlerError> {
                    let step = match e.event() {
                        OrderLifecycle::Placed { seq, .. } => *seq,
                        OrderLifecycle::Paid { cents, .. } => *cents,
                    };
                    recorded
                        .lock()
                        .unwrap()
                        .push((e.stream_id().to_owned(), step));
                    Ok(())
                },
            )
        });
        if durable {
            builder = builder.sqlite(tmp.path());
        }
        let bus = builder.build().unwrap();
        bus.publish(placed(1, 1)).await.unwrap();
        bus.publish(PaymentCaptured {
            order: 1,
            cents: 200,
        })
        .await
        .unwrap();
        bus.publish(placed(2, 3)).await.unwrap();
        drain(&bus).await;
        assert_eq!(
            bus.dead_letters(None).unwrap().len(),
            0,
            "durable: {durable}"
        );
        assert_eq!(seqs(&seen), vec![1, 200, 3], "durable: {durable}");
    }
}

fn actorbus_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_actorbus"))
}

// Case 8.
#[actix::test]
async fn another_process_reading_the_store_leaves_the_running_bus_its_locks_and_wal() {
    let tmp = TempStore::new();
    let path = tmp.path();
    // As the demo does: an operator handle first, then the bus, in one process.
    let store = Store::create(path).unwrap();
    let log = new_log();
    let bus = recording_sqlite_bus(path, &log);
    publish_round(&bus, 3, 50, 1).await;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(wal.exists());
    for command in [&["stats"][..], &["check"], &["events", "list"]] {
        let out = actorbus_bin()
            .args(command)
            .arg("--db")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command:?}: {out:?}");
        assert!(
            wal.exists(),
            "`actorbus {}` from another process deleted the running bus's WAL",
            command.join(" ")
        );
    }
    publish_round(&bus, 3, 50, 51).await;
    drain(&bus).await;
    assert_eq!(store.summary().unwrap().events, 100);
    let integrity = store
        .with_connection(|conn| {
            #[derive(QueryableByName)]
            struct Integrity {
                #[diesel(sql_type = Text)]
                integrity_check: String,
            }
            diesel::sql_query("PRAGMA integrity_check").get_result::<Integrity>(conn)
        })
        .unwrap();
    assert_eq!(integrity.integrity_check, "ok");
}

// Case 9.
#[actix::test]
async fn a_second_bus_on_the_same_store_is_refused_while_the_first_runs() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let builder = || {
        EventBus::builder()
            .sqlite(path)
            .handler("recorder", RecordingHandler::factory(&log))
    };
    let first = builder().build().unwrap();
    first.publish(placed(1, 1)).await.unwrap();
    let err = builder().build().unwrap_err();
    match &err {
        Error::Store(StoreError::InUse { holder, .. }) => {
            assert!(holder.contains(&std::process::id().to_string()), "{holder}")
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(!err.to_string().contains('\n'));
    // Another process, as a user would try it.
    let out = actorbus_bin()
        .args(["demo", "--quiet", "--events", "10", "--db"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another bus is running"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    drain(&first).await;
    drop(first);
    let second = builder().build().expect("free once the first is gone");
    second.publish(placed(1, 2)).await.unwrap();
    drain(&second).await;
    assert_eq!(seqs(&log), vec![1, 2]);
}

/// Fails every event whose seq is odd, every attempt.
struct OddFails;

impl Projection<OrderPlaced> for OddFails {
    fn apply(
        &mut self,
        e: &Envelope<OrderPlaced>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        if e.seq % 2 == 1 {
            return Err(format!("seq {} is odd", e.seq).into());
        }
        Applied.apply(e, conn)
    }
}

// Case 10.
#[actix::test]
async fn failures_at_shutdown_are_stored_as_dead_letters_and_not_handled_again() {
    let tmp = TempStore::new();
    let path = tmp.path();
    create_with_read_model(path);
    let build = || {
        EventBus::builder()
            .sqlite(path)
            .handler_with(
                "mailer",
                HandlerOptions::new().concurrency(4).retry(fast_retry(2)),
                || {
                    handler_fn(|_: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                        Err("mail server down".into())
                    })
                },
            )
            .projection(
                "odd-fails",
                HandlerOptions::new().concurrency(2).retry(fast_retry(2)),
                || OddFails,
            )
            .build()
            .unwrap()
    };
    let bus = build();
    bus.publish_all((1..=300).map(|seq| placed(seq % 17, seq)))
        .await
        .unwrap();
    drain(&bus).await;
    let store = Store::open(path).unwrap();
    let count = |handler: &str| store.dead_letters(Some(handler)).unwrap().len();
    assert_eq!(count("mailer"), 300);
    assert_eq!(count("odd-fails"), 150);
    assert_eq!(applications(path), (150, 150));
    for _ in 0..2 {
        let bus = build();
        drain(&bus).await;
        let stats = bus.stats();
        assert_eq!(
            stats.handler("mailer").unwrap().dead_letters,
            0,
            "nothing failed again"
        );
        assert_eq!(stats.handler("odd-fails").unwrap().dead_letters, 0);
    }
    assert_eq!((count("mailer"), count("odd-fails")), (300, 150));
    let lags: Vec<u64> = store
        .summary()
        .unwrap()
        .handlers
        .iter()
        .map(|h| h.lag)
        .collect();
    assert_eq!(lags, vec![0, 0]);
}

// Case 11.
#[actix::test]
async fn replaying_a_projection_rebuilds_its_read_model_or_is_refused() {
    let tmp = TempStore::new();
    let path = tmp.path();
    create_with_read_model(path);
    let bus = projection_bus(path, 3);
    publish_round(&bus, 5, 40, 1).await;
    let store = Store::open(path).unwrap();
    // While the bus runs, it would overwrite the replay: refused.
    match store.replay("applied", 0) {
        Err(Error::Store(StoreError::InUse { .. })) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    drain(&bus).await;
    drop(bus);
    match store.replay("applied", 5) {
        Err(Error::NotReplayable { reason, .. }) => assert!(reason.contains("from 0"), "{reason}"),
        other => panic!("expected NotReplayable, got {other:?}"),
    }
    assert_eq!(store.replay("applied", 0).unwrap(), Replay::Rebuild);
    let bus = projection_bus(path, 2);
    publish_round(&bus, 5, 10, 41).await;
    drain(&bus).await;
    assert_eq!(
        applications(path),
        (50, 50),
        "rebuilt: every event applied once"
    );
    assert_eq!(store.check().unwrap(), Vec::<String>::new());

    // A projection without a reset is refused, and nothing changes.
    let other = tmp.file("other.db");
    create_with_read_model(&other);
    let bus = EventBus::builder()
        .sqlite(&other)
        .projection("applied", HandlerOptions::new(), || AppliedForGood)
        .build()
        .unwrap();
    publish_round(&bus, 2, 5, 1).await;
    drain(&bus).await;
    drop(bus);
    let other_store = Store::open(&other).unwrap();
    let before = other_store.checkpoints().unwrap();
    match other_store.replay("applied", 0) {
        Err(e @ Error::NotReplayable { .. }) => {
            assert!(e.to_string().contains("twice"), "{e}")
        }
        other => panic!("expected NotReplayable, got {other:?}"),
    }
    assert_eq!(other_store.checkpoints().unwrap(), before);
}

// Case 12.
#[actix::test]
async fn check_beside_a_running_bus_reads_one_consistent_snapshot() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    // Retention deletes while check reads: a mark read before a deletion and rows read after
    // it would show gaps that are not there.
    let bus = EventBus::builder()
        .sqlite(path)
        .retention(Retention::keep_last(500).every(Duration::from_millis(10)))
        .handler_with(
            "recorder",
            HandlerOptions::new().concurrency(4),
            RecordingHandler::factory(&log),
        )
        .build()
        .unwrap();
    let publisher = {
        let bus = bus.clone();
        actix_rt::spawn(async move {
            for batch in 0..200u64 {
                bus.publish_all((0..50).map(|i| placed((batch * 50 + i) % 97, batch * 50 + i)))
                    .await
                    .unwrap();
            }
        })
    };
    let checker = {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let store = Store::open(&path).unwrap();
            let mut runs = 0;
            let mut problems = Vec::new();
            while store.head().unwrap() < 9_000 {
                problems.extend(store.check().unwrap());
                runs += 1;
            }
            (runs, problems)
        })
    };
    publisher.await.unwrap();
    drain(&bus).await;
    let (runs, problems) = checker.join().unwrap();
    assert!(runs > 0);
    assert_eq!(problems, Vec::<String>::new(), "over {runs} checks");
}

// Case 13.
#[actix::test]
async fn an_empty_sqlite_database_of_another_application_is_refused_untouched() {
    let tmp = TempStore::new();
    for (name, setup) in [
        ("versioned.db", "PRAGMA user_version = 7;"),
        ("app-id.db", "PRAGMA application_id = 1234;"),
        ("view.db", "CREATE VIEW answer AS SELECT 42;"),
    ] {
        let path = tmp.file(name);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(setup).unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        let err = EventBus::builder().sqlite(&path).build().unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::ForeignDatabase { .. })),
            "{name}: {err}"
        );
        assert!(matches!(
            Store::open(&path).unwrap_err(),
            Error::Store(StoreError::ForeignDatabase { .. })
        ));
        for command in ["stats", "check"] {
            let out = actorbus_bin()
                .args([command, "--db"])
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{name} {command}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "{name} untouched");
    }
}
