//! The stream index: per-stream reads and versions over indexed events and the newest tail,
//! `check` catching a damaged index, and a store of an older schema migrated to it.

mod common;

use std::path::Path;

use actorbus::{DomainEvent, EventBus, EventFilter, Store};
use common::{Deposited, TempStore, DRAIN};

async fn publish(db: &Path, events: &[(u32, u64)]) -> Vec<u64> {
    let bus = EventBus::builder().sqlite(db).build().expect("bus builds");
    let mut versions = Vec::new();
    for &(account, seq) in events {
        let receipt = bus.publish(Deposited { account, seq }).await.unwrap();
        versions.push(
            receipt
                .stream_version
                .expect("a stored event has a version"),
        );
    }
    bus.shutdown(DRAIN).await.unwrap();
    versions
}

fn versions_of(db: &Path, stream: &str) -> Vec<u64> {
    Store::open(db)
        .unwrap()
        .events(&EventFilter::all().stream(stream))
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect()
}

/// Appends an event row as another process would, past the index mark.
fn insert_foreign(db: &Path, position: i64, stream: &str, version: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, \
         schema_version, payload, metadata, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, NULL, 0)",
        rusqlite::params![
            position,
            uuid::Uuid::now_v7().as_bytes().as_slice(),
            stream,
            version,
            Deposited::EVENT_TYPE,
            r#"{"account":1,"seq":1}"#,
        ],
    )
    .unwrap();
}

#[actix::test]
async fn per_stream_reads_and_versions_cover_indexed_events_and_the_unindexed_tail() {
    let tmp = TempStore::new();
    let db = tmp.path();
    assert_eq!(
        publish(db, &[(1, 10), (2, 20), (1, 11), (1, 12), (2, 21)]).await,
        vec![1, 1, 2, 3, 2]
    );
    // Another process appended version 4 of account-1; nothing indexed it yet.
    insert_foreign(db, 6, "account-1", 4);
    assert_eq!(versions_of(db, "account-1"), vec![1, 2, 3, 4]);
    assert_eq!(versions_of(db, "account-2"), vec![1, 2]);
    let store = Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    assert_eq!(store.summary().unwrap().streams, 2);
    drop(store);

    // The next bus indexes that tail before it appends, so versions go on from it.
    assert_eq!(publish(db, &[(1, 13), (3, 30)]).await, vec![5, 1]);
    assert_eq!(versions_of(db, "account-1"), vec![1, 2, 3, 4, 5]);
    let store = Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    assert_eq!(store.summary().unwrap().streams, 3);
}

/// The writer indexes the tail in pieces, one short transaction each, and moves the mark
/// with the last piece: thousands of events over a few streams, published while passes run,
/// end up indexed whole. A pass cut short (the process ended between two pieces) leaves
/// entries past the mark; readers, `check` and the next bus take them as they are.
#[actix::test]
async fn the_index_written_in_pieces_is_whole_and_a_pass_cut_short_is_taken_as_it_is() {
    let tmp = TempStore::new();
    let db = tmp.path();
    // 64 publishers at once: a few thousand events wait for each pass, many pieces' worth.
    let bus = EventBus::builder().sqlite(db).build().expect("bus builds");
    let publishers = (0..64u32).map(|p| {
        let bus = bus.clone();
        async move {
            for seq in 0..94u64 {
                let account = (p * 94 + seq as u32) % 7;
                bus.publish(Deposited { account, seq }).await.unwrap();
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    bus.shutdown(DRAIN).await.unwrap();
    let count = |account: u32| (0..64 * 94).filter(|i| i % 7 == account).count() as u64;
    for account in 0..7u32 {
        let expected: Vec<u64> = (1..=count(account)).collect();
        assert_eq!(versions_of(db, &format!("account-{account}")), expected);
    }
    let store = Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    drop(store);

    // Every entry is written and the mark is back at 0: what a pass cut short before its
    // last piece leaves.
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "UPDATE store_meta SET value = '0' WHERE key = 'indexed_through'",
        [],
    )
    .unwrap();
    drop(conn);
    assert_eq!(
        versions_of(db, "account-1").len() as u64,
        count(1),
        "no entry read twice"
    );
    let store = Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    assert_eq!(store.summary().unwrap().streams, 7);
    drop(store);

    // The next bus indexes that tail again, over what is there, and goes on from it.
    assert_eq!(publish(db, &[(1, 1), (9, 1)]).await, vec![count(1) + 1, 1]);
    assert_eq!(
        versions_of(db, "account-1"),
        (1..=count(1) + 1).collect::<Vec<u64>>()
    );
    let store = Store::open(db).unwrap();
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    assert_eq!(store.summary().unwrap().streams, 8);
}

#[actix::test]
async fn check_reports_a_damaged_stream_index_and_a_version_stored_twice() {
    let tmp = TempStore::new();
    let db = tmp.path();
    publish(db, &[(1, 10), (1, 11), (2, 20)]).await;
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "DELETE FROM stream_events WHERE stream_id = 'account-1' AND stream_version = 2",
        [],
    )
    .unwrap();
    drop(conn);
    // A second version 1 of account-2, past the mark.
    insert_foreign(db, 4, "account-2", 1);

    let problems = Store::open(db).unwrap().check().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing from the stream index")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("stored more than once")),
        "{problems:?}"
    );
}

/// The migrations a store of schema version 2 was created with.
const SCHEMA_2: [(&str, &str); 3] = [
    (
        "20261125000001",
        include_str!("../migrations/sqlite/2026-11-25-000001_create_store/up.sql"),
    ),
    (
        "20261125000002",
        include_str!("../migrations/sqlite/2026-11-25-000002_redrive_requests/up.sql"),
    ),
    (
        "20261125000003",
        include_str!("../migrations/sqlite/2026-11-25-000003_drop_type_index/up.sql"),
    ),
];

#[actix::test]
async fn a_store_of_the_previous_schema_is_migrated_with_every_event_and_version() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);",
    )
    .unwrap();
    for (version, sql) in SCHEMA_2 {
        conn.execute_batch(sql).unwrap();
        conn.execute(
            "INSERT INTO __diesel_schema_migrations (version) VALUES (?1)",
            [version],
        )
        .unwrap();
    }
    for (position, (stream, version)) in [("account-1", 1), ("account-2", 1), ("account-1", 2)]
        .into_iter()
        .enumerate()
    {
        insert_foreign(db, position as i64 + 1, stream, version);
    }
    drop(conn);

    assert_eq!(publish(db, &[(1, 1), (2, 2)]).await, vec![3, 2]);
    let store = Store::open(db).unwrap();
    let fresh = Store::create(db.with_file_name("fresh.db")).unwrap();
    assert_eq!(
        store.summary().unwrap().schema_version,
        fresh.schema_version().unwrap(),
        "migrated to the newest schema"
    );
    assert_eq!(store.head().unwrap(), 5);
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    drop(store);
    assert_eq!(versions_of(db, "account-1"), vec![1, 2, 3]);
    assert_eq!(versions_of(db, "account-2"), vec![1, 2]);
}

#[actix::test]
async fn a_version_stored_twice_by_another_process_stops_appends_with_a_clear_error() {
    let tmp = TempStore::new();
    let db = tmp.path();
    publish(db, &[(1, 10), (1, 11)]).await;
    // Another process wrote a second version 2 of account-1 past the mark.
    insert_foreign(db, 3, "account-1", 2);

    let bus = EventBus::builder().sqlite(db).build().unwrap();
    let err = bus
        .publish(Deposited { account: 2, seq: 1 })
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stored twice") && text.contains("actorbus check"),
        "{text}"
    );
    // Nothing was lost or added; once the duplicate is gone, publishing goes on.
    assert_eq!(Store::open(db).unwrap().head().unwrap(), 3);
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("DELETE FROM events WHERE position = 3", [])
        .unwrap();
    drop(conn);
    let receipt = bus
        .publish(Deposited {
            account: 1,
            seq: 12,
        })
        .await
        .unwrap();
    assert_eq!(receipt.stream_version, Some(3));
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(
        Store::open(db).unwrap().check().unwrap(),
        Vec::<String>::new()
    );
}

/// A row written behind the running bus's back at its next position (no bus does that; a
/// hand-made repair might): the commit that meets it fails with a clear, one-line error and
/// stores nothing, and the next publish goes on after the row. The failed statement rolls the
/// whole transaction back (`INSERT OR ROLLBACK`, which spares SQLite a statement journal):
/// the writer must still be usable after it.
#[actix::test]
async fn a_row_written_behind_the_running_bus_fails_one_commit_and_the_next_goes_on() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let bus = EventBus::builder().sqlite(db).build().expect("bus builds");
    for seq in 0..2 {
        bus.publish(Deposited { account: 1, seq }).await.unwrap();
    }
    insert_foreign(db, 3, "account-5", 1);
    let err = bus
        .publish(Deposited { account: 1, seq: 2 })
        .await
        .unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");
    assert!(matches!(err, actorbus::Error::Store(_)), "{err}");
    let receipt = bus.publish(Deposited { account: 1, seq: 3 }).await.unwrap();
    assert_eq!(
        (receipt.position, receipt.stream_version),
        (Some(4), Some(3))
    );
    let receipt = bus.publish(Deposited { account: 5, seq: 1 }).await.unwrap();
    assert_eq!(
        (receipt.position, receipt.stream_version),
        (Some(5), Some(2))
    );
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(versions_of(db, "account-1"), vec![1, 2, 3]);
    assert_eq!(versions_of(db, "account-5"), vec![1, 2]);
    let store = Store::open(db).unwrap();
    assert_eq!(store.head().unwrap(), 5);
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
}
