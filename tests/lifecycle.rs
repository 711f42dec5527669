//! Lifecycle: building (and refusing bad settings), shutting down, and what a stopped bus answers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    Envelope, Error, EventBus, EventHandler, HandlerError, HandlerOptions, RetryPolicy,
};
use common::*;

#[actix::test]
async fn stopped_bus_refuses_events_with_stopped() {
    let log = new_log();
    let bus = recording_bus(&log);
    let clone = bus.clone();
    bus.publish(placed(1, 1)).await.unwrap();
    assert!(bus.is_running());

    drain(&bus).await;

    assert!(!bus.is_running());
    assert!(!clone.is_running(), "clones share the bus");
    assert!(matches!(
        bus.publish(placed(1, 2)).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(
        clone.try_publish(placed(1, 3)),
        Err(Error::Stopped)
    ));
    assert!(matches!(
        bus.publish_all([placed(1, 4)]).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(bus.redrive("recorder").await, Err(Error::Stopped)));
    assert_eq!(seqs(&log), vec![1]);
    assert_eq!(bus.stats().published, 1);
}

/// A durable bus's dead letters live in its store, whose writer goes with the bus: after
/// shutdown, a purge is refused as a redrive is, with `Stopped`.
#[actix::test]
async fn a_stopped_durable_bus_refuses_a_purge_with_stopped() {
    let tmp = TempStore::new();
    let bus = recording_sqlite_bus(tmp.path(), &new_log());
    bus.publish(placed(1, 1)).await.unwrap();
    assert_eq!(bus.purge_dead_letters(Some("recorder")).await.unwrap(), 0);
    drain(&bus).await;
    assert!(matches!(
        bus.purge_dead_letters(Some("recorder")).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(bus.redrive("recorder").await, Err(Error::Stopped)));
}

#[actix::test]
async fn shutting_down_twice_is_fine() {
    let log = new_log();
    let bus = recording_bus(&log);
    bus.publish(placed(1, 1)).await.unwrap();

    bus.shutdown(DRAIN).await.unwrap();
    bus.shutdown(DRAIN).await.unwrap();
    bus.clone().shutdown(DRAIN).await.unwrap();

    assert_eq!(seqs(&log), vec![1]);
}

#[actix::test]
async fn bus_without_subscriptions_builds_and_shuts_down() {
    let bus = EventBus::builder().build().unwrap();
    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;
    assert_eq!(bus.stats().unrouted, 1);
    assert!(bus.stats().handlers.is_empty());
}

#[actix::test]
async fn shutdown_gives_up_after_its_timeout_when_a_handler_is_stuck() {
    let mut gate = Gate::closed();
    let bus = EventBus::builder()
        .handler_with("stuck", HandlerOptions::new(), gate.handler_factory())
        .build()
        .unwrap();
    bus.publish(placed(1, 1)).await.unwrap();
    gate.entered().await;

    let timeout = Duration::from_millis(50);
    match bus.shutdown(timeout).await {
        Err(Error::ShutdownTimeout(t)) => assert_eq!(t, timeout),
        other => panic!("expected ShutdownTimeout, got {other:?}"),
    }
    assert!(
        matches!(bus.publish(placed(1, 2)).await, Err(Error::Stopped)),
        "intake stays closed"
    );

    gate.open();
    drain(&bus).await;
    assert_eq!(seqs(&gate.log), vec![1], "a later shutdown still drains");
}

#[actix::test]
async fn two_handlers_with_one_name_are_refused() {
    let log = new_log();
    let result = EventBus::builder()
        .handler_with(
            "twin",
            HandlerOptions::new(),
            RecordingHandler::factory(&log),
        )
        .handler_with(
            "twin",
            HandlerOptions::new(),
            RecordingHandler::factory(&log),
        )
        .build();
    assert!(matches!(result, Err(Error::DuplicateHandler(name)) if name == "twin"));
}

fn build_with(options: HandlerOptions) -> Result<EventBus, Error> {
    EventBus::builder()
        .handler_with("h", options, RecordingHandler::factory(&new_log()))
        .build()
}

#[actix::test]
async fn zero_sizes_and_zero_attempts_are_configuration_errors() {
    let refused = [
        (
            "concurrency",
            build_with(HandlerOptions::new().concurrency(0)),
        ),
        (
            "mailbox",
            build_with(HandlerOptions::new().mailbox_capacity(0)),
        ),
        (
            "attempts",
            build_with(HandlerOptions::new().retry(RetryPolicy::new(0))),
        ),
        ("intake", EventBus::builder().intake_capacity(0).build()),
        (
            "empty name",
            EventBus::builder()
                .handler_with(
                    " ",
                    HandlerOptions::new(),
                    RecordingHandler::factory(&new_log()),
                )
                .build(),
        ),
    ];
    for (what, result) in refused {
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{what}: {result:?}"
        );
    }
    let smallest = build_with(
        HandlerOptions::new()
            .concurrency(1)
            .mailbox_capacity(1)
            .retry(RetryPolicy::new(1)),
    );
    drain(&smallest.expect("ones are valid")).await;
}

#[actix::test]
async fn absurd_intake_capacity_is_a_configuration_error_not_a_panic() {
    let result =
        std::panic::catch_unwind(|| EventBus::builder().intake_capacity(usize::MAX).build());
    assert!(
        matches!(result, Ok(Err(Error::Config(_)))),
        "build panicked or accepted the capacity"
    );
}

#[test]
fn building_outside_an_actix_system_is_refused() {
    let result = EventBus::builder()
        .handler_with(
            "h",
            HandlerOptions::new(),
            RecordingHandler::factory(&new_log()),
        )
        .build();
    assert!(matches!(result, Err(Error::NoSystem)), "{result:?}");
}

#[test]
fn building_beside_a_system_that_is_not_running_is_refused() {
    let _system = actix::System::new();
    let result = std::panic::catch_unwind(|| {
        EventBus::builder()
            .handler_with(
                "h",
                HandlerOptions::new(),
                RecordingHandler::factory(&new_log()),
            )
            .build()
    });
    assert!(
        matches!(result, Ok(Err(Error::NoSystem))),
        "build panicked or succeeded outside a running system"
    );
}

/// Holds a resource that is released (flushed, closed) when the handler is dropped.
struct Flushing {
    released: Arc<AtomicBool>,
}

impl Drop for Flushing {
    fn drop(&mut self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

impl EventHandler<OrderPlaced> for Flushing {
    async fn handle(&mut self, _: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn flushing_bus(released: &Arc<AtomicBool>) -> EventBus {
    let released = Arc::clone(released);
    EventBus::builder()
        .handler_with("flushing", HandlerOptions::new(), move || Flushing {
            released: Arc::clone(&released),
        })
        .build()
        .unwrap()
}

#[actix::test]
async fn shutdown_stops_the_handler_actors_and_drops_their_handlers() {
    let released = Arc::new(AtomicBool::new(false));
    let bus = flushing_bus(&released);
    bus.publish(placed(1, 1)).await.unwrap();

    drain(&bus).await;

    eventually("the handler is dropped", || released.load(Ordering::SeqCst)).await;
}

#[actix::test]
async fn dropping_every_handle_of_a_bus_releases_its_handlers() {
    let released = Arc::new(AtomicBool::new(false));
    let bus = flushing_bus(&released);
    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    drop(bus);

    eventually("the handler is dropped", || released.load(Ordering::SeqCst)).await;
}
