//! Blocking handlers: each call runs on the blocking pool, so a handler stuck in synchronous
//! code does not stall the async handlers on the arbiter.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use actorbus::{blocking, handler_fn, Blocking, Envelope, EventBus, HandlerError, HandlerOptions};
use common::*;
use tokio::sync::mpsc;

/// How long a blocked handler waits for its signal before it gives up (only when failing).
const PATIENCE: Duration = Duration::from_secs(30);

#[actix::test]
async fn blocked_handler_does_not_stall_an_async_handler() {
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel::<u64>();
    let (release_tx, release_rx) = std_mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let released_by_signal = Arc::new(AtomicBool::new(false));
    let exporter = {
        let released = Arc::clone(&released_by_signal);
        move || {
            let (entered, release_rx, released) = (
                entered_tx.clone(),
                Arc::clone(&release_rx),
                Arc::clone(&released),
            );
            blocking(
                move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                    entered.send(e.seq)?;
                    release_rx.lock().unwrap().recv_timeout(PATIENCE)?;
                    released.store(true, Ordering::SeqCst);
                    Ok(())
                },
            )
        }
    };
    let (handled_tx, mut handled_rx) = mpsc::unbounded_channel::<u64>();
    let counter = move || {
        let handled = handled_tx.clone();
        handler_fn(
            move |e: &Envelope<PaymentCaptured>| -> Result<(), HandlerError> {
                handled.send(e.cents)?;
                Ok(())
            },
        )
    };
    let bus = EventBus::builder()
        .handler_with(
            "exporter",
            HandlerOptions::new().retry(fast_retry(1)),
            exporter,
        )
        .handler_with("counter", HandlerOptions::new(), counter)
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    assert_eq!(
        entered_rx.recv().await,
        Some(1),
        "the exporter is blocked in its call"
    );
    for cents in 0..10 {
        bus.publish(PaymentCaptured {
            order: cents,
            cents,
        })
        .await
        .unwrap();
    }
    let mut handled = Vec::new();
    while handled.len() < 10 {
        handled.push(handled_rx.recv().await.expect("the counter runs"));
    }
    assert_eq!(handled, (0..10).collect::<Vec<_>>());
    assert!(
        !released_by_signal.load(Ordering::SeqCst),
        "the exporter is still blocked"
    );
    assert_eq!(bus.stats().handler("exporter").unwrap().handled, 0);

    release_tx.send(()).unwrap();
    drain(&bus).await;

    assert!(released_by_signal.load(Ordering::SeqCst));
    let stats = bus.stats();
    assert_eq!(stats.handler("exporter").unwrap().handled, 1);
    assert_eq!(stats.handler("counter").unwrap().handled, 10);
}

/// A blocking call, boxed so that a factory can name its handler type.
type BlockingCall = Box<dyn FnMut(&Envelope<OrderPlaced>) -> Result<(), HandlerError> + Send>;

/// Meets its partner: says it is here, then waits for the partner to say the same.
fn rendezvous(
    here: std_mpsc::Sender<()>,
    partner: std_mpsc::Receiver<()>,
) -> impl Fn() -> Blocking<BlockingCall> {
    let partner = Arc::new(Mutex::new(partner));
    move || {
        let (here, partner) = (here.clone(), Arc::clone(&partner));
        let call: BlockingCall = Box::new(move |_| {
            here.send(())?;
            partner.lock().unwrap().recv_timeout(PATIENCE)?;
            Ok(())
        });
        blocking(call)
    }
}

#[actix::test]
async fn blocking_handlers_of_two_subscriptions_block_at_the_same_time() {
    let (a_here, a_seen) = std_mpsc::channel();
    let (b_here, b_seen) = std_mpsc::channel();
    let bus = EventBus::builder()
        .handler_with(
            "a",
            HandlerOptions::new().retry(fast_retry(1)),
            rendezvous(a_here, b_seen),
        )
        .handler_with(
            "b",
            HandlerOptions::new().retry(fast_retry(1)),
            rendezvous(b_here, a_seen),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    let stats = bus.stats();
    for name in ["a", "b"] {
        let h = stats.handler(name).unwrap();
        assert_eq!(
            (h.handled, h.failed_attempts),
            (1, 0),
            "{name} met its partner: {h:?}"
        );
    }
}

#[actix::test]
async fn blocking_handler_failures_and_panics_are_retried_like_any_other() {
    let log = new_log();
    let calls = Arc::new(AtomicU32::new(0));
    let factory = {
        let (log, calls) = (Arc::clone(&log), Arc::clone(&calls));
        move || {
            let (log, calls) = (Arc::clone(&log), Arc::clone(&calls));
            blocking(
                move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => Err("disk full".into()),
                        1 => panic!("driver crashed"),
                        _ => {
                            log.lock().unwrap().push((e.stream_id().to_owned(), e.seq));
                            Ok(())
                        }
                    }
                },
            )
        }
    };
    let options = HandlerOptions::new()
        .retry(fast_retry(5))
        .restart(fast_restart(5));
    let bus = EventBus::builder()
        .handler_with("exporter", options, factory)
        .build()
        .unwrap();

    bus.publish(placed(3, 1)).await.unwrap();
    bus.publish(placed(3, 2)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![1, 2]);
    let stats = bus.stats();
    let exporter = stats.handler("exporter").unwrap();
    assert_eq!((exporter.failed_attempts, exporter.retries), (2, 2));
    assert_eq!(exporter.restarts, 1);
    assert_eq!(exporter.dead_letters, 0);
}
