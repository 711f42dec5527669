//! `actorbus bench`: the pipeline with K trivial handlers, timed from the first publish to the
//! last event handled by every handler, beside a baseline measured in the same process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::{DomainEvent, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// In-memory bus.
    Memory,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Which store the bus runs on.
    #[arg(long, value_enum, default_value = "memory")]
    mode: Mode,
    /// Events to publish.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Subscriptions (each a trivial handler counting events).
    #[arg(long, default_value_t = 4)]
    handlers: usize,
    /// Handler actors per subscription.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Distinct streams the events are spread over.
    #[arg(long, default_value_t = 1000)]
    streams: u64,
    /// Busy work per event in each handler, in microseconds (a slow handler).
    #[arg(long, default_value_t = 0.0)]
    work_us: f64,
    /// Skip the baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct BenchEvent {
    stream: u64,
    seq: u64,
}

impl DomainEvent for BenchEvent {
    const EVENT_TYPE: &'static str = "bench.event";
    fn stream_id(&self) -> String {
        self.stream.to_string()
    }
}

struct Counting {
    seen: Arc<AtomicU64>,
    work: Duration,
}

impl EventHandler<BenchEvent> for Counting {
    async fn handle(&mut self, _e: &Envelope<BenchEvent>) -> Result<(), HandlerError> {
        if !self.work.is_zero() {
            spin(self.work);
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

struct Measured {
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    rss_growth_mb: f64,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    anyhow::ensure!(args.handlers > 0, "--handlers must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    let system = System::new();
    let baseline = if args.no_baseline {
        None
    } else {
        Some(system.block_on(baseline_actix(args.events, args.handlers))?)
    };
    let m = system.block_on(run_memory(&args))?;
    let (peak_rss, _) = crate::cli::rss_mb().unwrap_or((0.0, 0.0));
    let eps = args.events as f64 / m.seconds;
    println!(
        "memory bus: {} events x {} handlers (concurrency {}) in {:.3} s = {:.0} events/s fully handled",
        args.events, args.handlers, args.concurrency, m.seconds, eps
    );
    println!(
        "latency publish->handled: p50 {:.0} us, p99 {:.0} us; peak RSS {:.1} MiB, growth after warm-up {:.1} MiB",
        m.p50_us, m.p99_us, peak_rss, m.rss_growth_mb
    );
    let mut json = serde_json::json!({
        "mode": "memory",
        "events": args.events,
        "handlers": args.handlers,
        "concurrency": args.concurrency,
        "work_us": args.work_us,
        "seconds": m.seconds,
        "events_per_sec": eps,
        "p50_us": m.p50_us,
        "p99_us": m.p99_us,
        "peak_rss_mb": peak_rss,
        "rss_growth_mb": m.rss_growth_mb,
    });
    if let Some(base) = baseline {
        let ratio = eps / base;
        println!(
            "baseline (raw actix send, 1 sender -> {} bounded actors, 1024 in flight): {:.0} events/s; ratio {:.2}",
            args.handlers, base, ratio
        );
        json["baseline_events_per_sec"] = base.into();
        json["ratio_to_baseline"] = ratio.into();
    }
    if args.json {
        println!("{json}");
    }
    Ok(())
}

async fn run_memory(args: &BenchArgs) -> anyhow::Result<Measured> {
    let seen: Vec<Arc<AtomicU64>> = (0..args.handlers).map(|_| Arc::default()).collect();
    let work = Duration::from_secs_f64(args.work_us / 1e6);
    let mut builder = EventBus::builder();
    for (i, counter) in seen.iter().enumerate() {
        let counter = Arc::clone(counter);
        builder = builder.handler_with(
            &format!("bench-{i}"),
            HandlerOptions::new().concurrency(args.concurrency),
            move || Counting {
                seen: Arc::clone(&counter),
                work,
            },
        );
    }
    let bus = builder.build()?;
    let warm = (args.events / 10).max(1);
    let mut rss_after_warmup = 0.0;
    let start = Instant::now();
    for seq in 0..args.events {
        bus.publish(BenchEvent {
            stream: seq % args.streams,
            seq,
        })
        .await?;
        if seq + 1 == warm {
            rss_after_warmup = crate::cli::rss_mb().map_or(0.0, |(_, now)| now);
        }
    }
    bus.shutdown(Duration::from_secs(3600))
        .await
        .context("draining the bus")?;
    let seconds = start.elapsed().as_secs_f64();
    let (_, rss_end) = crate::cli::rss_mb().unwrap_or((0.0, 0.0));
    for (i, c) in seen.iter().enumerate() {
        anyhow::ensure!(
            c.load(Ordering::Relaxed) == args.events,
            "handler {i} saw {} of {} events",
            c.load(Ordering::Relaxed),
            args.events
        );
    }
    let stats = bus.stats();
    let p50 = stats
        .handlers
        .iter()
        .map(|h| h.latency.p50)
        .max()
        .unwrap_or_default();
    let p99 = stats
        .handlers
        .iter()
        .map(|h| h.latency.p99)
        .max()
        .unwrap_or_default();
    Ok(Measured {
        seconds,
        p50_us: p50.as_secs_f64() * 1e6,
        p99_us: p99.as_secs_f64() * 1e6,
        rss_growth_mb: (rss_end - rss_after_warmup).max(0.0),
    })
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

/// Events/s of raw actix message passing: one sender, `k` bounded actors, `send` with up to
/// 1024 messages in flight; an event counts once all `k` actors handled it.
async fn baseline_actix(events: u64, k: usize) -> anyhow::Result<f64> {
    let sinks: Vec<Addr<Sink>> = (0..k)
        .map(|_| {
            Sink::create(|ctx| {
                ctx.set_mailbox_capacity(1024);
                Sink(0)
            })
        })
        .collect();
    let mut in_flight = FuturesUnordered::new();
    let start = Instant::now();
    for seq in 0..events {
        let e = Arc::new(BenchEvent { stream: seq, seq });
        for s in &sinks {
            in_flight.push(s.send(Msg(Arc::clone(&e))));
        }
        while in_flight.len() >= 1024 {
            in_flight.next().await.transpose()?;
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}
