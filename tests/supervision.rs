//! Supervision: panicking handlers are rebuilt after a backoff within a budget, then parked
//! or the bus is halted; the events they panicked on are retried or kept, never dropped.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    Backoff, Envelope, Error, Escalation, EventBus, EventHandler, HandlerError, HandlerOptions,
    RestartPolicy,
};
use common::*;

#[actix::test]
async fn panicking_handler_restarts_after_backoff_and_retries_the_event() {
    let log = new_log();
    let builds = Arc::new(AtomicU32::new(0));
    let factory = {
        let (inner, builds) = (
            PanickingHandler::factory(&panics(1), &log),
            Arc::clone(&builds),
        );
        move || {
            builds.fetch_add(1, Ordering::SeqCst);
            inner()
        }
    };
    let restart = RestartPolicy::new(5, Duration::from_secs(60))
        .backoff(Backoff::new(Duration::from_millis(1)).jitter(0.0));
    let options = HandlerOptions::new().retry(fast_retry(5)).restart(restart);
    let bus = EventBus::builder()
        .handler_with("bomb", options, factory)
        .build()
        .unwrap();

    for seq in 1..=3 {
        bus.publish(placed(1, seq)).await.unwrap();
    }
    drain(&bus).await;

    assert_eq!(
        seqs(&log),
        vec![1, 2, 3],
        "the event it panicked on is retried, in order"
    );
    assert_eq!(
        builds.load(Ordering::SeqCst),
        2,
        "a fresh handler after the panic"
    );
    let stats = bus.stats();
    let bomb = stats.handler("bomb").unwrap();
    assert_eq!(bomb.restarts, 1);
    assert_eq!(
        (bomb.handled, bomb.failed_attempts, bomb.retries),
        (3, 1, 1)
    );
    assert_eq!(bomb.dead_letters, 0);
    assert!(!bomb.parked);
}

/// Panics on every attempt at the events whose seq is in `poison`.
struct Landmine {
    poison: u64,
    log: Log,
}

impl EventHandler<OrderPlaced> for Landmine {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        assert_ne!(e.seq, self.poison, "stepped on a landmine");
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

#[actix::test]
async fn event_that_keeps_panicking_is_dead_lettered_after_its_attempts() {
    let log = new_log();
    let factory_log = Arc::clone(&log);
    let options = HandlerOptions::new()
        .retry(fast_retry(3))
        .restart(fast_restart(100));
    let bus = EventBus::builder()
        .handler_with("mined", options, move || Landmine {
            poison: 1,
            log: Arc::clone(&factory_log),
        })
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    bus.publish(placed(1, 2)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![2]);
    let letters = bus.dead_letters(Some("mined")).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 3);
    assert!(
        letters[0].last_error().contains("stepped on a landmine"),
        "{}",
        letters[0].last_error()
    );
    let stats = bus.stats();
    let mined = stats.handler("mined").unwrap();
    assert_eq!((mined.restarts, mined.failed_attempts), (3, 3));
    assert!(!mined.parked);
}

fn always_panicking(escalation: Escalation) -> HandlerOptions {
    HandlerOptions::new().retry(fast_retry(5)).restart(
        RestartPolicy::new(2, Duration::from_secs(60))
            .backoff(Backoff::none())
            .escalation(escalation),
    )
}

#[actix::test]
async fn handler_spending_its_restart_budget_is_parked_and_others_keep_running() {
    let (bomb_log, steady_log) = (new_log(), new_log());
    let bus = EventBus::builder()
        .handler_with(
            "bomb",
            always_panicking(Escalation::ParkHandler),
            PanickingHandler::factory(&panics(u32::MAX), &bomb_log),
        )
        .handler_with(
            "steady",
            HandlerOptions::new(),
            RecordingHandler::factory(&steady_log),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    eventually("bomb is parked", || {
        bus.stats().handler("bomb").unwrap().parked
    })
    .await;
    assert!(
        bus.is_running(),
        "parking one handler does not stop the bus"
    );
    for seq in 2..=4 {
        bus.publish(placed(1, seq)).await.unwrap();
    }
    drain(&bus).await;

    assert_eq!(seqs(&steady_log), vec![1, 2, 3, 4]);
    assert!(bomb_log.lock().unwrap().is_empty());
    let stats = bus.stats();
    let bomb = stats.handler("bomb").unwrap();
    assert!(bomb.parked);
    assert_eq!(bomb.restarts, 2);
    assert_eq!(bomb.failed_attempts, 3, "first try and two restarts");
    assert_eq!(bomb.dead_letters, 4);
    assert_eq!(bomb.in_flight, 0);
    let letters = bus.dead_letters(Some("bomb")).unwrap();
    assert_eq!(letters.len(), 4, "undelivered events are kept, not dropped");
    assert_eq!(letters[0].attempts(), 3);
    assert!(
        letters.iter().all(|l| l.last_error().contains("parked")),
        "{letters:#?}"
    );
    assert!(bus.dead_letters(Some("steady")).unwrap().is_empty());
}

#[actix::test]
async fn redrive_resumes_a_parked_handler_once_it_is_fixed() {
    let log = new_log();
    let panics_left = panics(u32::MAX);
    let bus = EventBus::builder()
        .handler_with(
            "bomb",
            always_panicking(Escalation::ParkHandler),
            PanickingHandler::factory(&panics_left, &log),
        )
        .build()
        .unwrap();

    for seq in 1..=3 {
        bus.publish(placed(2, seq)).await.unwrap();
    }
    eventually("three dead letters", || {
        bus.stats().handler("bomb").unwrap().dead_letters == 3
    })
    .await;
    assert!(bus.stats().handler("bomb").unwrap().parked);

    panics_left.store(0, Ordering::SeqCst);
    assert_eq!(bus.redrive("bomb").await.unwrap(), 3);
    bus.publish(placed(2, 4)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![1, 2, 3, 4]);
    assert!(!bus.stats().handler("bomb").unwrap().parked);
    assert!(bus.dead_letters(None).unwrap().is_empty());
}

#[actix::test]
async fn stop_bus_escalation_halts_publishing() {
    let log = new_log();
    let bus = EventBus::builder()
        .handler_with(
            "bomb",
            always_panicking(Escalation::StopBus),
            PanickingHandler::factory(&panics(u32::MAX), &log),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    eventually("the bus halts", || !bus.is_running()).await;

    match bus.publish(placed(1, 2)).await {
        Err(Error::Halted { reason }) => assert!(reason.contains("bomb"), "{reason}"),
        other => panic!("expected Halted, got {other:?}"),
    }
    assert!(matches!(
        bus.try_publish(placed(1, 3)),
        Err(Error::Halted { .. })
    ));
    bus.shutdown(DRAIN).await.unwrap();
    assert!(matches!(
        bus.publish(placed(1, 4)).await,
        Err(Error::Halted { .. })
    ));

    let letters = bus.dead_letters(Some("bomb")).unwrap();
    assert_eq!(letters.len(), 1, "the event it panicked on is kept");
    assert_eq!(bus.stats().handler("bomb").unwrap().restarts, 2);
    assert_eq!(bus.stats().published, 1);
}

#[actix::test]
async fn factory_panicking_once_at_start_is_retried_and_the_handler_runs() {
    let log = new_log();
    let builds = Arc::new(AtomicU32::new(0));
    let factory = {
        let (log, builds) = (Arc::clone(&log), Arc::clone(&builds));
        move || {
            assert_ne!(
                builds.fetch_add(1, Ordering::SeqCst),
                0,
                "no connection yet"
            );
            RecordingHandler {
                log: Arc::clone(&log),
            }
        }
    };
    let bus = EventBus::builder()
        .handler_with(
            "late",
            HandlerOptions::new().restart(fast_restart(3)),
            factory,
        )
        .build()
        .expect("a panicking factory does not fail the build");

    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![1]);
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    assert!(!bus.stats().handler("late").unwrap().parked);
}

#[actix::test]
async fn factory_that_always_panics_parks_its_handler_without_aborting_the_process() {
    let steady_log = new_log();
    let bus = EventBus::builder()
        .handler_with(
            "broken",
            HandlerOptions::new().restart(fast_restart(2)),
            || -> RecordingHandler { panic!("misconfigured") },
        )
        .handler_with(
            "steady",
            HandlerOptions::new(),
            RecordingHandler::factory(&steady_log),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&steady_log), vec![1]);
    let stats = bus.stats();
    assert!(stats.handler("broken").unwrap().parked);
    assert_eq!(bus.dead_letters(Some("broken")).unwrap().len(), 1);
}

#[actix::test]
async fn panic_in_one_handler_actor_does_not_disturb_its_siblings() {
    let log = new_log();
    let options = HandlerOptions::new()
        .concurrency(4)
        .retry(fast_retry(5))
        .restart(fast_restart(10));
    let bus = EventBus::builder()
        .handler_with(
            "group",
            options,
            PanickingHandler::factory(&panics(1), &log),
        )
        .build()
        .unwrap();

    for seq in 0..40 {
        bus.publish(placed(seq % 8, seq)).await.unwrap();
    }
    drain(&bus).await;

    let mut seen = seqs(&log);
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    assert_eq!(bus.stats().handler("group").unwrap().restarts, 1);
}

#[actix::test]
async fn a_synchronous_handler_that_panics_is_restarted_like_an_async_one() {
    let log = new_log();
    let tripped = Arc::new(AtomicU32::new(0));
    let factory = {
        let (log, tripped) = (log.clone(), Arc::clone(&tripped));
        move || {
            let (log, tripped) = (log.clone(), Arc::clone(&tripped));
            // The closure runs when the handler is called, before any future exists.
            actorbus::handler_fn(
                move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                    if e.seq == 2 && tripped.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("synchronous panic");
                    }
                    log.lock().unwrap().push((e.stream_id().to_owned(), e.seq));
                    Ok(())
                },
            )
        }
    };
    let options = HandlerOptions::new()
        .retry(fast_retry(5))
        .restart(fast_restart(5));
    let bus = EventBus::builder()
        .handler_with("sync", options, factory)
        .build()
        .unwrap();
    for seq in 1..=3 {
        bus.publish(placed(1, seq)).await.unwrap();
    }
    drain(&bus).await;
    assert_eq!(seqs(&log), vec![1, 2, 3]);
    assert_eq!(bus.stats().handler("sync").unwrap().restarts, 1);
}
