//! Ordering under failure: whatever fails or panics, each handler sees each stream's events in
//! publish order, and every event ends up handled or dead-lettered exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actorbus::{Envelope, EventBus, EventHandler, HandlerError, HandlerOptions};
use common::*;
use proptest::prelude::*;

/// What the chaos handler does with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Returns an error on the first attempt only.
    FailOnce,
    /// Panics on the first attempt only.
    PanicOnce,
    /// Fails every attempt: ends as a dead letter.
    AlwaysFail,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        2 => Just(Fault::FailOnce),
        2 => Just(Fault::PanicOnce),
        1 => Just(Fault::AlwaysFail),
    ]
}

/// Follows the plan; remembers first attempts across restarts (the instance does not survive).
struct Chaos {
    plan: Arc<Vec<Fault>>,
    tried: Arc<Mutex<HashSet<u64>>>,
    log: Log,
}

impl EventHandler<OrderPlaced> for Chaos {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let first_attempt = self.tried.lock().unwrap().insert(e.seq);
        match self.plan[e.seq as usize] {
            Fault::AlwaysFail => return Err("poison".into()),
            Fault::FailOnce if first_attempt => return Err("transient".into()),
            Fault::PanicOnce if first_attempt => panic!("chaos on seq {}", e.seq),
            _ => {}
        }
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

/// Per stream, the seqs a handler handled must strictly increase.
fn assert_per_stream_order(name: &str, log: &[(String, u64)]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (stream, seq) in log {
        if let Some(prev) = last.insert(stream, *seq) {
            assert!(
                prev < *seq,
                "{name}: {stream} saw seq {seq} after {prev}: {log:?}"
            );
        }
    }
}

fn run_case(events: &[(u64, Fault)], concurrency: usize, batched: bool) {
    let plan: Arc<Vec<Fault>> = Arc::new(events.iter().map(|(_, f)| *f).collect());
    let (chaos_log, steady_log) = (new_log(), new_log());
    actix::System::new().block_on(async {
        let factory = {
            let (plan, log) = (Arc::clone(&plan), Arc::clone(&chaos_log));
            let tried = Arc::new(Mutex::new(HashSet::new()));
            move || Chaos {
                plan: Arc::clone(&plan),
                tried: Arc::clone(&tried),
                log: Arc::clone(&log),
            }
        };
        let chaos_options = HandlerOptions::new()
            .concurrency(concurrency)
            .mailbox_capacity(3)
            .retry(fast_retry(3))
            .restart(fast_restart(10_000));
        let bus = EventBus::builder()
            .intake_capacity(5)
            .handler_with("chaos", chaos_options, factory)
            .handler_with(
                "steady",
                HandlerOptions::new().concurrency(concurrency),
                RecordingHandler::factory(&steady_log),
            )
            .build()
            .unwrap();

        let events: Vec<OrderPlaced> = events
            .iter()
            .enumerate()
            .map(|(seq, (stream, _))| placed(*stream, seq as u64))
            .collect();
        let receipts = if batched {
            bus.publish_all(events).await.unwrap()
        } else {
            let mut receipts = Vec::new();
            for event in events {
                receipts.push(bus.publish(event).await.unwrap());
            }
            receipts
        };
        drain(&bus).await;

        let seq_of: HashMap<_, _> = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i as u64))
            .collect();
        let chaos = chaos_log.lock().unwrap().clone();
        let steady = steady_log.lock().unwrap().clone();
        assert_per_stream_order("chaos", &chaos);
        assert_per_stream_order("steady", &steady);

        let mut steady_seqs: Vec<u64> = steady.iter().map(|(_, s)| *s).collect();
        steady_seqs.sort_unstable();
        assert_eq!(
            steady_seqs,
            (0..plan.len() as u64).collect::<Vec<_>>(),
            "steady saw every event once"
        );

        let handled: Vec<u64> = chaos.iter().map(|(_, s)| *s).collect();
        let dead: Vec<u64> = bus
            .dead_letters(Some("chaos"))
            .unwrap()
            .iter()
            .map(|l| seq_of[&l.event().id])
            .collect();
        let mut outcome: Vec<u64> = handled.iter().chain(&dead).copied().collect();
        outcome.sort_unstable();
        assert_eq!(
            outcome,
            (0..plan.len() as u64).collect::<Vec<_>>(),
            "handled or dead, exactly once"
        );
        let poisoned: HashSet<u64> = (0..plan.len() as u64)
            .filter(|s| plan[*s as usize] == Fault::AlwaysFail)
            .collect();
        assert_eq!(dead.iter().copied().collect::<HashSet<_>>(), poisoned);

        let stats = bus.stats();
        let chaos_stats = stats.handler("chaos").unwrap();
        assert_eq!(chaos_stats.handled, handled.len() as u64);
        assert_eq!(chaos_stats.dead_letters, dead.len() as u64);
        assert_eq!(chaos_stats.in_flight, 0);
        assert!(!chaos_stats.parked);
        let panics = plan.iter().filter(|f| **f == Fault::PanicOnce).count() as u64;
        assert_eq!(chaos_stats.restarts, panics);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn each_stream_is_handled_in_publish_order_and_no_event_is_lost(
        events in prop::collection::vec((0u64..8, fault()), 1..40),
        concurrency in 1usize..4,
        batched in any::<bool>(),
    ) {
        run_case(&events, concurrency, batched);
    }
}

#[test]
fn a_panic_and_a_failure_on_one_stream_keep_its_order() {
    use Fault::*;
    let events = [
        (1, None),
        (1, PanicOnce),
        (2, FailOnce),
        (1, FailOnce),
        (1, AlwaysFail),
        (2, PanicOnce),
        (1, None),
    ];
    run_case(&events, 2, false);
    run_case(&events, 1, true);
}
