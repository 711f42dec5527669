//! Throughput of the in-memory pipeline (publish -> router -> 4 counting handlers, timed
//! until `shutdown` has drained) beside raw actix message passing to 4 bounded actors.
//! The same measurement as `actorbus bench` (src/cli/bench.rs), with the same event shape.
//!
//! `cargo bench --bench pipeline`

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::EventBus;
use common::{counting_bus, BenchEvent};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use futures_util::stream::{FuturesUnordered, StreamExt};

const EVENTS: u64 = 100_000;
const STREAMS: u64 = 1000;
const HANDLERS: usize = 4;
/// Mailbox bound and in-flight cap of the baseline, matching the bus's default mailbox.
const IN_FLIGHT: usize = 1024;

/// Publishes `events` and waits for the drain; returns the time from first publish to drained.
async fn actorbus_memory(events: u64) -> Duration {
    let (bus, seen) = counting_bus(EventBus::builder(), HANDLERS);

    let start = Instant::now();
    for seq in 0..events {
        bus.publish(BenchEvent {
            stream: seq % STREAMS,
            seq,
        })
        .await
        .expect("bus accepts events");
    }
    bus.shutdown(Duration::from_secs(600))
        .await
        .expect("bus drains");
    let elapsed = start.elapsed();

    for c in &seen {
        assert_eq!(
            c.load(Ordering::Relaxed),
            events,
            "every handler saw every event"
        );
    }
    elapsed
}

/// A plain actix actor that counts what it receives.
struct Sink(u64);

impl Actor for Sink {
    type Context = Context<Self>;
}

struct Msg(#[allow(dead_code)] Arc<BenchEvent>);

impl Message for Msg {
    type Result = ();
}

impl Handler<Msg> for Sink {
    type Result = ();
    fn handle(&mut self, _msg: Msg, _ctx: &mut Context<Self>) {
        self.0 += 1;
    }
}

/// The baseline: one sender, `HANDLERS` bounded actors, `send` with at most `IN_FLIGHT`
/// requests outstanding; timed until every request resolved.
async fn raw_actix_send(events: u64) -> Duration {
    let sinks: Vec<Addr<Sink>> = (0..HANDLERS)
        .map(|_| {
            Sink::create(|ctx| {
                ctx.set_mailbox_capacity(IN_FLIGHT);
                Sink(0)
            })
        })
        .collect();
    let mut in_flight = FuturesUnordered::new();

    let start = Instant::now();
    for seq in 0..events {
        let e = Arc::new(BenchEvent {
            stream: seq % STREAMS,
            seq,
        });
        for s in &sinks {
            in_flight.push(s.send(Msg(Arc::clone(&e))));
        }
        while in_flight.len() >= IN_FLIGHT {
            in_flight.next().await.transpose().expect("sink is alive");
        }
    }
    while let Some(r) = in_flight.next().await {
        r.expect("sink is alive");
    }
    start.elapsed()
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group
        .throughput(Throughput::Elements(EVENTS))
        // One iteration is ~0.1 s: flat sampling keeps the run to about 10 iterations each.
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function("actorbus_memory", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    // A fresh system per iteration, started outside the timed part, so no
                    // actor of a previous run is left on the arbiter.
                    let system = System::new();
                    system.block_on(actorbus_memory(EVENTS))
                })
                .sum()
        })
    });
    group.bench_function("raw_actix_send", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| System::new().block_on(raw_actix_send(EVENTS)))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
