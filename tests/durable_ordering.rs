//! Ordering on the SQLite store with many concurrent publishers, so that group commits
//! overlap (one written while the next is gathered): every stream's versions are assigned
//! in each publisher's order without gaps, and every handler sees each stream in version
//! order, each event once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actorbus::{
    handler_fn, DomainEvent, Durability, Envelope, EventBus, HandlerError, HandlerOptions,
};
use common::{TempStore, DRAIN};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// An event that names its publisher and that publisher's seq, so that each stream's order
/// can be checked against each publisher's (specific to this file, so not in tests/common).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Moved {
    stream: u64,
    publisher: u64,
    seq: u64,
}

impl DomainEvent for Moved {
    const EVENT_TYPE: &'static str = "thing.moved";
    fn stream_id(&self) -> String {
        format!("thing-{}", self.stream)
    }
}

/// (stream, version, position, publisher, seq) as a handler saw it.
type Seen = Arc<Mutex<Vec<(String, u64, u64, u64, u64)>>>;

fn run_case(
    publishers: u64,
    per_publisher: u64,
    streams: u64,
    concurrency: usize,
    durability: Durability,
) {
    let tmp = TempStore::new();
    let db = tmp.path();
    let seen: Seen = Arc::default();
    actix::System::new().block_on(async {
        let log = Arc::clone(&seen);
        let bus = EventBus::builder()
            .sqlite(db)
            .durability(durability)
            .intake_capacity(16)
            .handler_with(
                "recorder",
                HandlerOptions::new()
                    .concurrency(concurrency)
                    .mailbox_capacity(8),
                move || {
                    let log = Arc::clone(&log);
                    handler_fn(move |e: &Envelope<Moved>| -> Result<(), HandlerError> {
                        log.lock().unwrap().push((
                            e.stream_id().to_owned(),
                            e.stream_version().unwrap(),
                            e.position().unwrap(),
                            e.publisher,
                            e.seq,
                        ));
                        Ok(())
                    })
                },
            )
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..publishers)
            .map(|p| {
                let bus = bus.clone();
                actix_rt::spawn(async move {
                    let mut receipts = Vec::new();
                    for seq in 0..per_publisher {
                        let stream = (p + seq) % streams;
                        let event = Moved {
                            stream,
                            publisher: p,
                            seq,
                        };
                        let receipt = bus.publish(event).await.unwrap();
                        receipts.push((stream, receipt.stream_version.unwrap()));
                    }
                    receipts
                })
            })
            .collect();
        let mut versions: HashMap<u64, Vec<u64>> = HashMap::new();
        for task in tasks {
            let mut last: HashMap<u64, u64> = HashMap::new();
            for (stream, version) in task.await.unwrap() {
                if let Some(prev) = last.insert(stream, version) {
                    assert!(prev < version, "a publisher's own events keep its order");
                }
                versions.entry(stream).or_default().push(version);
            }
        }
        for (stream, mut v) in versions {
            v.sort_unstable();
            assert_eq!(
                v,
                (1..=v.len() as u64).collect::<Vec<_>>(),
                "stream {stream}: versions 1..n, each once"
            );
        }
        bus.shutdown(DRAIN).await.unwrap();
    });

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len() as u64,
        publishers * per_publisher,
        "each event once"
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (stream, version, _, _, _) in seen.iter() {
        let prev = last.insert(stream, *version).unwrap_or(0);
        assert_eq!(*version, prev + 1, "{stream} handled in version order");
    }
    let mut positions: Vec<u64> = seen.iter().map(|s| s.2).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), seen.len(), "positions are unique");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn concurrent_publishers_get_gapless_versions_and_handlers_see_stream_order(
        publishers in 1u64..48,
        per_publisher in 1u64..30,
        streams in 1u64..12,
        concurrency in 1usize..4,
    ) {
        run_case(publishers, per_publisher, streams, concurrency, Durability::Normal);
    }
}

#[test]
fn many_publishers_on_few_streams_keep_every_stream_in_order() {
    run_case(64, 40, 3, 2, Durability::Normal);
}

#[test]
fn with_full_durability_versions_and_order_hold_the_same() {
    run_case(32, 10, 3, 2, Durability::Full);
}
