//! Counters and latency histograms, shared between the actors (which write them) and
//! [`EventBus::stats`](crate::EventBus::stats) (which reads a snapshot).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Serializes a duration as whole microseconds (JSON: `p99_us`).
pub(crate) fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// Serializes a point in time as microseconds since the Unix epoch.
pub(crate) fn as_unix_micros<S: serde::Serializer>(
    t: &std::time::SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    let micros = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64);
    s.serialize_u64(micros)
}

/// A snapshot of the whole bus. Serializes (serde) as the JSON a `/stats` endpoint returns:
/// durations in whole microseconds (`p50_us` ...).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Events accepted by `publish`, `publish_all` and `try_publish`.
    pub published: u64,
    /// Published events of a type no handler subscribed to (counted, then dropped).
    pub unrouted: u64,
    /// One entry per subscription, in registration order.
    pub handlers: Vec<HandlerStats>,
}

impl Stats {
    /// Deliveries not yet handled or dead-lettered, over all handlers.
    pub fn in_flight(&self) -> u64 {
        self.handlers.iter().map(|h| h.in_flight).sum()
    }
    /// Dead letters over all handlers.
    pub fn dead_letters(&self) -> u64 {
        self.handlers.iter().map(|h| h.dead_letters).sum()
    }
    /// Restarts over all handlers.
    pub fn restarts(&self) -> u64 {
        self.handlers.iter().map(|h| h.restarts).sum()
    }
    /// The entry of the handler `name`.
    pub fn handler(&self, name: &str) -> Option<&HandlerStats> {
        self.handlers.iter().find(|h| h.name == name)
    }
}

/// A snapshot of one subscription (all of its handler actors together).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct HandlerStats {
    /// The subscription's unique name.
    pub name: String,
    /// The event type(s) it handles, comma-separated.
    pub event_type: String,
    /// Handler actors (partitions) of the subscription.
    pub concurrency: usize,
    /// Events handed to its mailboxes.
    pub delivered: u64,
    /// Events its handler accepted (returned `Ok`), and replayed events its checkpoint
    /// already covered (skipped, as handled before a restart).
    pub handled: u64,
    /// Attempts that returned an error or panicked.
    pub failed_attempts: u64,
    /// Attempts that were retries of an earlier failure.
    pub retries: u64,
    /// Events given up on and sent to the dead letters, ever (redriven ones included).
    pub dead_letters: u64,
    /// Handler restarts after a panic.
    pub restarts: u64,
    /// Delivered, not yet handled or dead-lettered.
    pub in_flight: u64,
    /// Delivered, still waiting in a mailbox.
    pub mailbox_depth: u64,
    /// Whether the supervisor parked it after its restart budget was spent.
    pub parked: bool,
    /// Publish -> handled latency of the events it handled.
    pub latency: Latency,
}

/// Latency percentiles of one handler, publish to handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Events measured.
    pub count: u64,
    /// Median.
    #[serde(rename = "p50_us", serialize_with = "as_micros")]
    pub p50: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_us", serialize_with = "as_micros")]
    pub p99: Duration,
    /// Slowest.
    #[serde(rename = "max_us", serialize_with = "as_micros")]
    pub max: Duration,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: Duration::from_nanos(h.value_at_quantile(0.50)),
            p99: Duration::from_nanos(h.value_at_quantile(0.99)),
            max: Duration::from_nanos(h.max()),
        }
    }
}

/// The live counters of one subscription.
#[derive(Debug)]
pub(crate) struct HandlerCounters {
    pub(crate) name: String,
    pub(crate) event_type: String,
    pub(crate) concurrency: usize,
    pub(crate) delivered: AtomicU64,
    pub(crate) taken: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) parked: AtomicBool,
    latency: Mutex<Histogram<u64>>,
}

impl HandlerCounters {
    pub(crate) fn new(name: &str, event_type: &str, concurrency: usize) -> Arc<Self> {
        // 1 µs .. 1 h at 3 significant digits: a few tens of KiB per handler, fixed.
        let histogram = Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)
            .expect("static histogram bounds are valid");
        Arc::new(Self {
            name: name.to_owned(),
            event_type: event_type.to_owned(),
            concurrency,
            delivered: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            latency: Mutex::new(histogram),
        })
    }

    /// Records a batch of latencies (nanoseconds) under one lock.
    pub(crate) fn record_latencies(&self, nanos: &[u64]) {
        if nanos.is_empty() {
            return;
        }
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &n in nanos {
            h.saturating_record(n);
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HandlerStats {
        // Read the "done" counters before "delivered", so a snapshot never shows
        // more done than delivered.
        let handled = self.handled.load(Relaxed);
        let dead_letters = self.dead_letters.load(Relaxed);
        let taken = self.taken.load(Relaxed);
        let delivered = self.delivered.load(Relaxed);
        let latency = {
            let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
            Latency::from_histogram(&h)
        };
        HandlerStats {
            name: self.name.clone(),
            event_type: self.event_type.clone(),
            concurrency: self.concurrency,
            delivered,
            handled,
            failed_attempts: self.failed_attempts.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dead_letters,
            restarts: self.restarts.load(Relaxed),
            in_flight: delivered.saturating_sub(handled + dead_letters),
            mailbox_depth: delivered.saturating_sub(taken),
            parked: self.parked.load(Relaxed),
            latency,
        }
    }
}

/// Bus-wide counters.
#[derive(Debug, Default)]
pub(crate) struct BusCounters {
    pub(crate) published: AtomicU64,
    pub(crate) unrouted: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_derives_in_flight_and_depth() {
        let c = HandlerCounters::new("h", "t", 2);
        HandlerCounters::add(&c.delivered, 10);
        HandlerCounters::add(&c.taken, 7);
        HandlerCounters::add(&c.handled, 4);
        HandlerCounters::add(&c.dead_letters, 1);
        c.record_latencies(&[2_000, 4_000, 1_000_000]);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.mailbox_depth), (5, 3));
        assert_eq!(s.latency.count, 3);
        assert!(
            s.latency.p50 >= Duration::from_micros(3) && s.latency.p50 <= Duration::from_micros(5)
        );
        assert!(s.latency.max >= Duration::from_micros(999));
    }
}
