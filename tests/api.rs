//! What an application writing a service needs from the API: store settings in any order,
//! try_publish with options, a stream's version, async paged dead letters that read their own
//! writes, JSON for stats, diesel re-exported for projections, quiet caught panics.

mod common;

use std::process::Command;
use std::time::Duration;

use actorbus::diesel::{self, RunQueryDsl, SqliteConnection};
use actorbus::{
    handler_fn, Envelope, Error, EventBus, HandlerError, HandlerOptions, Projection,
    PublishOptions, Retention, Store,
};
use common::*;

#[actix::test]
async fn store_settings_apply_whether_given_before_or_after_the_store() {
    let tmp = TempStore::new();
    for (name, before) in [("before.db", true), ("after.db", false)] {
        let path = tmp.file(name);
        let retention = Retention::max_age(Duration::ZERO).every(Duration::from_millis(10));
        let log = new_log();
        let mut builder = EventBus::builder();
        builder = if before {
            builder.retention(retention).sqlite(&path)
        } else {
            builder.sqlite(&path).retention(retention)
        };
        let bus = builder
            .handler("recorder", RecordingHandler::factory(&log))
            .build()
            .unwrap();
        bus.publish_all((1..=20).map(|seq| placed(seq % 3, seq)))
            .await
            .unwrap();
        let store = Store::open(&path).unwrap();
        for _ in 0..2000 {
            if store.summary().unwrap().events == 0 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        drain(&bus).await;
        assert_eq!(
            store.summary().unwrap().events,
            0,
            "{name}: retention applied"
        );
    }
}

#[actix::test]
async fn try_publish_with_keeps_a_chosen_id_once_and_refuses_an_expected_version() {
    let tmp = TempStore::new();
    let log = new_log();
    let bus = EventBus::builder()
        .sqlite(tmp.path())
        .handler("recorder", RecordingHandler::factory(&log))
        .build()
        .unwrap();
    let id = uuid::Uuid::now_v7();
    for _ in 0..3 {
        let receipt = bus
            .try_publish_with(placed(1, 1), PublishOptions::new().event_id(id))
            .unwrap();
        assert_eq!(receipt.id, id);
    }
    let err = bus
        .try_publish_with(placed(1, 2), PublishOptions::new().expected_version(1))
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    drain(&bus).await;
    assert_eq!(seqs(&log), vec![1], "one event for one id");
}

#[actix::test]
async fn a_streams_version_is_readable_before_publishing_against_it() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let bus = recording_sqlite_bus(path, &log);
    assert_eq!(
        bus.stream_version("order-7").await.unwrap(),
        0,
        "no such order"
    );
    for seq in 1..=3 {
        bus.publish(placed(7, seq)).await.unwrap();
    }
    let version = bus.stream_version("order-7").await.unwrap();
    assert_eq!(version, 3);
    // What expected_version must be for the next event.
    bus.publish_with(
        placed(7, 4),
        PublishOptions::new().expected_version(version),
    )
    .await
    .unwrap();
    drain(&bus).await;
    assert_eq!(
        Store::open(path)
            .unwrap()
            .stream_version("order-7")
            .unwrap(),
        4
    );
    let memory = recording_bus(&log);
    assert!(matches!(
        memory.stream_version("order-7").await,
        Err(Error::Config(_))
    ));
    drain(&memory).await;
}

#[actix::test]
async fn dead_letters_are_listed_in_pages_as_soon_as_they_are_counted() {
    let tmp = TempStore::new();
    let bus = EventBus::builder()
        .sqlite(tmp.path())
        .handler_with("mailer", HandlerOptions::new().retry(fast_retry(1)), || {
            handler_fn(|_: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                Err("mail server down".into())
            })
        })
        .build()
        .unwrap();
    bus.publish_all((1..=10).map(|seq| placed(seq, seq)))
        .await
        .unwrap();
    eventually("ten dead letters counted", || {
        bus.stats().dead_letters() == 10
    })
    .await;
    // Counted, so listed: no waiting for the next checkpoint write.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = bus
            .list_dead_letters(Some("mailer"), after, 4)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|l| l.id());
        pages.push(page.len());
    }
    assert_eq!(pages, vec![4, 4, 2]);
    assert!(matches!(
        bus.list_dead_letters(Some("nobody"), None, 4).await,
        Err(Error::UnknownHandler(_))
    ));
    drain(&bus).await;
}

#[actix::test]
async fn stats_and_summaries_serialize_to_the_json_an_endpoint_returns() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let log = new_log();
    let bus = recording_sqlite_bus(path, &log);
    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;
    let stats = serde_json::to_value(bus.stats()).unwrap();
    assert_eq!(stats["published"], 1);
    assert_eq!(stats["handlers"][0]["name"], "recorder");
    assert_eq!(stats["handlers"][0]["handled"], 1);
    assert!(
        stats["handlers"][0]["latency"]["p99_us"].is_u64(),
        "{stats}"
    );
    let summary = serde_json::to_value(Store::open(path).unwrap().summary().unwrap()).unwrap();
    assert_eq!(summary["handlers"][0]["lag"], 0, "{summary}");
    let events = Store::open(path)
        .unwrap()
        .events(&actorbus::EventFilter::all())
        .unwrap();
    let event = serde_json::to_value(&events[0]).unwrap();
    assert!(event["recorded_at"].is_u64(), "{event}");
}

/// A read model written with the re-exported diesel only.
struct Counted;

impl Projection<OrderPlaced> for Counted {
    fn apply(
        &mut self,
        _e: &Envelope<OrderPlaced>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        diesel::sql_query("UPDATE counted SET n = n + 1").execute(conn)?;
        Ok(())
    }
}

#[actix::test]
async fn a_projection_needs_no_diesel_dependency_of_its_own() {
    let tmp = TempStore::new();
    let path = tmp.path();
    Store::create(path)
        .unwrap()
        .with_connection(|c| {
            diesel::sql_query("CREATE TABLE counted (n INTEGER NOT NULL)").execute(c)?;
            diesel::sql_query("INSERT INTO counted VALUES (0)").execute(c)
        })
        .unwrap();
    let bus = EventBus::builder()
        .sqlite(path)
        .projection("counted", HandlerOptions::new(), || Counted)
        .build()
        .unwrap();
    bus.publish_all((1..=5).map(|seq| placed(seq, seq)))
        .await
        .unwrap();
    drain(&bus).await;
    let n: i64 = Store::open(path)
        .unwrap()
        .with_connection(|c| {
            diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT n FROM counted").get_result(c)
        })
        .unwrap();
    assert_eq!(n, 5);
}

const PANIC_WORKER: &str = "ACTORBUS_API_PANIC_WORKER";

/// The child process of the next test: a handler that panics on every event.
#[test]
fn panicking_worker() {
    if std::env::var_os(PANIC_WORKER).is_none() {
        return;
    }
    actix::System::new().block_on(async {
        let always = panics(u32::MAX);
        let log = new_log();
        let bus = EventBus::builder()
            .handler_with(
                "bomb",
                HandlerOptions::new()
                    .retry(fast_retry(1))
                    .restart(fast_restart(10_000)),
                PanickingHandler::factory(&always, &log),
            )
            .build()
            .unwrap();
        for seq in 0..200 {
            bus.publish(placed(seq, seq)).await.unwrap();
        }
        drain(&bus).await;
        assert_eq!(bus.stats().restarts(), 200);
    });
}

#[test]
fn caught_handler_panics_do_not_flood_stderr() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panicking_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PANIC_WORKER, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("handler blew up").count(),
        0,
        "200 caught panics printed by the panic hook:\n{stderr}"
    );
}

/// Records each batch it gets; fails (once, or always) at the event whose seq is given.
struct Bulk {
    batches: std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>,
    fail_once_at: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
    always_fails: u64,
}

impl actorbus::BatchHandler<OrderPlaced> for Bulk {
    async fn handle_batch(
        &mut self,
        events: &[Envelope<OrderPlaced>],
    ) -> Result<(), actorbus::BatchError> {
        let mut done = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let once = {
                let mut f = self.fail_once_at.lock().unwrap();
                (*f == Some(e.seq)).then(|| f.take())
            };
            if once.is_some() || e.seq == self.always_fails {
                self.batches.lock().unwrap().push(done);
                return Err(actorbus::BatchError::at(
                    i,
                    format!("seq {} refused", e.seq),
                ));
            }
            done.push(e.seq);
        }
        self.batches.lock().unwrap().push(done);
        Ok(())
    }
}

#[actix::test]
async fn a_batch_handler_gets_runs_in_order_and_its_failures_are_retried_then_dead_lettered() {
    let tmp = TempStore::new();
    let batches: std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>> = Default::default();
    let fail_once_at = std::sync::Arc::new(std::sync::Mutex::new(Some(40)));
    let (b, f) = (batches.clone(), fail_once_at.clone());
    let bus = EventBus::builder()
        .sqlite(tmp.path())
        .batch_handler_with(
            "bulk",
            HandlerOptions::new().retry(fast_retry(3)),
            move || Bulk {
                batches: b.clone(),
                fail_once_at: f.clone(),
                always_fails: 77,
            },
        )
        .build()
        .unwrap();
    bus.publish_all((1..=100).map(|seq| placed(1, seq)))
        .await
        .unwrap();
    drain(&bus).await;
    let batches = batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|b| b.len() > 10),
        "runs, not one by one: {batches:?}"
    );
    let handled: Vec<u64> = batches.into_iter().flatten().collect();
    // Once each, in stream order; 40 failed once and was retried; 77 always fails.
    let expected: Vec<u64> = (1..=100).filter(|s| *s != 77).collect();
    assert_eq!(handled, expected);
    let letters = bus.list_dead_letters(Some("bulk"), None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].last_error().contains("seq 77"),
        "{}",
        letters[0].last_error()
    );
}

/// Records the thread each event was handled on.
struct ThreadRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(std::thread::ThreadId, String, u64)>>>,
}

impl actorbus::EventHandler<OrderPlaced> for ThreadRecorder {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((
            std::thread::current().id(),
            e.stream_id().to_owned(),
            e.seq,
        ));
        Ok(())
    }
}

#[actix::test]
async fn handler_actors_run_on_their_threads_and_keep_each_streams_order() {
    for threads in [1, 2] {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let s = seen.clone();
        let bus = EventBus::builder()
            .handler_threads(threads)
            .handler_with(
                "recorder",
                HandlerOptions::new().concurrency(4),
                move || ThreadRecorder { seen: s.clone() },
            )
            .build()
            .unwrap();
        for seq in 0..400 {
            bus.publish(placed(seq % 16, seq)).await.unwrap();
        }
        drain(&bus).await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 400);
        let here = std::thread::current().id();
        let used: std::collections::HashSet<_> = seen.iter().map(|s| s.0).collect();
        if threads == 1 {
            assert_eq!(used, [here].into(), "one thread: the caller's arbiter");
        } else {
            assert_eq!(used.len(), 2, "four actors on two threads");
            assert!(!used.contains(&here), "not on the caller's arbiter");
        }
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        for (_, stream, seq) in &seen {
            if let Some(before) = last.insert(stream.clone(), *seq) {
                assert!(*seq > before, "{stream}: {seq} after {before}");
            }
        }
    }
}
