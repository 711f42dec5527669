//! On a durable bus the log is the buffer: a slow or stalled subscription lags and reads its
//! events back from the store; publishers and the other subscriptions do not wait for it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbus::{Envelope, EventBus, EventHandler, HandlerError, HandlerOptions, Store};
use common::*;
use proptest::prelude::*;
use tokio::sync::Semaphore;

/// Handles one event per permit: the test decides how fast it goes.
struct Metered {
    permits: Arc<Semaphore>,
    log: Log,
}

impl EventHandler<OrderPlaced> for Metered {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.permits.acquire().await?.forget();
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

fn metered_bus(
    path: &std::path::Path,
    capacity: usize,
    permits: &Arc<Semaphore>,
) -> (EventBus, Log, Log) {
    let slow_log = new_log();
    let fast_log = new_log();
    let (p, l) = (Arc::clone(permits), Arc::clone(&slow_log));
    let bus = EventBus::builder()
        .sqlite(path)
        .handler_with(
            "slow",
            HandlerOptions::new()
                .concurrency(2)
                .mailbox_capacity(capacity),
            move || Metered {
                permits: Arc::clone(&p),
                log: Arc::clone(&l),
            },
        )
        .handler_with(
            "fast",
            HandlerOptions::new()
                .concurrency(2)
                .mailbox_capacity(capacity),
            RecordingHandler::factory(&fast_log),
        )
        .build()
        .unwrap();
    (bus, slow_log, fast_log)
}

/// Each stream's seqs in the order handled, and whether any event came twice.
fn per_stream(log: &Log) -> (std::collections::BTreeMap<String, Vec<u64>>, bool) {
    let mut streams: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut twice = false;
    for (stream, seq) in entries(log) {
        twice |= !seen.insert(seq);
        streams.entry(stream).or_default().push(seq);
    }
    (streams, twice)
}

#[actix::test]
async fn a_stalled_handler_costs_publishers_and_other_subscriptions_nothing() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let permits = Arc::new(Semaphore::new(0));
    let (bus, slow_log, fast_log) = metered_bus(path, 16, &permits);
    // The slow subscription takes its first event and stalls on it.
    let mut slowest = Duration::ZERO;
    for seq in 1..=500 {
        let started = Instant::now();
        bus.publish(placed(seq % 5, seq)).await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    // Every publish returned while the stalled handler held its first event; the other
    // subscription handled everything meanwhile.
    eventually("the fast subscription handled all 500", || {
        entries(&fast_log).len() == 500
    })
    .await;
    assert_eq!(
        entries(&slow_log).len(),
        0,
        "the stalled one is still stalled"
    );
    let stats = bus.stats();
    println!(
        "500 publishes beside a stalled handler: slowest publish {slowest:?}; the other subscription's publish->handled p99 {:?}, max {:?}; the stalled one handled {}",
        stats.handler("fast").unwrap().latency.p99,
        stats.handler("fast").unwrap().latency.max,
        stats.handler("slow").unwrap().handled
    );

    // Released: it catches up from the store, each stream in order, nothing twice.
    permits.add_permits(500);
    eventually("the stalled subscription caught up", || {
        entries(&slow_log).len() >= 500
    })
    .await;
    drain(&bus).await;
    let (streams, twice) = per_stream(&slow_log);
    assert!(!twice, "an event was handled twice in one run");
    for (stream, seqs) in &streams {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "{stream} out of order");
    }
    assert_eq!(streams.values().map(Vec::len).sum::<usize>(), 500);
    let summary = Store::open(path).unwrap().summary().unwrap();
    assert!(summary.handlers.iter().all(|h| h.lag == 0), "{summary:?}");
}

#[actix::test]
async fn a_handler_ten_times_slower_than_the_publishers_lags_then_catches_up() {
    let tmp = TempStore::new();
    let path = tmp.path();
    let permits = Arc::new(Semaphore::new(0));
    let (bus, slow_log, fast_log) = metered_bus(path, 8, &permits);
    let mut most_behind = 0;
    for seq in 1..=2000u64 {
        bus.publish(placed(seq % 13, seq)).await.unwrap();
        if seq % 10 == 0 {
            permits.add_permits(1); // one event handled per ten published
        }
        most_behind = most_behind.max(seq as usize - entries(&slow_log).len());
    }
    // Far more behind than its buffers (2 actors x 8 events) hold: it read from the store.
    assert!(most_behind > 100, "{most_behind}");
    eventually("the fast subscription kept up", || {
        entries(&fast_log).len() == 2000
    })
    .await;
    // The load ends; it catches up.
    permits.add_permits(2000);
    eventually("the slow subscription caught up", || {
        entries(&slow_log).len() >= 2000
    })
    .await;
    drain(&bus).await;
    let (streams, twice) = per_stream(&slow_log);
    assert!(!twice);
    for seqs in streams.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    assert_eq!(streams.values().map(Vec::len).sum::<usize>(), 2000);
}

#[derive(Debug, Clone)]
enum Step {
    Publish { stream: u8, count: u8 },
    PublishAll { streams: Vec<u8> },
    Release(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..5, 1u8..30).prop_map(|(stream, count)| Step::Publish { stream, count }),
        2 => proptest::collection::vec(0u8..5, 1..20).prop_map(|streams| Step::PublishAll { streams }),
        3 => (0u16..40).prop_map(Step::Release),
    ]
}

fn run_steps(capacity: usize, steps: &[Step]) {
    let tmp = TempStore::new();
    let path = tmp.path();
    actix::System::new().block_on(async {
        let permits = Arc::new(Semaphore::new(0));
        let (bus, slow_log, fast_log) = metered_bus(path, capacity, &permits);
        let mut seq = 0u64;
        let published: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        for step in steps {
            match step {
                Step::Publish { stream, count } => {
                    for _ in 0..*count {
                        seq += 1;
                        bus.publish(placed(u64::from(*stream), seq)).await.unwrap();
                        published
                            .lock()
                            .unwrap()
                            .push((format!("order-{stream}"), seq));
                    }
                }
                Step::PublishAll { streams } => {
                    let events: Vec<_> = streams
                        .iter()
                        .map(|s| {
                            seq += 1;
                            published.lock().unwrap().push((format!("order-{s}"), seq));
                            placed(u64::from(*s), seq)
                        })
                        .collect();
                    bus.publish_all(events).await.unwrap();
                }
                Step::Release(n) => {
                    permits.add_permits(usize::from(*n));
                    actix_rt::task::yield_now().await;
                }
            }
        }
        permits.add_permits(seq as usize + 1);
        let total = seq as usize;
        eventually("both subscriptions handled everything", || {
            entries(&slow_log).len() >= total && entries(&fast_log).len() >= total
        })
        .await;
        drain(&bus).await;
        let expected = {
            let mut by_stream: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            for (stream, seq) in published.lock().unwrap().iter() {
                by_stream.entry(stream.clone()).or_default().push(*seq);
            }
            by_stream
        };
        for log in [&slow_log, &fast_log] {
            let (streams, twice) = per_stream(log);
            assert!(!twice, "an event handled twice in one run");
            assert_eq!(
                streams, expected,
                "every event once, each stream in publish order"
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    /// Live -> behind (reading the store) -> live, as often as the permits make it happen.
    #[test]
    fn order_and_delivery_hold_through_every_switch_between_live_and_catch_up(
        capacity in 1usize..6,
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        run_steps(capacity, &steps);
    }
}
