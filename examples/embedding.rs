//! The minimal embedding of actorbus in an actix application: an order domain, an async
//! handler that keeps state, an existing actix actor subscribed through
//! `BusBuilder::recipient`, a graceful shutdown that drains, and the stats.
//!
//! `cargo run --example embedding`

use std::time::Duration;

use actix::prelude::*;
use actorbus::HandlerOptions;
use actorbus::{DomainEvent, Envelope, EventBus, EventHandler, Handle, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

impl DomainEvent for OrderPlaced {
    const EVENT_TYPE: &'static str = "order.placed";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order_id)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentCaptured {
    order_id: u64,
    cents: u64,
}

impl DomainEvent for PaymentCaptured {
    const EVENT_TYPE: &'static str = "payment.captured";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order_id)
    }
}

/// An async handler owns its state: one instance per handler actor, no locks needed.
#[derive(Default)]
struct Revenue(u64);

impl EventHandler<PaymentCaptured> for Revenue {
    async fn handle(&mut self, e: &Envelope<PaymentCaptured>) -> Result<(), HandlerError> {
        self.0 += e.cents;
        println!(
            "revenue: order {} paid {}, total {}",
            e.order_id, e.cents, self.0
        );
        Ok(())
    }
}

/// An actor the application already had: the bus sends it `Handle<OrderPlaced>`.
struct Mailer;

impl Actor for Mailer {
    type Context = Context<Self>;
}

impl Handler<Handle<OrderPlaced>> for Mailer {
    type Result = Result<(), HandlerError>;
    fn handle(&mut self, Handle(e): Handle<OrderPlaced>, _: &mut Context<Self>) -> Self::Result {
        println!("mailer: confirming order {}", e.order_id);
        Ok(())
    }
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    let bus = EventBus::builder()
        .handler("revenue", Revenue::default)
        .recipient("mailer", HandlerOptions::new(), Mailer.start().recipient())
        .build()?;
    for order_id in 1..=3 {
        bus.publish(OrderPlaced { order_id }).await?;
        let cents = 1_000 * order_id;
        bus.publish(PaymentCaptured { order_id, cents }).await?;
    }
    // Closes intake, then waits until every handler has handled what it was given.
    bus.shutdown(Duration::from_secs(5)).await?;
    for h in bus.stats().handlers {
        println!(
            "{}: {} handled, {} dead letters",
            h.name, h.handled, h.dead_letters
        );
    }
    Ok(())
}
