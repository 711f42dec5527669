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
    /// A durable bus: the newest stored position it has routed (its own events and, on a
    /// shared store, other processes'); `None` in memory.
    pub head: Option<u64>,
    /// A durable bus: the group commits it has made (one transaction each); `published /
    /// commits` is the mean number of events per commit. 0 in memory.
    pub commits: u64,
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
    /// How far behind it is, in events. A durable bus: positions between the log's head
    /// (as this bus has routed it) and the slowest of its handler actors' progress (those
    /// this process owns, on a shared store); events of types it does not handle count too,
    /// so this is an upper bound. In memory: `in_flight`.
    pub lag: u64,
    /// How far behind it is, in time: the publish -> handled time of the last event it
    /// handled, while it still lags (zero once caught up).
    #[serde(rename = "lag_us", serialize_with = "as_micros")]
    pub lag_time: Duration,
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
    /// Per handler actor: the position its checkpoint reached; [`NOT_HERE`] while another
    /// process owns it (a shared store) or before it started.
    reached: Vec<AtomicU64>,
    /// The publish -> handled time of the last event handled, in nanoseconds.
    last_latency: AtomicU64,
    /// The same latencies, for the `metrics` recorder: handed over by bucket when reported
    /// (not per event: see [`report_latencies`](Self::report_latencies)), with how many of
    /// each bucket were handed over so far.
    handled_seconds: metrics::Histogram,
    reported: Mutex<Vec<u64>>,
}

/// A handler actor's progress when this process does not run it.
const NOT_HERE: u64 = u64::MAX;

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
            reached: (0..concurrency).map(|_| AtomicU64::new(NOT_HERE)).collect(),
            last_latency: AtomicU64::new(0),
            handled_seconds: crate::telemetry::handled_seconds(name),
            reported: Mutex::new(vec![0; crate::telemetry::SECONDS_BUCKETS.len() + 1]),
        })
    }

    /// Records a batch of latencies (nanoseconds) under one lock.
    pub(crate) fn record_latencies(&self, nanos: &[u64]) {
        let Some(&last) = nanos.last() else { return };
        self.last_latency.store(last, Relaxed);
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &n in nanos {
            h.saturating_record(n);
        }
    }

    /// Hands the latencies recorded since the last call to the `metrics` recorder, as many
    /// observations per bucket of [`SECONDS_BUCKETS`](crate::telemetry::SECONDS_BUCKETS)
    /// (each at the bucket's middle): a recorder per event would cost every handling an
    /// atomic push; this costs one pass over the buckets a second. Counts and buckets are
    /// exact, the sum is to the bucket.
    pub(crate) fn report_latencies(&self) {
        let buckets = &crate::telemetry::SECONDS_BUCKETS;
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        // Cumulative counts, so that each value lands in exactly one bucket: the histogram
        // answers by its own sub-buckets, and two adjacent ranges asked one by one may both
        // take a value at their common boundary.
        let mut below = 0u64;
        for (i, &upper) in buckets.iter().enumerate() {
            let upto = h.count_between(0, (upper * 1e9) as u64).max(below);
            let now = upto - below;
            if now > reported[i] {
                let low = if i == 0 { 0.0 } else { buckets[i - 1] };
                (self.handled_seconds)
                    .record_many((low + upper) / 2.0, (now - reported[i]) as usize);
                reported[i] = now;
            }
            below = upto;
        }
        let above = h.len().saturating_sub(below);
        let last = buckets.len();
        if above > reported[last] {
            let beyond = buckets[last - 1] * 2.0;
            (self.handled_seconds).record_many(beyond, (above - reported[last]) as usize);
            reported[last] = above;
        }
    }

    /// Handler actor `partition` starts (or, on a shared store, starts here) after
    /// `position`.
    pub(crate) fn start_at(&self, partition: usize, position: u64) {
        if let Some(reached) = self.reached.get(partition) {
            reached.store(position, Relaxed);
        }
    }

    /// Handler actor `partition` has handled everything up to `position` (unless it runs in
    /// another process now: what it finishes after the hand-over does not count).
    pub(crate) fn reach(&self, partition: usize, position: u64) {
        if let Some(reached) = self.reached.get(partition) {
            let _ = reached.fetch_update(Relaxed, Relaxed, |r| (r != NOT_HERE).then_some(position));
        }
    }

    /// Handler actor `partition` runs in another process now.
    pub(crate) fn gone_elsewhere(&self, partition: usize) {
        self.start_at(partition, NOT_HERE);
    }

    /// Events between `head` and the slowest handler actor run here (see
    /// [`HandlerStats::lag`]).
    fn lag_behind(&self, head: u64) -> u64 {
        (self.reached.iter())
            .map(|r| r.load(Relaxed))
            .filter(|&r| r != NOT_HERE)
            .map(|r| head.saturating_sub(r))
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The subscription's numbers now; `head`: the log's head, on a durable bus.
    pub(crate) fn snapshot(&self, head: Option<u64>) -> HandlerStats {
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
        let in_flight = delivered.saturating_sub(handled + dead_letters);
        let lag = head.map_or(in_flight, |head| self.lag_behind(head));
        let lag_time = if lag > 0 {
            Duration::from_nanos(self.last_latency.load(Relaxed))
        } else {
            Duration::ZERO
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
            in_flight,
            mailbox_depth: delivered.saturating_sub(taken),
            parked: self.parked.load(Relaxed),
            lag,
            lag_time,
            latency,
        }
    }
}

/// Bus-wide counters.
#[derive(Debug, Default)]
pub(crate) struct BusCounters {
    pub(crate) published: AtomicU64,
    pub(crate) unrouted: AtomicU64,
    /// A durable bus: the newest stored position the router has routed.
    pub(crate) head: AtomicU64,
    /// Group commits made.
    pub(crate) commits: AtomicU64,
    /// The histograms recorded as commits are acknowledged.
    pub(crate) metrics: crate::telemetry::BusMetrics,
}

impl BusCounters {
    /// A snapshot of the bus: these counters and each subscription's; `durable`: the log's
    /// head bounds each subscription's lag.
    pub(crate) fn snapshot<'a>(
        &self,
        durable: bool,
        handlers: impl Iterator<Item = &'a HandlerCounters>,
    ) -> Stats {
        let head = durable.then(|| self.head.load(Relaxed));
        Stats {
            published: self.published.load(Relaxed),
            unrouted: self.unrouted.load(Relaxed),
            head,
            commits: self.commits.load(Relaxed),
            handlers: handlers.map(|h| h.snapshot(head)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latencies at every bucket's upper bound, and just past it, reach the recorder once
    /// each: asked range by range, the histogram's sub-buckets counted a value at a boundary
    /// in both neighbours (a scrape once showed 51 of 50 events).
    #[cfg(feature = "prometheus")]
    #[test]
    fn latencies_at_bucket_boundaries_reach_the_recorder_once_each() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&crate::telemetry::SECONDS_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let nanos: Vec<u64> = (crate::telemetry::SECONDS_BUCKETS.iter())
            .flat_map(|&s| {
                let n = (s * 1e9) as u64;
                [n - 1, n, n + 1]
            })
            .collect();
        metrics::with_local_recorder(&recorder, || {
            let c = HandlerCounters::new("h", "t", 1);
            c.record_latencies(&nanos[..20]);
            c.report_latencies();
            c.record_latencies(&nanos[20..]);
            c.report_latencies();
            c.report_latencies();
        });
        let text = handle.render();
        let count = (text.lines())
            .find_map(|l| l.strip_prefix("actorbus_publish_handled_seconds_count{handler=\"h\"} "))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(count.parse::<f64>().unwrap(), nanos.len() as f64, "{text}");
    }

    #[test]
    fn snapshot_derives_in_flight_and_depth() {
        let c = HandlerCounters::new("h", "t", 2);
        HandlerCounters::add(&c.delivered, 10);
        HandlerCounters::add(&c.taken, 7);
        HandlerCounters::add(&c.handled, 4);
        HandlerCounters::add(&c.dead_letters, 1);
        c.record_latencies(&[2_000, 4_000, 1_000_000]);
        let s = c.snapshot(None);
        assert_eq!((s.in_flight, s.mailbox_depth), (5, 3));
        assert_eq!(s.latency.count, 3);
        assert!(
            s.latency.p50 >= Duration::from_micros(3) && s.latency.p50 <= Duration::from_micros(5)
        );
        assert!(s.latency.max >= Duration::from_micros(999));
    }
}
