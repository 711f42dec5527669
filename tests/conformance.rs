//! One set of guarantees, run against every store: SQLite, and PostgreSQL (feature
//! `postgres`; a fresh database per test on 127.0.0.1:5432, SKIPPED when it is not reachable
//! unless `CI=true`). Each scenario is written once against [`TestStore`]; the macro at the
//! bottom runs it on each database.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    BusBuilder, Envelope, Error, EventBus, EventHandler, HandlerError, HandlerOptions,
    PublishOptions, Retention, StoreError,
};
use common::*;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

/// The store a scenario runs on; the same store across the scenario's restarts.
enum TestStore {
    Sqlite(TempStore),
    #[cfg(feature = "postgres")]
    Postgres(common::postgres::PgDatabase),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl TestStore {
    fn sqlite() -> Self {
        TestStore::Sqlite(TempStore::new())
    }

    /// A builder on this store.
    fn builder(&self) -> BusBuilder {
        match self {
            TestStore::Sqlite(tmp) => EventBus::builder().sqlite(tmp.path()),
            #[cfg(feature = "postgres")]
            TestStore::Postgres(db) => EventBus::builder().postgres(&db.url),
        }
    }

    /// Runs `sql` (one number, as `n`) on a connection of the test's own.
    fn number(&self, sql: &str) -> i64 {
        match self {
            TestStore::Sqlite(tmp) => {
                let mut conn = SqliteConnection::establish(tmp.path().to_str().unwrap()).unwrap();
                diesel::sql_query(sql)
                    .get_result::<Count>(&mut conn)
                    .unwrap()
                    .n
            }
            #[cfg(feature = "postgres")]
            TestStore::Postgres(db) => {
                diesel::sql_query(sql)
                    .get_result::<Count>(&mut db.connect())
                    .unwrap()
                    .n
            }
        }
    }

    /// Runs DDL on a connection of the test's own (after a first bus created the store).
    fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        match self {
            TestStore::Sqlite(tmp) => SqliteConnection::establish(tmp.path().to_str().unwrap())
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
            #[cfg(feature = "postgres")]
            TestStore::Postgres(db) => db.connect().batch_execute(sql).unwrap(),
        }
    }

    /// A store with the `applied` read model's table.
    async fn with_read_model(self) -> Self {
        let bus = self.builder().build().unwrap();
        bus.shutdown(DRAIN).await.unwrap();
        self.execute(APPLIED_DDL);
        self
    }

    /// (rows, distinct events) of the `applied` read model.
    fn applications(&self) -> (i64, i64) {
        (
            self.number("SELECT count(*) AS n FROM applied"),
            self.number("SELECT count(DISTINCT position) AS n FROM applied"),
        )
    }
}

/// Checks each stream's seqs arrived in order and that `expected` were handled in all.
fn assert_in_stream_order(log: &Log, expected: usize) {
    let entries = entries(log);
    assert_eq!(entries.len(), expected, "every event handled once");
    let mut last = std::collections::HashMap::new();
    for (stream, seq) in entries {
        if let Some(before) = last.insert(stream.clone(), seq) {
            assert!(before < seq, "{stream}: {seq} after {before}");
        }
    }
}

async fn per_stream_order_holds_with_concurrency(store: TestStore) {
    let log = new_log();
    let bus = store
        .builder()
        .handler_with(
            "recorder",
            HandlerOptions::new().concurrency(4),
            RecordingHandler::factory(&log),
        )
        .build()
        .unwrap();
    for seq in 0..300 {
        bus.publish(placed(seq % 7, seq)).await.unwrap();
    }
    drain(&bus).await;
    assert_in_stream_order(&log, 300);
}

async fn a_late_subscription_catches_up_without_gaps_and_a_restart_repeats_nothing(
    store: TestStore,
) {
    let bus = store.builder().build().unwrap();
    for seq in 0..120 {
        bus.publish(placed(seq % 5, seq)).await.unwrap();
    }
    drain(&bus).await;
    let log = new_log();
    for _ in 0..2 {
        let bus = store
            .builder()
            .handler_with(
                "late",
                HandlerOptions::new().concurrency(3),
                RecordingHandler::factory(&log),
            )
            .build()
            .unwrap();
        drain(&bus).await;
    }
    assert_in_stream_order(&log, 120);
}

async fn a_projection_applies_each_event_once_through_restarts_and_relayouts(store: TestStore) {
    let store = store.with_read_model().await;
    let mut total = 0;
    for (round, concurrency) in [4, 2, 3].into_iter().enumerate() {
        let bus = store
            .builder()
            .projection(
                "applied",
                HandlerOptions::new().concurrency(concurrency),
                || Applied,
            )
            .build()
            .unwrap();
        for i in 0..60 {
            bus.publish(placed(i % 7, round as u64 * 100 + i))
                .await
                .unwrap();
        }
        total += 60;
        drain(&bus).await;
        assert_eq!(
            store.applications(),
            (total, total),
            "after concurrency {concurrency}"
        );
    }
}

async fn version_conflicts_and_idempotent_ids_hold(store: TestStore) {
    let log = new_log();
    let bus = store
        .builder()
        .handler("recorder", RecordingHandler::factory(&log))
        .build()
        .unwrap();
    let first = PublishOptions::new().expected_version(0);
    bus.publish_with(placed(1, 0), first.clone()).await.unwrap();
    let err = bus.publish_with(placed(1, 1), first).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::VersionConflict {
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
    // Two publishes expecting the same version, usually in one group commit: one wins.
    let mut winners = Vec::new();
    for version in 0..10u64 {
        let expect = PublishOptions::new().expected_version(version);
        let (x, y) = tokio::join!(
            bus.publish_with(placed(5, 200 + version), expect.clone()),
            bus.publish_with(placed(5, 300 + version), expect),
        );
        let won = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "version {version}: {x:?} {y:?}");
        winners.push(if x.is_ok() { 200 } else { 300 } + version);
        let lost = if x.is_ok() { y } else { x };
        assert!(
            matches!(lost, Err(Error::VersionConflict { actual, .. }) if actual == version + 1),
            "version {version}: {lost:?}"
        );
    }
    let id = uuid::Uuid::now_v7();
    let once = bus
        .publish_with(placed(2, 2), PublishOptions::new().event_id(id))
        .await
        .unwrap();
    let again = bus
        .publish_with(placed(2, 2), PublishOptions::new().event_id(id))
        .await
        .unwrap();
    assert_eq!(
        once.position, again.position,
        "the retried publish is answered"
    );
    // A retry sent before the first publish was answered: both usually go in one group
    // commit, with an unrelated publish beside them. One event is stored, both publishes
    // are answered with it, and nobody else's publish fails.
    for seq in 10..30 {
        let options = PublishOptions::new().event_id(uuid::Uuid::now_v7());
        let (x, y, other) = tokio::join!(
            bus.publish_with(placed(3, seq), options.clone()),
            bus.publish_with(placed(3, seq), options),
            bus.publish(placed(4, seq + 100)),
        );
        assert_eq!(x.unwrap(), y.unwrap(), "seq {seq}: one id, one event");
        other.unwrap();
    }
    drain(&bus).await;
    let mut handled = seqs(&log);
    handled.sort_unstable();
    let mut expected = vec![0, 2];
    expected.extend((10..30).chain(110..130).chain(winners));
    assert_eq!(handled, expected);
    assert_eq!(store.number("SELECT count(*) AS n FROM events"), 52);
}

/// An event whose stream id is whatever the application gives it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Named {
    stream: String,
    note: String,
}

impl actorbus::DomainEvent for Named {
    const EVENT_TYPE: &'static str = "named";
    fn stream_id(&self) -> String {
        self.stream.clone()
    }
}

/// A stream id no store can keep is refused at publish, on every store. PostgreSQL text
/// holds no NUL: such an event failed its whole group commit. A stream id too long for an
/// index entry was stored, and then every indexing pass failed, and after a restart every
/// append.
async fn an_event_no_store_can_keep_is_refused_alone(store: TestStore) {
    let bus = store.builder().build().unwrap();
    let named = |stream: &str, note: &str| Named {
        stream: stream.into(),
        note: note.into(),
    };
    for _ in 0..10 {
        let (bad, nul_in_payload, other) = tokio::join!(
            bus.publish(named("a\0b", "x")),
            bus.publish(named("good", "y\0z")),
            bus.publish(named("other", "fine")),
        );
        let err = bad.unwrap_err();
        assert!(matches!(err, Error::InvalidEvent(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#"event cannot be stored: its stream id "a\0b" contains a NUL character (U+0000)"#
        );
        nul_in_payload.unwrap();
        other.unwrap();
    }
    let batch = bus
        .publish_all([named("fine", "1"), named("bad\0", "2")])
        .await;
    assert!(matches!(batch, Err(Error::InvalidEvent(_))), "{batch:?}");
    // Random letters: PostgreSQL would compress a repetitive id below its limit.
    let id = |len: usize| -> String { (0..len).map(|_| fastrand::alphanumeric()).collect() };
    let longest = id(actorbus::MAX_STREAM_ID_BYTES);
    let err = bus
        .publish(named(&id(actorbus::MAX_STREAM_ID_BYTES + 1), "x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "event cannot be stored: its stream id is 1025 bytes long; a store keeps at most 1024"
    );
    bus.publish(named(&longest, "1")).await.unwrap();
    drain(&bus).await;
    // The longest id indexed, and found again after a restart.
    let bus = store.builder().build().unwrap();
    let again = bus.publish(named(&longest, "2")).await.unwrap();
    assert_eq!(again.stream_version, Some(2));
    assert_eq!(bus.stream_version(&longest).await.unwrap(), 2);
    drain(&bus).await;
    assert_eq!(store.number("SELECT count(*) AS n FROM events"), 22);
}

/// Fails while the shared switch is on.
struct Broken(Arc<AtomicBool>, Log);

impl EventHandler<OrderPlaced> for Broken {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(format!("broken on seq {}", e.seq).into());
        }
        self.1
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

async fn dead_letters_are_kept_once_and_redriven(store: TestStore) {
    let broken = Arc::new(AtomicBool::new(true));
    let log = new_log();
    let (b, l) = (Arc::clone(&broken), Arc::clone(&log));
    let bus = store
        .builder()
        .handler_with(
            "fragile",
            HandlerOptions::new().retry(fast_retry(2)),
            move || Broken(Arc::clone(&b), Arc::clone(&l)),
        )
        .build()
        .unwrap();
    for seq in 0..5 {
        bus.publish(placed(seq, seq)).await.unwrap();
    }
    poll_until("five dead letters", || {
        bus.dead_letters(Some("fragile"))
            .is_ok_and(|letters| letters.len() == 5)
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    assert_eq!(bus.redrive("fragile").await.unwrap(), 5);
    poll_until("the redriven letters were handled", || {
        entries(&log).len() == 5
    })
    .await;
    drain(&bus).await;
    assert_eq!(
        store.number("SELECT count(*) AS n FROM dead_letters"),
        0,
        "handled letters go"
    );
}

async fn retention_then_publish_gives_a_new_position_that_is_handled(store: TestStore) {
    let log = new_log();
    let bus = store
        .builder()
        .retention(Retention::max_age(Duration::ZERO).every(Duration::from_millis(20)))
        .handler("recorder", RecordingHandler::factory(&log))
        .build()
        .unwrap();
    let id = uuid::Uuid::now_v7();
    let chosen = PublishOptions::new().event_id(id);
    bus.publish_with(placed(0, 0), chosen.clone())
        .await
        .unwrap();
    for seq in 1..=10 {
        bus.publish(placed(seq % 3, seq)).await.unwrap();
    }
    poll_until("retention deleted all 11 events", || {
        store.number("SELECT count(*) AS n FROM events") == 0
    })
    .await;
    let receipt = bus.publish(placed(1, 11)).await.unwrap();
    assert_eq!(receipt.position, Some(12), "no position is given out twice");
    // An id is known as long as its event is kept.
    let again = bus.publish_with(placed(0, 12), chosen).await.unwrap();
    assert_eq!(
        again.position,
        Some(13),
        "a deleted event's id stores a new one"
    );
    drain(&bus).await;
    let mut handled = seqs(&log);
    handled.sort_unstable();
    assert_eq!(handled, (0..=12).collect::<Vec<_>>());
}

/// SQLite: one bus per store.
async fn a_second_bus_on_the_same_store_is_refused(store: TestStore) {
    let bus = store.builder().build().unwrap();
    let second = store.builder().build();
    assert!(
        matches!(second, Err(Error::Store(StoreError::InUse { .. }))),
        "{:?}",
        second.err()
    );
    drain(&bus).await;
    let again = store.builder().build().unwrap();
    drain(&again).await;
}

/// Runs each scenario on SQLite and, with the `postgres` feature, on PostgreSQL.
macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix::test]
                async fn $scenario() {
                    super::$scenario(super::TestStore::sqlite()).await;
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[actix::test]
                async fn $scenario() {
                    if let Some(db) = super::common::postgres::PgDatabase::fresh() {
                        super::$scenario(super::TestStore::Postgres(db)).await;
                    }
                }
            )*
        }
    };
}

on_every_store!(
    per_stream_order_holds_with_concurrency,
    a_late_subscription_catches_up_without_gaps_and_a_restart_repeats_nothing,
    a_projection_applies_each_event_once_through_restarts_and_relayouts,
    version_conflicts_and_idempotent_ids_hold,
    dead_letters_are_kept_once_and_redriven,
    retention_then_publish_gives_a_new_position_that_is_handled,
    an_event_no_store_can_keep_is_refused_alone,
);

#[actix::test]
async fn sqlite_refuses_a_second_bus_on_the_same_store() {
    a_second_bus_on_the_same_store_is_refused(TestStore::sqlite()).await;
}

/// PostgreSQL only: what the advisory lock of appends promises.
#[cfg(feature = "postgres")]
mod postgres_appends {
    use super::*;
    use diesel::connection::SimpleConnection;

    /// The key appends serialize on ("actorbus" in ASCII), as another appender would take it.
    const APPEND_LOCK: i64 = 0x6163_746f_7262_7573;

    /// Events visible to a reader that starts now, by position.
    fn visible(db: &common::postgres::PgDatabase) -> Vec<i64> {
        #[derive(QueryableByName)]
        struct Position {
            #[diesel(sql_type = BigInt)]
            position: i64,
        }
        diesel::sql_query("SELECT position FROM events ORDER BY position")
            .load::<Position>(&mut db.connect())
            .unwrap()
            .into_iter()
            .map(|p| p.position)
            .collect()
    }

    /// The "skipped event" problem: an append whose transaction is still open holds every
    /// later append back, so no reader can see a later position and pass over the earlier one
    /// once it commits.
    #[actix::test]
    async fn a_later_event_never_becomes_visible_before_an_open_append_commits() {
        let Some(db) = common::postgres::PgDatabase::fresh() else {
            return;
        };
        let bus = EventBus::builder().postgres(&db.url).build().unwrap();
        bus.publish(placed(1, 1)).await.unwrap();

        // Another appender: takes the lock, writes position 2, and keeps its transaction open.
        let mut other = db.connect();
        other.batch_execute("BEGIN").unwrap();
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(APPEND_LOCK)
            .execute(&mut other)
            .unwrap();
        other
            .batch_execute(
                "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
                 schema_version, payload, metadata, recorded_at) VALUES (2, \
                 '\\x00000000000000000000000000000002', 'order-9', 1, 'order.placed', 1, \
                 '{\"order\":9,\"seq\":2}', NULL, 0)",
            )
            .unwrap();

        let publisher = bus.clone();
        let later = actix_rt::spawn(async move { publisher.publish(placed(2, 3)).await });
        poll_until("the bus's append waits for the lock", || {
            let mut conn = db.connect();
            diesel::sql_query(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .get_result::<Count>(&mut conn)
            .unwrap()
            .n == 1
        })
        .await;
        assert_eq!(
            visible(&db),
            vec![1],
            "nothing after position 1 is visible yet"
        );
        assert!(
            !later.is_finished(),
            "the later publish is not acknowledged"
        );

        other.batch_execute("COMMIT").unwrap();
        let receipt = later.await.unwrap().unwrap();
        assert_eq!(
            receipt.position,
            Some(3),
            "the later event follows the other's"
        );
        assert_eq!(visible(&db), vec![1, 2, 3]);
        drain(&bus).await;

        // A subscription that starts later reads all three, in order.
        let log = new_log();
        let bus = EventBus::builder()
            .postgres(&db.url)
            .handler("late", RecordingHandler::factory(&log))
            .build()
            .unwrap();
        drain(&bus).await;
        assert_eq!(seqs(&log), vec![1, 2, 3]);
    }
}

/// PostgreSQL only: two buses on one database (two members, as two processes would be)
/// race on one stream.
#[cfg(feature = "postgres")]
mod postgres_races {
    use super::*;

    #[actix::test]
    async fn expected_versions_and_event_ids_hold_when_two_buses_race_on_one_stream() {
        let Some(db) = common::postgres::PgDatabase::fresh() else {
            return;
        };
        let a = EventBus::builder().postgres(&db.url).build().unwrap();
        let b = EventBus::builder().postgres(&db.url).build().unwrap();
        for version in 0..40u64 {
            let options = PublishOptions::new().expected_version(version);
            let (x, y) = tokio::join!(
                a.publish_with(placed(1, version), options.clone()),
                b.publish_with(placed(1, version), options)
            );
            let won = [&x, &y].iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                won, 1,
                "round {version}: exactly one publish wins ({x:?}, {y:?})"
            );
            let lost = if x.is_ok() { y } else { x };
            assert!(
                matches!(
                    lost,
                    Err(Error::VersionConflict { expected, actual, .. })
                        if expected == version && actual == version + 1
                ),
                "round {version}: {lost:?}"
            );
        }
        for _ in 0..20 {
            let id = uuid::Uuid::now_v7();
            let options = PublishOptions::new().event_id(id);
            let (x, y) = tokio::join!(
                a.publish_with(placed(2, 0), options.clone()),
                b.publish_with(placed(2, 0), options)
            );
            assert_eq!(
                x.unwrap().position,
                y.unwrap().position,
                "one id, one event"
            );
        }
        drain(&a).await;
        drain(&b).await;
        let store = TestStore::Postgres(db);
        assert_eq!(store.number("SELECT count(*) AS n FROM events"), 60);
        assert_eq!(
            store.number("SELECT max(stream_version) AS n FROM events WHERE stream_id = 'order-1'"),
            40
        );
    }
}

/// PostgreSQL only: the server ends every session of the bus (a restart, a failover, an
/// administrator): publishing fails for a moment at most, then goes on, and nothing
/// acknowledged is lost.
#[cfg(feature = "postgres")]
mod postgres_sessions {
    use super::*;

    #[actix::test]
    async fn a_bus_whose_sessions_are_terminated_reconnects_and_loses_nothing() {
        let Some(db) = common::postgres::PgDatabase::fresh() else {
            return;
        };
        let log = new_log();
        let mut options = actorbus::PostgresOptions::new(&db.url);
        options.lease = Duration::from_millis(500);
        let bus = EventBus::builder()
            .store(actorbus::StoreConfig::Postgres(options))
            .handler("recorder", RecordingHandler::factory(&log))
            .build()
            .unwrap();
        let mut acked = Vec::new();
        for seq in 0..20 {
            bus.publish(placed(seq % 3, seq)).await.unwrap();
            acked.push(seq);
        }
        use diesel::connection::SimpleConnection;
        db.connect()
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .unwrap();
        let mut failures = 0;
        for seq in 20..40 {
            // A publish may fail while the writer notices; it is retried, as an application
            // would (its event id is new each time, so nothing is stored twice by a retry
            // that did commit: none did, since the error came from the commit itself).
            loop {
                match bus.publish(placed(seq % 3, seq)).await {
                    Ok(_) => break,
                    Err(e) => {
                        failures += 1;
                        assert!(failures <= 5, "publishing does not recover: {e}");
                    }
                }
            }
            acked.push(seq);
        }
        poll_until("every acknowledged event handled", || {
            let seen = seqs(&log);
            acked.iter().all(|s| seen.contains(s))
        })
        .await;
        drain(&bus).await;
    }
}

/// PostgreSQL only: a second bus joins while the first handles a stream of events (two
/// members, as two processes would be): half the partitions move over, each after its actor
/// drained and checkpointed, so no event is handled twice and every stream keeps its order,
/// across the hand-over and back (when the second shuts down).
#[cfg(feature = "postgres")]
mod postgres_handover {
    use super::*;

    fn member(url: &str, log: &Log) -> EventBus {
        let mut options = actorbus::PostgresOptions::new(url);
        options.lease = Duration::from_millis(500);
        EventBus::builder()
            .store(actorbus::StoreConfig::Postgres(options))
            .handler_with(
                "recorder",
                HandlerOptions::new().concurrency(4),
                RecordingHandler::factory(log),
            )
            .build()
            .unwrap()
    }

    fn owners(db: &common::postgres::PgDatabase) -> i64 {
        diesel::sql_query(
            "SELECT count(DISTINCT member) AS n FROM partition_owners WHERE member IS NOT NULL",
        )
        .get_result::<Count>(&mut db.connect())
        .unwrap()
        .n
    }

    #[actix::test]
    async fn partitions_move_between_live_processes_without_handling_an_event_twice() {
        let Some(db) = common::postgres::PgDatabase::fresh() else {
            return;
        };
        let log = new_log();
        let first = member(&db.url, &log);
        let mut seq = 0;
        for _ in 0..100 {
            first.publish(placed(seq % 8, seq)).await.unwrap();
            seq += 1;
        }
        let second = member(&db.url, &log);
        // Publishing goes on while the partitions move.
        while owners(&db) < 2 {
            first.publish(placed(seq % 8, seq)).await.unwrap();
            seq += 1;
            assert!(seq < 100_000, "the second bus never got a share");
        }
        for _ in 0..100 {
            second.publish(placed(seq % 8, seq)).await.unwrap();
            seq += 1;
        }
        drain(&second).await;
        for _ in 0..100 {
            first.publish(placed(seq % 8, seq)).await.unwrap();
            seq += 1;
        }
        let total = seq as usize;
        poll_until("every event handled", || entries(&log).len() >= total).await;
        drain(&first).await;
        assert_in_stream_order(&log, total);
    }
}

/// PostgreSQL only: a bus shuts down while another bus on the same store goes on publishing
/// (another process, as in production). The shutdown does not wait for the other's events.
#[cfg(feature = "postgres")]
mod postgres_shutdown {
    use super::*;

    #[actix::test]
    async fn a_bus_shuts_down_while_another_keeps_publishing() {
        let Some(db) = common::postgres::PgDatabase::fresh() else {
            return;
        };
        let log = new_log();
        let leaving = EventBus::builder()
            .postgres(&db.url)
            .handler("recorder", RecordingHandler::factory(&log))
            .build()
            .unwrap();
        let staying = EventBus::builder()
            .postgres(&db.url)
            .handler("recorder", RecordingHandler::factory(&new_log()))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let publishing = {
            let (staying, stop) = (staying.clone(), Arc::clone(&stop));
            actix_rt::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    staying.publish(placed(seq % 5, seq)).await.unwrap();
                    seq += 1;
                }
                seq
            })
        };
        for seq in 0..50 {
            leaving
                .publish(placed(seq % 5, 1_000_000 + seq))
                .await
                .unwrap();
        }
        leaving.shutdown(Duration::from_secs(10)).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let published = publishing.await.unwrap();
        assert!(published > 0);
        drain(&staying).await;
    }
}
