//! Backpressure: a slow handler fills its bounded mailbox and then the bounded intake;
//! `try_publish` is refused at once, `publish` waits, and nothing accepted is lost.

mod common;

use actorbus::{Error, EventBus, HandlerOptions};
use common::*;
use futures_util::FutureExt;

const INTAKE: usize = 4;
const MAILBOX: usize = 2;

fn gated_bus(gate: &Gate) -> EventBus {
    EventBus::builder()
        .intake_capacity(INTAKE)
        .handler_with(
            "slow",
            HandlerOptions::new().mailbox_capacity(MAILBOX),
            gate.handler_factory(),
        )
        .build()
        .unwrap()
}

/// Offers events with `try_publish` until one is refused; returns the accepted seqs and the error.
async fn fill(bus: &EventBus, first_seq: u64) -> (Vec<u64>, Error) {
    let mut accepted = Vec::new();
    for seq in first_seq..first_seq + 10_000 {
        match bus.try_publish(placed(seq % 3, seq)) {
            Ok(_) => accepted.push(seq),
            Err(e) => return (accepted, e),
        }
        // Let the router move what it can towards the stuck handler.
        actix_rt::task::yield_now().await;
    }
    panic!("try_publish never reported a full pipeline");
}

#[actix::test]
async fn full_pipeline_rejects_try_publish_without_waiting() {
    let mut gate = Gate::closed();
    let bus = gated_bus(&gate);
    bus.publish(placed(0, 0)).await.unwrap();
    assert_eq!(
        gate.entered().await,
        0,
        "the handler is stuck on the first event"
    );

    let (accepted, error) = fill(&bus, 1).await;

    assert!(
        matches!(error, Error::Full { capacity: INTAKE }),
        "{error:?}"
    );
    assert!(
        accepted.len() >= INTAKE,
        "at least the intake fills: {accepted:?}"
    );
    let stats = bus.stats();
    let slow = stats.handler("slow").unwrap();
    assert!(
        slow.mailbox_depth <= MAILBOX as u64,
        "mailbox stays bounded: {slow:?}"
    );
    assert_eq!(slow.handled, 0);
    assert_eq!(
        stats.published,
        accepted.len() as u64 + 1,
        "a refused event is not counted"
    );
    assert!(matches!(
        bus.try_publish(placed(0, 99_999)),
        Err(Error::Full { .. })
    ));

    gate.open();
    drain(&bus).await;
    let mut expected = vec![0];
    expected.extend(&accepted);
    assert_eq!(
        seqs(&gate.log),
        expected,
        "every accepted event is handled, in order"
    );
    assert_eq!(
        bus.stats().handler("slow").unwrap().handled,
        expected.len() as u64
    );
}

#[actix::test]
async fn publish_waits_while_full_and_completes_once_the_handler_catches_up() {
    let mut gate = Gate::closed();
    let bus = gated_bus(&gate);
    bus.publish(placed(0, 0)).await.unwrap();
    gate.entered().await;
    let (accepted, _) = fill(&bus, 1).await;

    let next = accepted.last().unwrap() + 1;
    let mut waiting = Box::pin(bus.publish(placed(next % 3, next)));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "publish waits while full"
    );
    for _ in 0..100 {
        actix_rt::task::yield_now().await;
    }
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "and keeps waiting while the gate is shut"
    );

    gate.open();
    let receipt = waiting.await.expect("publish completes once there is room");
    assert_eq!(receipt.id.get_version_num(), 7);
    drain(&bus).await;

    let mut expected = vec![0];
    expected.extend(&accepted);
    expected.push(next);
    assert_eq!(seqs(&gate.log), expected);
    assert_eq!(bus.stats().published, expected.len() as u64);
}

#[actix::test]
async fn shutdown_waits_for_a_slow_handler_to_finish_everything_accepted() {
    let mut gate = Gate::closed();
    let bus = gated_bus(&gate);
    bus.publish(placed(0, 0)).await.unwrap();
    gate.entered().await;
    let (accepted, _) = fill(&bus, 1).await;

    let shutdown = bus.shutdown(DRAIN);
    let opener = async {
        // Open only once shutdown has begun: it must still drain what was accepted.
        eventually("intake closes", || !bus.is_running()).await;
        gate.open();
    };
    let (drained, ()) = futures_util::future::join(shutdown, opener).await;
    drained.unwrap();

    assert_eq!(seqs(&gate.log).len(), accepted.len() + 1);
    assert_eq!(bus.stats().handler("slow").unwrap().in_flight, 0);
}
