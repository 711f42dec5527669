//! The SQLite store: acknowledged events survive a restart, handlers resume from their
//! checkpoints, optimistic concurrency and idempotent ids, foreign files refused.

mod common;

use std::sync::{Arc, Mutex};

use actorbus::{
    handler_fn, Envelope, Error, EventBus, HandlerError, HandlerOptions, PublishOptions, StartFrom,
    StoreError,
};
use common::{Deposited, TempStore, DRAIN};

type Seen = Arc<Mutex<Vec<(String, u64, Option<u64>, Option<u64>)>>>;

fn recording_bus(
    path: &std::path::Path,
    name: &str,
    seen: &Seen,
    opts: HandlerOptions,
) -> EventBus {
    let seen = Arc::clone(seen);
    EventBus::builder()
        .sqlite(path)
        .handler_with(name, opts, move || {
            let seen = Arc::clone(&seen);
            handler_fn(move |e: &Envelope<Deposited>| -> Result<(), HandlerError> {
                seen.lock().unwrap().push((
                    e.stream_id().to_owned(),
                    e.seq,
                    e.position(),
                    e.stream_version(),
                ));
                Ok(())
            })
        })
        .build()
        .expect("bus builds")
}

#[actix::test]
async fn acknowledged_events_survive_a_restart_and_handlers_resume_from_their_checkpoint() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let first: Seen = Arc::default();
    let bus = recording_bus(db, "ledger", &first, HandlerOptions::new().concurrency(2));
    for seq in 0..50 {
        let receipt = bus
            .publish(Deposited {
                account: (seq % 5) as u32,
                seq,
            })
            .await
            .unwrap();
        assert_eq!(receipt.position, Some(seq + 1));
        assert_eq!(receipt.stream_version, Some(seq / 5 + 1));
    }
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(first.lock().unwrap().len(), 50);

    // Restart: the old handler has nothing to redo; new events reach it once.
    let second: Seen = Arc::default();
    let bus = recording_bus(db, "ledger", &second, HandlerOptions::new().concurrency(2));
    bus.publish(Deposited {
        account: 1,
        seq: 50,
    })
    .await
    .unwrap();
    bus.shutdown(DRAIN).await.unwrap();
    let second = second.lock().unwrap().clone();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].2, Some(51));

    // A new subscription starting from the beginning replays all 51, in per-stream order.
    let fresh: Seen = Arc::default();
    let bus = recording_bus(db, "audit", &fresh, HandlerOptions::new().concurrency(3));
    bus.shutdown(DRAIN).await.unwrap();
    let fresh = fresh.lock().unwrap().clone();
    assert_eq!(fresh.len(), 51);
    for account in 0..5 {
        let stream = format!("account-{account}");
        let versions: Vec<_> = fresh
            .iter()
            .filter(|s| s.0 == stream)
            .map(|s| s.3.unwrap())
            .collect();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "stream {stream}");
    }
}

#[actix::test]
async fn a_new_subscription_can_start_from_now() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let seen: Seen = Arc::default();
    let bus = recording_bus(db, "a", &seen, HandlerOptions::new());
    bus.publish_all((0..10).map(|seq| Deposited { account: 1, seq }))
        .await
        .unwrap();
    bus.shutdown(DRAIN).await.unwrap();

    let late: Seen = Arc::default();
    let bus = recording_bus(
        db,
        "late",
        &late,
        HandlerOptions::new().start_from(StartFrom::Now),
    );
    bus.publish(Deposited {
        account: 1,
        seq: 10,
    })
    .await
    .unwrap();
    bus.shutdown(DRAIN).await.unwrap();
    let late = late.lock().unwrap().clone();
    assert_eq!(late.iter().map(|s| s.1).collect::<Vec<_>>(), vec![10]);
}

#[actix::test]
async fn expected_version_mismatch_is_a_conflict_and_stores_nothing() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let seen: Seen = Arc::default();
    let bus = recording_bus(db, "a", &seen, HandlerOptions::new());
    let new_stream = PublishOptions::new().expected_version(0);
    bus.publish_with(Deposited { account: 9, seq: 0 }, new_stream.clone())
        .await
        .unwrap();
    let err = bus
        .publish_with(Deposited { account: 9, seq: 1 }, new_stream)
        .await
        .unwrap_err();
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
    let ok = bus
        .publish_with(
            Deposited { account: 9, seq: 1 },
            PublishOptions::new().expected_version(1),
        )
        .await
        .unwrap();
    assert_eq!(ok.stream_version, Some(2));
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

#[actix::test]
async fn publishing_an_event_id_again_does_not_store_it_twice() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let seen: Seen = Arc::default();
    let bus = recording_bus(db, "a", &seen, HandlerOptions::new());
    let id = uuid::Uuid::now_v7();
    let first = bus
        .publish_with(
            Deposited { account: 1, seq: 0 },
            PublishOptions::new().event_id(id),
        )
        .await
        .unwrap();
    let again = bus
        .publish_with(
            Deposited { account: 1, seq: 0 },
            PublishOptions::new().event_id(id),
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[actix::test]
async fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let tmp = TempStore::named("notes.txt");
    let path = tmp.path();
    let content = b"these are my notes, not a database\n".repeat(100);
    std::fs::write(path, &content).unwrap();
    let err = EventBus::builder().sqlite(path).build().unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NotADatabase { .. })),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
    assert_eq!(std::fs::read(path).unwrap(), content);
    assert_eq!(
        tmp.file_names(),
        vec!["notes.txt"],
        "no -wal or -shm files left"
    );
}

#[test]
fn the_store_url_selects_the_backend() {
    assert!(EventBus::builder().url("mysql://x").is_err());
    assert!(EventBus::builder().url("sqlite://bus.db").is_ok());
    assert!(EventBus::builder().url("postgres://127.0.0.1/app").is_ok());
    assert!(EventBus::builder()
        .url("postgresql://127.0.0.1/app")
        .is_ok());
    assert!(EventBus::builder().url("memory://").is_ok());
    let err = EventBus::builder()
        .url("mysql://me:secret@db/x")
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

/// Under a steady load the WAL starts over again and again rather than growing: the
/// checkpointer copies it back beside the writer, and the writer finishes the job between
/// two commits. Without that, no checkpoint beside a busy writer ever lets it start over,
/// and it grows by every commit until SQLite's own checkpoint stops the writer at 16384
/// frames (64 MiB) to copy it all back.
#[actix::test]
async fn the_wal_starts_over_under_a_steady_load() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let bus = EventBus::builder().sqlite(db).build().unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    let publishers = (0..64u32).map(|p| {
        let bus = bus.clone();
        async move {
            for seq in 0..1500u64 {
                bus.publish(Deposited { account: p, seq }).await.unwrap();
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    // Before shutdown, which deletes the WAL: its file is as long as it ever was.
    let longest = std::fs::metadata(&wal).unwrap().len();
    bus.shutdown(DRAIN).await.unwrap();
    let written = std::fs::metadata(db).unwrap().len();
    // 96,000 events are about 13 MB of rows; written in commits of about 32, their WAL
    // frames add up to hundreds of MB.
    assert!(written > 8_000_000, "{written} bytes stored");
    assert!(
        longest < 32 * 1024 * 1024,
        "the WAL grew to {longest} bytes: it never started over"
    );
}
