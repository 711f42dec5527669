//! Supervision: a handler that panics now and then is rebuilt from its factory after a
//! backoff and retries the event it panicked on (`stats().restarts` counts the restarts);
//! a handler that panics on every event spends its restart budget and, with
//! `Escalation::ParkHandler`, is parked while the rest of the bus runs on.
//!
//! `cargo run --example supervision`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actorbus::{
    Backoff, DomainEvent, Envelope, Escalation, EventBus, EventHandler, HandlerError,
    HandlerOptions, RestartPolicy,
};
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

/// Panics on every fifth call. The call count lives outside the handler: a restart
/// rebuilds the handler from its factory, so state inside it starts afresh.
struct Pricing {
    calls: Arc<AtomicU64>,
}

impl EventHandler<OrderPlaced> for Pricing {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
            panic!("price cache corrupted while pricing order {}", e.order_id);
        }
        println!("pricing: priced order {}", e.order_id);
        Ok(())
    }
}

/// Panics on every event: a bug no restart can fix.
struct Fraud;

impl EventHandler<OrderPlaced> for Fraud {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        panic!("fraud model not loaded (order {})", e.order_id);
    }
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    // The default hook prints every caught panic with a backtrace hint; one line is enough.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map_or("a panic", String::as_str);
        println!("  (panicked: {message})");
    }));

    // Millisecond backoffs keep the example fast; production values are seconds.
    let backoff = Backoff::new(Duration::from_millis(2)).jitter(0.0);
    let restart = |max| {
        RestartPolicy::new(max, Duration::from_secs(60))
            .backoff(backoff)
            .escalation(Escalation::ParkHandler)
    };
    let calls = Arc::new(AtomicU64::new(0));
    let bus = EventBus::builder()
        .handler_with(
            "pricing",
            HandlerOptions::new().restart(restart(5)),
            move || Pricing {
                calls: Arc::clone(&calls),
            },
        )
        .handler_with("fraud", HandlerOptions::new().restart(restart(2)), || Fraud)
        .build()?;

    for order_id in 1..=10 {
        bus.publish(OrderPlaced { order_id }).await?;
    }
    bus.shutdown(Duration::from_secs(5)).await?;

    let stats = bus.stats();
    println!("\nrestarts over all handlers: {}", stats.restarts());
    for h in &stats.handlers {
        println!(
            "{}: {} handled, {} restarts, {} dead letters, parked: {}",
            h.name, h.handled, h.restarts, h.dead_letters, h.parked
        );
    }
    if let Some(letter) = bus.dead_letters(Some("fraud"))?.first() {
        println!(
            "fraud's first dead letter: {} after {} attempts: {}",
            letter.event().stream_id,
            letter.attempts(),
            letter.last_error()
        );
    }
    Ok(())
}
