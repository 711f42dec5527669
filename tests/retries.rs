//! Retries and dead letters: failing events are retried, then kept aside, redriven or purged.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    Envelope, Error, EventBus, EventHandler, HandlerError, HandlerOptions, RetryPolicy,
};
use common::*;

#[actix::test]
async fn handler_failing_twice_then_succeeding_handles_the_event() {
    let log = new_log();
    let factory_log = Arc::clone(&log);
    let bus = EventBus::builder()
        .handler_with(
            "flaky",
            HandlerOptions::new().retry(fast_retry(5)),
            move || FailingHandler {
                failures_left: 2,
                log: Arc::clone(&factory_log),
            },
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![1]);
    let stats = bus.stats();
    let flaky = stats.handler("flaky").unwrap();
    assert_eq!(flaky.handled, 1);
    assert_eq!(flaky.retries, 2);
    assert_eq!(flaky.failed_attempts, 2);
    assert_eq!(flaky.dead_letters, 0);
    assert!(bus.dead_letters(None).unwrap().is_empty());
}

/// Always fails on the events whose seq is in `poison`; records the others.
struct Picky {
    poison: Vec<u64>,
    log: Log,
}

impl EventHandler<OrderPlaced> for Picky {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if self.poison.contains(&e.seq) {
            return Err(format!("cannot handle seq {}", e.seq).into());
        }
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

fn picky(poison: &[u64], log: &Log) -> impl Fn() -> Picky + 'static {
    let (poison, log) = (poison.to_vec(), Arc::clone(log));
    move || Picky {
        poison: poison.clone(),
        log: Arc::clone(&log),
    }
}

#[actix::test]
async fn always_failing_event_becomes_a_dead_letter_and_the_handler_moves_on() {
    let log = new_log();
    let retry = RetryPolicy::new(3)
        .base_delay(Duration::from_millis(1))
        .jitter(0.0);
    let bus = EventBus::builder()
        .handler_with(
            "picky",
            HandlerOptions::new().retry(retry),
            picky(&[1], &log),
        )
        .build()
        .unwrap();

    let poisoned = bus.publish(placed(4, 1)).await.unwrap();
    bus.publish(placed(4, 2)).await.unwrap();
    drain(&bus).await;

    assert_eq!(
        seqs(&log),
        vec![2],
        "the next event of the stream is handled"
    );
    let letters = bus.dead_letters(Some("picky")).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.handler(), "picky");
    assert_eq!(letter.attempts(), 3);
    assert_eq!(letter.last_error(), "cannot handle seq 1");
    assert_eq!(letter.event().id, poisoned.id);
    assert_eq!(letter.event().stream_id, "order-4");
    assert_eq!(letter.event().event_type, "order.placed");

    let stats = bus.stats();
    let picky = stats.handler("picky").unwrap();
    assert_eq!((picky.handled, picky.dead_letters), (1, 1));
    assert_eq!((picky.failed_attempts, picky.retries), (3, 2));
    assert_eq!(picky.in_flight, 0);
    assert_eq!(stats.dead_letters(), 1);
}

#[actix::test]
async fn no_retry_policy_dead_letters_after_one_attempt() {
    let log = new_log();
    let bus = EventBus::builder()
        .handler_with(
            "picky",
            HandlerOptions::new().retry(RetryPolicy::no_retry()),
            picky(&[7], &log),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 7)).await.unwrap();
    drain(&bus).await;

    let letters = bus.dead_letters(None).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 1);
    assert_eq!(bus.stats().handler("picky").unwrap().retries, 0);
}

/// Fails every event while the shared switch says it is broken.
struct Switchable {
    broken: Arc<AtomicBool>,
    log: Log,
}

impl EventHandler<OrderPlaced> for Switchable {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("downstream is down".into());
        }
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

#[actix::test]
async fn redrive_hands_dead_letters_back_in_their_original_order() {
    let log = new_log();
    let broken = Arc::new(AtomicBool::new(true));
    let (factory_log, factory_broken) = (Arc::clone(&log), Arc::clone(&broken));
    let bus = EventBus::builder()
        .handler_with(
            "mailer",
            HandlerOptions::new().retry(fast_retry(2)),
            move || Switchable {
                broken: Arc::clone(&factory_broken),
                log: Arc::clone(&factory_log),
            },
        )
        .build()
        .unwrap();

    let mut receipts = Vec::new();
    for seq in 1..=6 {
        receipts.push(bus.publish(placed(seq % 2, seq)).await.unwrap());
    }
    eventually("six dead letters", || {
        bus.stats().handler("mailer").unwrap().dead_letters == 6
    })
    .await;
    let ids: Vec<_> = bus
        .dead_letters(Some("mailer"))
        .unwrap()
        .iter()
        .map(|l| l.event().id)
        .collect();
    assert_eq!(ids, receipts.iter().map(|r| r.id).collect::<Vec<_>>());
    assert!(log.lock().unwrap().is_empty());

    broken.store(false, Ordering::SeqCst);
    assert_eq!(bus.redrive("mailer").await.unwrap(), 6);
    drain(&bus).await;

    assert_eq!(seqs(&log), (1..=6).collect::<Vec<_>>());
    assert!(bus.dead_letters(None).unwrap().is_empty());
    let stats = bus.stats();
    let mailer = stats.handler("mailer").unwrap();
    assert_eq!(mailer.handled, 6);
    assert_eq!(mailer.in_flight, 0);
}

#[actix::test]
async fn redrive_of_a_still_failing_handler_dead_letters_again() {
    let log = new_log();
    let bus = EventBus::builder()
        .handler_with(
            "picky",
            HandlerOptions::new().retry(fast_retry(2)),
            picky(&[1], &log),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    eventually("a dead letter", || bus.stats().dead_letters() == 1).await;
    assert_eq!(bus.redrive("picky").await.unwrap(), 1);
    drain(&bus).await;

    let letters = bus.dead_letters(Some("picky")).unwrap();
    assert_eq!(
        letters.len(),
        1,
        "the letter is back, not lost and not doubled"
    );
    assert_eq!(letters[0].attempts(), 2);
}

#[actix::test]
async fn purge_removes_dead_letters_of_one_handler_or_all() {
    let (a_log, b_log) = (new_log(), new_log());
    let bus = EventBus::builder()
        .handler_with(
            "a",
            HandlerOptions::new().retry(fast_retry(1)),
            picky(&[1, 2], &a_log),
        )
        .handler_with(
            "b",
            HandlerOptions::new().retry(fast_retry(1)),
            picky(&[3], &b_log),
        )
        .build()
        .unwrap();

    for seq in 1..=3 {
        bus.publish(placed(9, seq)).await.unwrap();
    }
    drain(&bus).await;
    assert_eq!(bus.dead_letters(None).unwrap().len(), 3);

    assert_eq!(bus.purge_dead_letters(Some("a")).await.unwrap(), 2);
    let left = bus.dead_letters(None).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handler(), "b");
    assert!(bus.dead_letters(Some("a")).unwrap().is_empty());

    assert_eq!(bus.purge_dead_letters(None).await.unwrap(), 1);
    assert!(bus.dead_letters(None).unwrap().is_empty());
    assert_eq!(bus.purge_dead_letters(None).await.unwrap(), 0);
}

#[actix::test]
async fn unknown_handler_name_is_an_error() {
    let bus = EventBus::builder()
        .handler_with(
            "known",
            HandlerOptions::new(),
            RecordingHandler::factory(&new_log()),
        )
        .build()
        .unwrap();

    let is_unknown = |e: Error| matches!(e, Error::UnknownHandler(name) if name == "nope");
    assert!(is_unknown(bus.dead_letters(Some("nope")).unwrap_err()));
    assert!(is_unknown(
        bus.purge_dead_letters(Some("nope")).await.unwrap_err()
    ));
    assert!(is_unknown(bus.redrive("nope").await.unwrap_err()));
    assert!(bus.dead_letters(Some("known")).unwrap().is_empty());
    drain(&bus).await;
}
