//! Blocking handlers: `actorbus::blocking` runs a synchronous handler (here a slow invoice
//! renderer) on the blocking thread pool, so an async handler subscribed to the same events
//! keeps running on the arbiter meanwhile instead of waiting behind it.
//!
//! `cargo run --example blocking`

use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::{
    blocking, DomainEvent, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions,
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

/// An ordinary async handler on the arbiter.
struct Notifier {
    start: Arc<Instant>,
}

impl EventHandler<OrderPlaced> for Notifier {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let at = self.start.elapsed().as_millis();
        let thread = std::thread::current().id();
        println!(
            "{at:>3} ms  notifier: order {} announced on {thread:?}",
            e.order_id
        );
        Ok(())
    }
}

/// Synchronous work that would stall every actor on the arbiter if run there.
fn render_invoice(order_id: u64) -> Vec<u8> {
    std::thread::sleep(Duration::from_millis(10));
    format!("%PDF invoice for order {order_id}").into_bytes()
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    let start = Arc::new(Instant::now());
    let notifier_start = Arc::clone(&start);
    let invoices_start = Arc::clone(&start);
    let bus = EventBus::builder()
        .handler("notifier", move || Notifier {
            start: Arc::clone(&notifier_start),
        })
        // Two actors: two invoices render at once, each on its own pool thread.
        .handler_with(
            "invoices",
            HandlerOptions::new().concurrency(2),
            move || {
                let start = Arc::clone(&invoices_start);
                let mut rendered = 0;
                blocking(
                    move |e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
                        let pdf = render_invoice(e.order_id);
                        rendered += 1;
                        let thread = std::thread::current();
                        println!(
                            "{:>3} ms  invoices: order {} rendered ({} bytes, #{rendered} on {:?})",
                            start.elapsed().as_millis(),
                            e.order_id,
                            pdf.len(),
                            thread.id(),
                        );
                        Ok(())
                    },
                )
            },
        )
        .build()?;

    for order_id in 1..=6 {
        bus.publish(OrderPlaced { order_id }).await?;
    }
    bus.shutdown(Duration::from_secs(5)).await?;

    let stats = bus.stats();
    for h in &stats.handlers {
        println!(
            "{}: {} handled, slowest publish->handled {:?}",
            h.name, h.handled, h.latency.max
        );
    }
    Ok(())
}
