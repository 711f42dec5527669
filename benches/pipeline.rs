//! Throughput of the in-memory pipeline (publish -> router -> 4 counting handlers, timed
//! until `shutdown` has drained) beside raw actix message passing to 4 bounded actors.
//! The same measurement as `actorbus bench` (src/cli/bench.rs), with the same event and
//! handlers (`actorbus::baseline`).
//!
//! `cargo bench --bench pipeline`

use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::baseline::{check_all_seen, counting_bus, BenchEvent, Subscriptions};
use actorbus::EventBus;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const EVENTS: u64 = 100_000;
const STREAMS: u64 = 1000;
const HANDLERS: usize = 4;
/// Mailbox bound and in-flight cap of the baseline, matching the bus's default mailbox.
const IN_FLIGHT: usize = 1024;

/// Publishes `events` and waits for the drain; returns the time from first publish to drained.
async fn actorbus_memory(events: u64) -> Duration {
    let (bus, seen) =
        counting_bus(EventBus::builder(), &Subscriptions::counting(HANDLERS)).expect("bus builds");

    let start = Instant::now();
    for seq in 0..events {
        bus.publish(BenchEvent::nth(seq, STREAMS))
            .await
            .expect("bus accepts events");
    }
    bus.shutdown(Duration::from_secs(600))
        .await
        .expect("bus drains");
    let elapsed = start.elapsed();

    check_all_seen(&seen, events).expect("every handler saw every event");
    elapsed
}

/// The baseline ([`actorbus::baseline::raw_actix_send`]): one sender, `HANDLERS` bounded
/// actors, `send` with at most `IN_FLIGHT` requests outstanding.
async fn raw_actix_send(events: u64) -> Duration {
    actorbus::baseline::raw_actix_send(events, HANDLERS, IN_FLIGHT)
        .await
        .expect("sinks are alive")
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
