//! Retries and dead letters: `inventory` fails transiently and succeeds after a few
//! retries with backoff; `shipping` always fails for one country, so those orders become
//! dead letters. The dead letters are listed, the handler is fixed (a shared flag here, a
//! deploy or a config change in real life), and `EventBus::redrive` hands them back.
//!
//! `cargo run --example retries`

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    DomainEvent, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    country: String,
}

impl DomainEvent for OrderPlaced {
    const EVENT_TYPE: &'static str = "order.placed";
    fn stream_id(&self) -> String {
        format!("order-{}", self.order_id)
    }
}

/// Reserves stock in a warehouse that times out twice for every order before it answers.
#[derive(Default)]
struct Inventory {
    attempts: HashMap<Uuid, u32>,
}

impl EventHandler<OrderPlaced> for Inventory {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let attempt = self.attempts.entry(e.id()).or_default();
        *attempt += 1;
        if *attempt <= 2 {
            return Err(format!("warehouse timed out (attempt {attempt})").into());
        }
        println!(
            "inventory: reserved stock for order {} on attempt {attempt}",
            e.order_id
        );
        self.attempts.remove(&e.id());
        Ok(())
    }
}

/// Books a carrier; until `fixed` is set, it cannot ship to New Zealand at all.
struct Shipping {
    fixed: Arc<AtomicBool>,
}

impl EventHandler<OrderPlaced> for Shipping {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if e.country == "NZ" && !self.fixed.load(Ordering::SeqCst) {
            return Err(format!("no carrier for country {}", e.country).into());
        }
        println!(
            "shipping: booked carrier for order {} to {}",
            e.order_id, e.country
        );
        Ok(())
    }
}

/// Waits until every handler has handled or dead-lettered every published event, while the
/// bus keeps running (`shutdown` would also wait, but a stopped bus cannot redrive).
async fn settled(bus: &EventBus) {
    loop {
        let stats = bus.stats();
        let done = |h: &actorbus::HandlerStats| h.handled + h.dead_letters == stats.published;
        if stats.handlers.iter().all(done) {
            return;
        }
        actix::clock::sleep(Duration::from_millis(1)).await;
    }
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    let fixed = Arc::new(AtomicBool::new(false));
    // Millisecond backoffs keep the example fast; production values are seconds.
    let retry = |attempts| RetryPolicy::new(attempts).base_delay(Duration::from_millis(2));
    let shipping_fixed = Arc::clone(&fixed);
    let bus = EventBus::builder()
        .handler_with(
            "inventory",
            HandlerOptions::new().retry(retry(5)),
            Inventory::default,
        )
        .handler_with(
            "shipping",
            HandlerOptions::new().retry(retry(3)),
            move || Shipping {
                fixed: Arc::clone(&shipping_fixed),
            },
        )
        .build()?;

    for (order_id, country) in [(1, "DE"), (2, "NZ"), (3, "FR"), (4, "NZ")] {
        let country = country.to_owned();
        bus.publish(OrderPlaced { order_id, country }).await?;
    }
    settled(&bus).await;

    println!("\ndead letters:");
    for letter in bus.dead_letters(None)? {
        println!(
            "  #{} {} {} after {} attempts: {}",
            letter.id(),
            letter.handler(),
            letter.event().stream_id,
            letter.attempts(),
            letter.last_error()
        );
    }

    println!("\nfixing shipping and redriving its dead letters");
    fixed.store(true, Ordering::SeqCst);
    let redriven = bus.redrive("shipping").await?;
    println!("redriven: {redriven}");

    bus.shutdown(Duration::from_secs(5)).await?;
    println!();
    for h in bus.stats().handlers {
        println!(
            "{}: {} handled, {} retries, {} dead-lettered (ever), {} dead letters left",
            h.name,
            h.handled,
            h.retries,
            h.dead_letters,
            bus.dead_letters(Some(&h.name))?.len()
        );
    }
    Ok(())
}
