//! What both benches measure with: the event shape of `actorbus bench`, a counting handler,
//! and a bus with K of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actorbus::{BusBuilder, DomainEvent, Envelope, EventBus, EventHandler, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct BenchEvent {
    pub stream: u64,
    pub seq: u64,
}

impl DomainEvent for BenchEvent {
    const EVENT_TYPE: &'static str = "bench.event";
    fn stream_id(&self) -> String {
        self.stream.to_string()
    }
}

pub struct Counting(Arc<AtomicU64>);

impl EventHandler<BenchEvent> for Counting {
    async fn handle(&mut self, _e: &Envelope<BenchEvent>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `builder` with `handlers` counting subscriptions; the counters tell what each handled.
pub fn counting_bus(mut builder: BusBuilder, handlers: usize) -> (EventBus, Vec<Arc<AtomicU64>>) {
    let seen: Vec<Arc<AtomicU64>> = (0..handlers).map(|_| Arc::default()).collect();
    for (i, counter) in seen.iter().enumerate() {
        let counter = Arc::clone(counter);
        builder = builder.handler(&format!("bench-{i}"), move || {
            Counting(Arc::clone(&counter))
        });
    }
    (builder.build().expect("bus builds"), seen)
}
