//! What a running bus tells the tools an operator already has: metrics through the
//! [`metrics`] facade (the application installs the exporter it uses, e.g. Prometheus's,
//! before it builds the bus), and spans through [`tracing`].
//!
//! Counters and gauges are copied from the bus's own counters every [`REPORT_EVERY`] on
//! the router's arbiter and whenever
//! [`EventBus::report_metrics`](crate::EventBus::report_metrics) is called (a scrape
//! endpoint calls it first): the hot path carries nothing for them. So are the publish ->
//! handled times, from the bus's own histogram, by bucket of [`SECONDS_BUCKETS`]. Each
//! group commit's size and duration (storage actor) and each publish's wait for its commit
//! (router) are recorded as they happen.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `actorbus_published_total` | counter | |
//! | `actorbus_committed_total` | counter | |
//! | `actorbus_commits_total` | counter | |
//! | `actorbus_handled_total` | counter | `handler` |
//! | `actorbus_failed_attempts_total` | counter | `handler` |
//! | `actorbus_retries_total` | counter | `handler` |
//! | `actorbus_restarts_total` | counter | `handler` |
//! | `actorbus_dead_letters_total` | counter | `handler` |
//! | `actorbus_handler_parked` | gauge (0 or 1) | `handler` |
//! | `actorbus_mailbox_depth` | gauge | `handler` |
//! | `actorbus_in_flight` | gauge | `handler` |
//! | `actorbus_lag_events` | gauge | `handler` |
//! | `actorbus_lag_seconds` | gauge | `handler` |
//! | `actorbus_commit_events` | histogram | |
//! | `actorbus_commit_seconds` | histogram | |
//! | `actorbus_publish_ack_seconds` | histogram | |
//! | `actorbus_publish_handled_seconds` | histogram | `handler` |
//!
//! Spans (target `actorbus`, level INFO): `publish` (event id, stream, type, correlation and
//! causation ids), `commit` (events, first and last position) and `handle` (handler, event
//! id, stream, position, correlation and causation ids, attempt), entered around the user's
//! handler, so its own spans and logs nest under the event they handle; a projection that
//! takes a run of events in one transaction gets one `handle_run` (handler, events, first
//! and last position). Spans are made once a `tracing` subscriber has been set (install it
//! before publishing); the `log` records the bus writes are unchanged.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Histogram, Unit};

use crate::event::Record;
use crate::stats::{BusCounters, HandlerCounters, Stats};

/// How often a running bus copies its counters into the `metrics` recorder.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The upper bounds of the `_seconds` histograms' buckets, from 50 µs to 10 s.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The label naming a subscription.
const HANDLER: &str = "handler";

/// The bus-wide histograms and counters recorded where they happen.
#[derive(Clone)]
pub(crate) struct BusMetrics {
    pub(crate) committed: Counter,
    pub(crate) commits: Counter,
    pub(crate) commit_events: Histogram,
    pub(crate) commit_seconds: Histogram,
    pub(crate) ack_seconds: Histogram,
}

impl Default for BusMetrics {
    fn default() -> Self {
        describe();
        Self {
            committed: counter!("actorbus_committed_total"),
            commits: counter!("actorbus_commits_total"),
            commit_events: histogram!("actorbus_commit_events"),
            commit_seconds: histogram!("actorbus_commit_seconds"),
            ack_seconds: histogram!("actorbus_publish_ack_seconds"),
        }
    }
}

impl std::fmt::Debug for BusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusMetrics")
    }
}

/// The publish -> handled histogram of subscription `name`.
pub(crate) fn handled_seconds(name: &str) -> Histogram {
    histogram!("actorbus_publish_handled_seconds", HANDLER => name.to_owned())
}

/// Copies the bus's counters into the recorder (a bus `durable` or not, with the counters of
/// its subscriptions): a snapshot's counters and gauges, and the publish -> handled times
/// recorded since the last report.
pub(crate) fn report_bus<'a>(
    bus: &BusCounters,
    durable: bool,
    handlers: impl Iterator<Item = &'a HandlerCounters> + Clone,
) {
    report(&bus.snapshot(durable, handlers.clone()));
    handlers.for_each(HandlerCounters::report_latencies);
}

/// Copies a snapshot of the bus into the recorder: counters as their absolute values,
/// gauges as they are now.
fn report(stats: &Stats) {
    counter!("actorbus_published_total").absolute(stats.published);
    for h in &stats.handlers {
        let label = || [(HANDLER, h.name.clone())];
        counter!("actorbus_handled_total", &label()).absolute(h.handled);
        counter!("actorbus_failed_attempts_total", &label()).absolute(h.failed_attempts);
        counter!("actorbus_retries_total", &label()).absolute(h.retries);
        counter!("actorbus_restarts_total", &label()).absolute(h.restarts);
        counter!("actorbus_dead_letters_total", &label()).absolute(h.dead_letters);
        gauge!("actorbus_handler_parked", &label()).set(if h.parked { 1.0 } else { 0.0 });
        gauge!("actorbus_mailbox_depth", &label()).set(h.mailbox_depth as f64);
        gauge!("actorbus_in_flight", &label()).set(h.in_flight as f64);
        gauge!("actorbus_lag_events", &label()).set(h.lag as f64);
        gauge!("actorbus_lag_seconds", &label()).set(h.lag_time.as_secs_f64());
    }
}

/// What a metric is, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the bus reports: name, kind, unit and help text.
const DESCRIBED: [(&str, Kind, Unit, &str); 17] = [
    (
        "actorbus_published_total",
        Kind::Counter,
        Unit::Count,
        "Events accepted by publish",
    ),
    (
        "actorbus_committed_total",
        Kind::Counter,
        Unit::Count,
        "Events stored by group commits",
    ),
    (
        "actorbus_commits_total",
        Kind::Counter,
        Unit::Count,
        "Group commits",
    ),
    (
        "actorbus_handled_total",
        Kind::Counter,
        Unit::Count,
        "Events a handler accepted",
    ),
    (
        "actorbus_failed_attempts_total",
        Kind::Counter,
        Unit::Count,
        "Attempts that failed or panicked",
    ),
    (
        "actorbus_retries_total",
        Kind::Counter,
        Unit::Count,
        "Attempts that retried a failure",
    ),
    (
        "actorbus_restarts_total",
        Kind::Counter,
        Unit::Count,
        "Handler restarts after a panic",
    ),
    (
        "actorbus_dead_letters_total",
        Kind::Counter,
        Unit::Count,
        "Events given up on, ever",
    ),
    (
        "actorbus_handler_parked",
        Kind::Gauge,
        Unit::Count,
        "1 while the handler is parked",
    ),
    (
        "actorbus_mailbox_depth",
        Kind::Gauge,
        Unit::Count,
        "Events waiting in its mailboxes",
    ),
    (
        "actorbus_in_flight",
        Kind::Gauge,
        Unit::Count,
        "Delivered, not yet handled or dead-lettered",
    ),
    (
        "actorbus_lag_events",
        Kind::Gauge,
        Unit::Count,
        "Log positions between the head and the slowest actor",
    ),
    (
        "actorbus_lag_seconds",
        Kind::Gauge,
        Unit::Seconds,
        "Publish to handled time of the last event, while lagging",
    ),
    (
        "actorbus_commit_events",
        Kind::Histogram,
        Unit::Count,
        "Events per group commit",
    ),
    (
        "actorbus_commit_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Duration of a group commit",
    ),
    (
        "actorbus_publish_ack_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Publish to acknowledgement",
    ),
    (
        "actorbus_publish_handled_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Publish to handled",
    ),
];

/// The help texts, given to the recorder (each time one is installed: a recorder installed
/// after the first bus was built still gets them).
fn describe() {
    for (name, kind, unit, help) in DESCRIBED {
        match kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Gauge => describe_gauge!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}

/// Whether spans are worth making: a `tracing` subscriber was ever set. Without one, a
/// disabled span still evaluates its fields for the `log` crate (actix turns on `tracing`'s
/// `log` feature), which costs each event more than the rest of its telemetry.
fn tracing_on() -> bool {
    tracing::dispatcher::has_been_set()
}

/// Awaits `work` inside the span `$span` gives (an `Option`), or as it is when there is
/// none: then no span lives across the await, which costs a handling more than its other
/// telemetry together. A macro, so that the await is the caller's own.
macro_rules! within {
    ($span:expr, $work:expr) => {{
        let work = $work;
        match $span {
            Some(span) => tracing::Instrument::instrument(work, span).await,
            None => work.await,
        }
    }};
}
pub(crate) use within;

/// The span of one publish.
pub(crate) fn publish_span(record: &Record) -> Option<tracing::Span> {
    if !tracing_on() {
        return None;
    }
    let meta = &record.meta;
    Some(tracing::info_span!(
        target: "actorbus",
        "publish",
        event_id = %meta.id,
        stream = %meta.stream_id,
        event_type = %meta.event_type,
        correlation_id = meta.correlation_id.map(tracing::field::display),
        causation_id = meta.causation_id.map(tracing::field::display),
    ))
}

/// The span of one attempt at handling `record` by subscription `handler`.
pub(crate) fn handle_span(handler: &str, record: &Record, attempt: u32) -> Option<tracing::Span> {
    if !tracing_on() {
        return None;
    }
    let meta = &record.meta;
    Some(tracing::info_span!(
        target: "actorbus",
        "handle",
        handler,
        event_id = %meta.id,
        stream = %meta.stream_id,
        position = meta.position,
        correlation_id = meta.correlation_id.map(tracing::field::display),
        causation_id = meta.causation_id.map(tracing::field::display),
        attempt,
    ))
}

/// The span of one run of `records` handled together by subscription `handler` (a
/// projection's transaction).
pub(crate) fn run_span(handler: &str, records: &[Record]) -> Option<tracing::Span> {
    if !tracing_on() {
        return None;
    }
    let position = |r: Option<&Record>| r.and_then(|r| r.meta.position);
    Some(tracing::info_span!(
        target: "actorbus",
        "handle_run",
        handler,
        events = records.len(),
        first_position = position(records.first()),
        last_position = position(records.last()),
    ))
}

/// The span of one group commit of `events` events.
pub(crate) fn commit_span(events: usize) -> Option<tracing::Span> {
    if !tracing_on() {
        return None;
    }
    Some(tracing::info_span!(
        target: "actorbus",
        "commit",
        events,
        first_position = tracing::field::Empty,
        last_position = tracing::field::Empty,
    ))
}

/// A Prometheus recorder installed as this process's `metrics` recorder (feature
/// `prometheus`); [`render`](Self::render) gives the text format a `/metrics` endpoint serves.
#[cfg(feature = "prometheus")]
#[derive(Clone)]
pub struct Prometheus(metrics_exporter_prometheus::PrometheusHandle);

#[cfg(feature = "prometheus")]
impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prometheus")
    }
}

#[cfg(feature = "prometheus")]
impl Prometheus {
    /// Installs the recorder, with histogram buckets fit for the bus's metrics (from 50 µs
    /// to 10 s for `_seconds`, 1 to 4096 events per commit). Call it before building the bus:
    /// a bus takes its histograms from the recorder installed when it is built.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when another recorder is installed already.
    pub fn install() -> crate::Result<Self> {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        const EVENTS: [f64; 13] = [
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
        ];
        let bad = |e: metrics_exporter_prometheus::BuildError| {
            crate::Error::Config(format!("cannot install the Prometheus recorder: {e}"))
        };
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .map_err(bad)?
            .set_buckets_for_metric(Matcher::Full("actorbus_commit_events".into()), &EVENTS)
            .map_err(bad)?
            .install_recorder()
            .map_err(bad)?;
        describe();
        Ok(Self(handle))
    }

    /// Everything recorded, in Prometheus's text format.
    pub fn render(&self) -> String {
        self.0.run_upkeep();
        self.0.render()
    }
}
