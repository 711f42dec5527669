//! Publishing: events reach every subscription of their type, in order, with their metadata.

mod common;

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actorbus::{
    DomainEvent, Envelope, EventBus, EventHandler, Handle, HandlerError, HandlerOptions,
    PublishOptions,
};
use common::*;
use serde::{Deserialize, Serialize};

#[actix::test]
async fn published_event_is_handled_end_to_end() {
    let log = new_log();
    let bus = recording_bus(&log);

    let receipt = bus.publish(placed(7, 1)).await.unwrap();
    drain(&bus).await;

    assert_eq!(entries(&log), vec![("order-7".to_owned(), 1)]);
    assert_eq!(receipt.id.get_version_num(), 7);
    let stats = bus.stats();
    assert_eq!(stats.published, 1);
    let recorder = stats.handler("recorder").unwrap();
    assert_eq!((recorder.delivered, recorder.handled), (1, 1));
    assert_eq!(recorder.in_flight, 0);
    assert_eq!(
        recorder.latency.count, 1,
        "publish -> handled latency is measured"
    );
}

#[actix::test]
async fn every_subscription_of_a_type_sees_every_event() {
    let (first, second) = (new_log(), new_log());
    let bus = EventBus::builder()
        .handler_with(
            "first",
            HandlerOptions::new(),
            RecordingHandler::factory(&first),
        )
        .handler_with(
            "second",
            HandlerOptions::new().concurrency(3),
            RecordingHandler::factory(&second),
        )
        .build()
        .unwrap();

    for seq in 0..30 {
        bus.publish(placed(seq % 5, seq)).await.unwrap();
    }
    drain(&bus).await;

    for log in [&first, &second] {
        let mut seen = seqs(log);
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
    }
    assert_eq!(bus.stats().handler("second").unwrap().handled, 30);
}

/// A type no handler subscribes to.
#[derive(Debug, Serialize, Deserialize)]
struct NobodyListens;

impl DomainEvent for NobodyListens {
    const EVENT_TYPE: &'static str = "nobody.listens";
    fn stream_id(&self) -> String {
        "void".into()
    }
}

#[actix::test]
async fn event_without_subscribers_is_counted_as_unrouted_not_an_error() {
    let log = new_log();
    let bus = recording_bus(&log);

    bus.publish(NobodyListens).await.unwrap();
    bus.try_publish(NobodyListens).unwrap();
    bus.publish(placed(1, 1)).await.unwrap();
    drain(&bus).await;

    let stats = bus.stats();
    assert_eq!(stats.published, 3);
    assert_eq!(stats.unrouted, 2);
    assert_eq!(stats.handler("recorder").unwrap().handled, 1);
    assert_eq!(seqs(&log), vec![1]);
}

#[actix::test]
async fn publish_all_keeps_publish_order() {
    let log = new_log();
    let bus = recording_bus(&log);

    let receipts = bus
        .publish_all((0..50).map(|seq| placed(seq % 4, seq)))
        .await
        .unwrap();
    bus.publish_all((50..60).map(|seq| placed(seq % 4, seq)))
        .await
        .unwrap();
    assert!(bus
        .publish_all(Vec::<OrderPlaced>::new())
        .await
        .unwrap()
        .is_empty());
    drain(&bus).await;

    assert_eq!(receipts.len(), 50);
    let ids: std::collections::HashSet<_> = receipts.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 50, "every event has its own id");
    assert_eq!(seqs(&log), (0..60).collect::<Vec<_>>());
    assert_eq!(bus.stats().published, 60);
}

#[actix::test]
async fn event_ids_sort_in_publish_order() {
    let bus = EventBus::builder().build().unwrap();

    let mut receipts = bus
        .publish_all((0..200).map(|seq| placed(1, seq)))
        .await
        .unwrap();
    for seq in 200..300 {
        receipts.push(bus.publish(placed(1, seq)).await.unwrap());
    }
    drain(&bus).await;

    let ids: Vec<_> = receipts.iter().map(|r| r.id).collect();
    let out_of_order = ids.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(
        out_of_order, 0,
        "UUIDv7 ids sort by creation time, even within a millisecond"
    );
}

/// Keeps every envelope it receives.
struct Keeper(Arc<Mutex<Vec<Envelope<PaymentCaptured>>>>);

impl EventHandler<PaymentCaptured> for Keeper {
    async fn handle(&mut self, e: &Envelope<PaymentCaptured>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(e.clone());
        Ok(())
    }
}

#[actix::test]
async fn metadata_reaches_the_handler() {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let factory_kept = Arc::clone(&kept);
    let bus = EventBus::builder()
        .handler_with("keeper", HandlerOptions::new(), move || {
            Keeper(Arc::clone(&factory_kept))
        })
        .build()
        .unwrap();

    let cause_receipt = bus
        .publish_with(
            PaymentCaptured {
                order: 3,
                cents: 250,
            },
            PublishOptions::new().header("tenant", "acme"),
        )
        .await
        .unwrap();
    // Let the first event arrive, so the second can name it as its cause.
    let cause = loop {
        if let Some(e) = kept.lock().unwrap().first().cloned() {
            break e;
        }
        actix_rt::task::yield_now().await;
    };
    let effect_receipt = bus
        .publish_with(
            PaymentCaptured { order: 3, cents: 0 },
            PublishOptions::new()
                .caused_by(&cause)
                .header("user", "ann"),
        )
        .await
        .unwrap();
    drain(&bus).await;

    let kept = kept.lock().unwrap().clone();
    assert_eq!(kept.len(), 2);
    let (cause, effect) = (&kept[0], &kept[1]);

    assert_eq!(cause.id(), cause_receipt.id);
    assert_eq!(cause.id().get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(
        cause.event(),
        &PaymentCaptured {
            order: 3,
            cents: 250
        }
    );
    assert_eq!(cause.stream_id(), "order-3");
    assert_eq!(cause.event_type(), "payment.captured");
    assert_eq!(cause.schema_version(), 2);
    assert_eq!(
        cause.headers().get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(cause.correlation_id(), None);
    assert_eq!(cause.causation_id(), None);

    assert_eq!(effect.id(), effect_receipt.id);
    assert_ne!(effect.id(), cause.id());
    assert_eq!(effect.causation_id(), Some(cause.id()));
    assert_eq!(effect.correlation_id(), Some(cause.id()));
    assert_eq!(
        effect.headers().get("user").map(String::as_str),
        Some("ann")
    );
    assert!(
        !effect.headers().contains_key("tenant"),
        "headers are per event"
    );
    assert!(effect.occurred_at() >= cause.occurred_at());
}

/// An existing actix actor: fails the first delivery of each event, then keeps it.
struct Ledger {
    failed_once: Vec<u64>,
    log: Log,
}

impl Actor for Ledger {
    type Context = Context<Self>;
}

impl Handler<Handle<OrderPlaced>> for Ledger {
    type Result = Result<(), HandlerError>;

    fn handle(&mut self, Handle(e): Handle<OrderPlaced>, _: &mut Context<Self>) -> Self::Result {
        if !self.failed_once.contains(&e.seq) {
            self.failed_once.push(e.seq);
            return Err("ledger is busy".into());
        }
        self.log
            .lock()
            .unwrap()
            .push((e.stream_id().to_owned(), e.seq));
        Ok(())
    }
}

#[actix::test]
async fn existing_actor_receives_events_as_handle_messages_and_its_errors_are_retried() {
    let log = new_log();
    let ledger = Ledger {
        failed_once: Vec::new(),
        log: Arc::clone(&log),
    }
    .start();
    let bus = EventBus::builder()
        .recipient(
            "ledger",
            HandlerOptions::new().retry(fast_retry(3)),
            ledger.recipient(),
        )
        .build()
        .unwrap();

    bus.publish(placed(1, 1)).await.unwrap();
    bus.publish(placed(2, 2)).await.unwrap();
    drain(&bus).await;

    assert_eq!(seqs(&log), vec![1, 2]);
    let stats = bus.stats();
    let ledger = stats.handler("ledger").unwrap();
    assert_eq!(
        (ledger.handled, ledger.retries, ledger.failed_attempts),
        (2, 2, 2)
    );
    assert_eq!(ledger.dead_letters, 0);
    assert!(bus.dead_letters(None).unwrap().is_empty());
}

/// An actor that stops as soon as it starts.
struct Retired;

impl Actor for Retired {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Handle<OrderPlaced>> for Retired {
    type Result = Result<(), HandlerError>;
    fn handle(&mut self, _: Handle<OrderPlaced>, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

#[actix::test]
async fn events_for_a_stopped_actor_become_dead_letters_not_errors() {
    let retired = Retired.start();
    eventually("the actor stops", || !retired.connected()).await;
    let bus = EventBus::builder()
        .recipient(
            "retired",
            HandlerOptions::new().retry(fast_retry(2)),
            retired.recipient(),
        )
        .build()
        .unwrap();

    let receipt = bus
        .publish(placed(1, 1))
        .await
        .expect("publishing is not affected");
    drain(&bus).await;

    let letters = bus.dead_letters(Some("retired")).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event().id, receipt.id);
    assert_eq!(letters[0].attempts(), 2);
    assert_eq!(bus.stats().handler("retired").unwrap().handled, 0);
}
