//! What a running bus reports: Prometheus metrics through the `metrics` facade (counts that
//! match what happened, lag while a handler is held up) and `tracing` spans that follow one
//! event from publish through the commit to its handling, with its correlation id.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actorbus::telemetry::Prometheus;
use actorbus::{EventBus, HandlerOptions, PublishOptions};
use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use uuid::Uuid;

/// A span's fields, as text.
type SpanFields = BTreeMap<String, String>;

/// Every span opened in the process (its id is its index + 1): its name and its fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, SpanFields)>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Spans {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("actorbus")
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut spans = self.0.lock().unwrap();
        let id = spans.len() as u64 + 1;
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        spans.push((span.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let entry = &mut spans[span.into_u64() as usize - 1];
        values.record(&mut Fields(&mut entry.1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Spans {
    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        let spans = self.0.lock().unwrap();
        (spans.iter())
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// One sample of the Prometheus text, by its series (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One test: the recorder and the subscriber are the process's.
#[actix::test]
async fn metrics_and_spans_follow_what_the_bus_does() {
    let prometheus = Prometheus::install().unwrap();
    let spans = Spans::default();
    tracing::subscriber::set_global_default(spans.clone()).unwrap();

    let tmp = TempStore::new();
    let mut gate = Gate::closed();
    let log = new_log();
    let bus = EventBus::builder()
        .sqlite(tmp.path())
        .handler("recorder", RecordingHandler::factory(&log))
        .handler_with("held", HandlerOptions::new(), gate.handler_factory())
        .build()
        .unwrap();

    // One event followed by its correlation id, then 49 more.
    let correlation = Uuid::now_v7();
    let first = bus
        .publish_with(
            placed(1, 0),
            PublishOptions::new().correlation_id(correlation),
        )
        .await
        .unwrap();
    for seq in 1..50 {
        bus.publish(placed(seq % 7, seq)).await.unwrap();
    }
    poll_until("the recorder handled all", || {
        log.lock().unwrap().len() == 50
    })
    .await;
    gate.entered().await;

    // `held` waits at its gate: it lags, in events and in the stats, and the rest do not.
    let handlers = |bus: &EventBus| bus.stats();
    eventually("recorder's lag is 0, held's is 50", || {
        let s = handlers(&bus);
        s.handler("recorder").unwrap().lag == 0 && s.handler("held").unwrap().lag == 50
    })
    .await;
    bus.report_metrics();
    let text = prometheus.render();
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(value("actorbus_published_total"), 50.0);
    assert_eq!(value("actorbus_committed_total"), 50.0);
    assert_eq!(value("actorbus_commit_events_sum"), 50.0);
    assert_eq!(value("actorbus_publish_ack_seconds_count"), 50.0);
    assert_eq!(value("actorbus_handled_total{handler=\"recorder\"}"), 50.0);
    assert_eq!(value("actorbus_handled_total{handler=\"held\"}"), 0.0);
    assert_eq!(
        value("actorbus_publish_handled_seconds_count{handler=\"recorder\"}"),
        50.0
    );
    // Its buckets are cumulative and end with every event.
    let buckets: Vec<f64> = (text.lines())
        .filter(|l| l.starts_with("actorbus_publish_handled_seconds_bucket{handler=\"recorder\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.len() > 10, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&50.0));
    assert_eq!(value("actorbus_lag_events{handler=\"recorder\"}"), 0.0);
    assert_eq!(value("actorbus_lag_events{handler=\"held\"}"), 50.0);
    assert_eq!(value("actorbus_in_flight{handler=\"held\"}"), 50.0);
    assert_eq!(value("actorbus_handler_parked{handler=\"held\"}"), 0.0);

    gate.open();
    eventually("held catches up", || {
        bus.stats().handler("held").unwrap().lag == 0
    })
    .await;
    bus.report_metrics();
    let text = prometheus.render();
    assert_eq!(
        sample(&text, "actorbus_handled_total{handler=\"held\"}"),
        Some(50.0)
    );
    assert_eq!(
        sample(&text, "actorbus_lag_seconds{handler=\"held\"}"),
        Some(0.0)
    );
    bus.shutdown(DRAIN).await.unwrap();

    // The first event, from its publish to each handling, by its id and correlation id.
    let id = first.id.to_string();
    let correlation = correlation.to_string();
    let of_event = |name: &str| -> Vec<BTreeMap<String, String>> {
        (spans.named(name).into_iter())
            .filter(|f| f.get("event_id") == Some(&id))
            .collect()
    };
    let published = of_event("publish");
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].get("correlation_id"), Some(&correlation));
    assert_eq!(published[0]["stream"], "order-1");
    let handled = of_event("handle");
    let by: Vec<&str> = handled.iter().map(|f| f["handler"].as_str()).collect();
    assert!(
        by.contains(&"recorder") && by.contains(&"held"),
        "{handled:?}"
    );
    for span in &handled {
        assert_eq!(span.get("correlation_id"), Some(&correlation));
        assert_eq!(span.get("position"), Some(&"1".to_owned()));
    }
    let commits = spans.named("commit");
    assert!(
        commits
            .iter()
            .any(|c| c.get("first_position") == Some(&"1".to_owned())),
        "{commits:?}"
    );
    let committed: u64 = commits
        .iter()
        .map(|c| c["events"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(committed, 50);
}
