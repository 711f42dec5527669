//! Handlers that publish: a reaction (a policy, a process manager) handles an event and
//! publishes the next one, awaiting it, on every kind of bus. In memory the router waits for
//! a full handler mailbox, so a handler that waited for the intake waited for itself: the bus
//! stopped at the first full mailbox. And a shutdown drains what the reactions publish
//! while it drains: it used to refuse it, so the reactions failed, retried and
//! dead-lettered, and the shutdown timed out.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actorbus::{BusBuilder, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions};
use common::*;

/// On each order placed, captures its payment: publishes and awaits it.
struct Reaction {
    bus: Arc<OnceLock<EventBus>>,
}

impl EventHandler<OrderPlaced> for Reaction {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let bus = self.bus.get().expect("set after build").clone();
        bus.publish(PaymentCaptured {
            order: e.order,
            cents: e.seq,
        })
        .await?;
        Ok(())
    }
}

/// Records each payment as (order, cents).
struct Payments(Seen);

impl EventHandler<PaymentCaptured> for Payments {
    async fn handle(&mut self, e: &Envelope<PaymentCaptured>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((e.order, e.cents));
        Ok(())
    }
}

/// (order, cents) of every payment handled.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

/// A bus of `builder` with the reaction (`reaction`) and the payments it causes
/// (`payments`); and what the payments handler saw.
fn with_reaction(
    builder: BusBuilder,
    reaction: HandlerOptions,
    payments: HandlerOptions,
) -> (EventBus, Seen) {
    let cell: Arc<OnceLock<EventBus>> = Arc::default();
    let seen: Seen = Arc::default();
    let (reaction_bus, recorded) = (Arc::clone(&cell), Arc::clone(&seen));
    let bus = builder
        .handler_with("reaction", reaction, move || Reaction {
            bus: Arc::clone(&reaction_bus),
        })
        .handler_with("payments", payments, move || {
            Payments(Arc::clone(&recorded))
        })
        .build()
        .unwrap();
    cell.set(bus.clone()).ok();
    (bus, seen)
}

/// Tiny capacities, so that every mailbox and the intake are full most of the time.
async fn reactions_complete_in_order(builder: BusBuilder) {
    const EVENTS: u64 = 3000;
    const ORDERS: u64 = 40;
    let (bus, payments) = with_reaction(
        builder.intake_capacity(4),
        HandlerOptions::new().mailbox_capacity(2).concurrency(2),
        HandlerOptions::new().mailbox_capacity(2).concurrency(3),
    );
    let all_handled = async {
        for seq in 0..EVENTS {
            bus.publish(placed(seq % ORDERS, seq)).await.unwrap();
        }
        poll_until("every reaction's payment handled", || {
            payments.lock().unwrap().len() as u64 == EVENTS
        })
        .await;
    };
    // Bounded: a bus that stops would otherwise hold the publisher forever.
    if actix_rt::time::timeout(Duration::from_secs(60), all_handled)
        .await
        .is_err()
    {
        panic!(
            "the bus stopped: {} of {EVENTS} payments handled",
            payments.lock().unwrap().len()
        );
    }
    drain(&bus).await;
    assert_eq!(bus.stats().published, 2 * EVENTS);
    // Per order, the payments come in the order its placements were handled.
    let payments = payments.lock().unwrap();
    for order in 0..ORDERS {
        let cents: Vec<u64> = (payments.iter())
            .filter(|(o, _)| *o == order)
            .map(|(_, c)| *c)
            .collect();
        let expected: Vec<u64> = (order..EVENTS).step_by(ORDERS as usize).collect();
        assert_eq!(cents, expected, "order {order}");
    }
}

/// Shutdown at once after the last publish: the reactions still to run publish while the
/// bus drains, and their events are handled before it stops.
async fn shutdown_drains_what_reactions_publish(builder: BusBuilder) {
    const EVENTS: u64 = 2000;
    let (bus, payments) = with_reaction(builder, HandlerOptions::new(), HandlerOptions::new());
    for seq in 0..EVENTS {
        bus.publish(placed(seq % 10, seq)).await.unwrap();
    }
    bus.shutdown(DRAIN).await.unwrap();
    assert_eq!(payments.lock().unwrap().len() as u64, EVENTS);
    let reaction = bus.stats().handler("reaction").unwrap().clone();
    assert_eq!((reaction.failed_attempts, reaction.dead_letters), (0, 0));
    // Publishers outside handlers are refused once the shutdown began.
    let refused = bus.publish(placed(0, EVENTS)).await.unwrap_err();
    assert!(matches!(refused, actorbus::Error::Stopped), "{refused:?}");
}

/// Runs each scenario in memory and on SQLite.
macro_rules! in_memory_and_durable {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix::test]
                async fn $scenario() {
                    super::$scenario(actorbus::EventBus::builder()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[actix::test]
                async fn $scenario() {
                    let tmp = crate::common::TempStore::new();
                    super::$scenario(actorbus::EventBus::builder().sqlite(tmp.path())).await;
                }
            )*
        }
    };
}

in_memory_and_durable!(
    reactions_complete_in_order,
    shutdown_drains_what_reactions_publish,
);
