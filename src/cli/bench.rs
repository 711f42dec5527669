//! `actorbus bench`: the pipeline with K trivial handlers, timed from the first publish to the
//! last event handled by every handler, beside a baseline measured in the same process.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::baseline::{BenchEvent, Subscriptions};
use actorbus::{EventBus, HandlerOptions};
use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::cli::whole_number;

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// In-memory bus.
    Memory,
    /// SQLite-backed bus: every event committed, handled and checkpointed.
    Sqlite,
    /// PostgreSQL-backed bus, in a database the bench creates and drops (`--postgres`;
    /// needs a build with the `postgres` feature).
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Sync {
    /// synchronous=NORMAL
    Normal,
    /// synchronous=FULL
    Full,
}

/// Most busy work per event, in microseconds: one second.
const MAX_WORK_US: f64 = 1e6;
/// Most subscriptions. This cap and the next two bound the actors and tasks the bench starts,
/// each with its own buffers: a mistyped number would otherwise take all the memory there is.
const MAX_HANDLERS: u64 = 1024;
/// Most handler actors per subscription.
const MAX_CONCURRENCY: u64 = 4096;
/// Most publisher tasks (SQLite mode).
const MAX_PUBLISHERS: u64 = 4096;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Which store the bus runs on.
    #[arg(long, value_enum, default_value = "memory")]
    mode: Mode,
    /// Events to publish, at least 1.
    #[arg(long, default_value_t = 1_000_000, value_parser = whole_number::<u64>(1, u64::MAX))]
    events: u64,
    /// Subscriptions (each a trivial handler counting events), 1 to 1024.
    #[arg(long, default_value_t = 4, value_parser = whole_number::<usize>(1, MAX_HANDLERS))]
    handlers: usize,
    /// Handler actors per subscription, 1 to 4096.
    #[arg(long, default_value_t = 1, value_parser = whole_number::<usize>(1, MAX_CONCURRENCY))]
    concurrency: usize,
    /// Threads the handler actors run on (default: the number of cores).
    #[arg(long, value_parser = whole_number::<usize>(1, 256))]
    handler_threads: Option<usize>,
    /// Distinct streams the events are spread over, at least 1.
    #[arg(long, default_value_t = 1000, value_parser = whole_number::<u64>(1, u64::MAX))]
    streams: u64,
    /// Busy work per event in each handler, in microseconds, 0 to 1000000 (a slow handler).
    #[arg(
        long,
        default_value_t = 0.0,
        value_parser = crate::cli::number_from(0.0, MAX_WORK_US),
        allow_negative_numbers = true
    )]
    work_us: f64,
    /// SQLite mode: the database file the bus writes (when not given, a temporary one, deleted
    /// at the end). The baseline runs beside it in a file named with the extension
    /// `.baseline.db` (for `bench.db`: `bench.baseline.db`, with its `-wal` and `-shm`) and
    /// delete it when done; if that file exists, the bench refuses to start rather than
    /// overwrite it.
    #[arg(long, value_name = "PATH")]
    db: Option<std::path::PathBuf>,
    /// SQLite mode: durability of each commit.
    #[arg(long, value_enum, default_value = "normal")]
    sync: Sync,
    /// SQLite mode: concurrent publishers, each awaiting its acknowledgement, 1 to 4096.
    #[arg(long, default_value_t = 64, value_parser = whole_number::<usize>(1, MAX_PUBLISHERS))]
    publishers: usize,
    /// SQLite mode: rows per transaction of the raw-SQLite baseline, at least 1.
    #[arg(long, default_value_t = 1000, value_parser = whole_number::<u64>(1, u64::MAX))]
    baseline_batch: u64,
    /// SQLite mode: share of attempts at which the first subscription fails (retried with
    /// backoff: 1 ms doubling to 20 ms, 20 attempts), 0 to 1. Above 0 the bench also runs
    /// without failures, in `.reference.db` beside the database, and reports the ratio of the
    /// two publish rates.
    #[arg(
        long,
        default_value_t = 0.0,
        value_parser = crate::cli::number_from(0.0, 1.0),
        allow_negative_numbers = true
    )]
    fail_rate: f64,
    /// PostgreSQL mode: the server's maintenance database; the bench creates its databases
    /// there (`actorbus_bench_<pid>` and `_raw`) and drops them at the end.
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// PostgreSQL mode: OS processes sharing the run, 1 to 16 (this one and copies of it,
    /// each publishing its share and handling the partitions it claims; raise
    /// `--concurrency` so that there are partitions to share).
    #[arg(long, default_value_t = 1, value_parser = whole_number::<usize>(1, 16))]
    processes: usize,
    /// Internal: take part in another bench process's PostgreSQL run on this database.
    #[arg(long, value_name = "URL", hide = true)]
    join: Option<String>,
    /// Skip the baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Install the Prometheus recorder first, as `serve` and `demo --serve` do, so the run
    /// pays for every metric it records (without it the `metrics` calls find no recorder).
    #[arg(long)]
    prometheus: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

struct Measured {
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    rss_growth_mb: f64,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.prometheus {
        let prometheus = actorbus::telemetry::Prometheus::install()?;
        let result = run_mode(args);
        // Rendered once, as a scrape would: what was recorded is really there.
        let samples = prometheus
            .render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        log::info!("the Prometheus recorder holds {samples} samples");
        return result;
    }
    run_mode(args)
}

fn run_mode(args: BenchArgs) -> anyhow::Result<()> {
    if args.mode == Mode::Sqlite {
        return sqlite::run_sqlite(&args);
    }
    if args.mode == Mode::Postgres {
        #[cfg(feature = "postgres")]
        return postgres::run_postgres(&args);
        #[cfg(not(feature = "postgres"))]
        anyhow::bail!("--mode postgres needs a build with the `postgres` feature (cargo run --features postgres)");
    }
    let system = System::new();
    let baseline = if args.no_baseline {
        None
    } else {
        let threads = args
            .handler_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let send = system.block_on(baseline_actix(args.events, args.handlers))?;
        let took = system.block_on(actorbus::baseline::raw_actix_do_send(
            args.events,
            args.handlers,
            threads,
        ))?;
        Some((send, args.events as f64 / took.as_secs_f64(), threads))
    };
    let m = system.block_on(run_memory(&args))?;
    let (peak_rss, _) = crate::cli::rss_mb().unwrap_or((0.0, 0.0));
    let eps = args.events as f64 / m.seconds;
    say!(
        "memory bus: {} events x {} handlers (concurrency {}) in {:.3} s = {:.0} events/s fully handled",
        args.events, args.handlers, args.concurrency, m.seconds, eps
    );
    say!(
        "latency publish->handled: p50 {:.0} us, p99 {:.0} us; peak RSS {:.1} MiB, growth after warm-up {:.1} MiB",
        m.p50_us, m.p99_us, peak_rss, m.rss_growth_mb
    );
    let mut json = serde_json::json!({
        "mode": "memory",
        "events": args.events,
        "handlers": args.handlers,
        "concurrency": args.concurrency,
        "handler_threads": args.handler_threads,
        "work_us": args.work_us,
        "seconds": m.seconds,
        "events_per_sec": eps,
        "p50_us": m.p50_us,
        "p99_us": m.p99_us,
        "peak_rss_mb": peak_rss,
        "rss_growth_mb": m.rss_growth_mb,
    });
    if let Some((base, unbounded, threads)) = baseline {
        let ratio = eps / base;
        say!(
            "baseline (raw actix send, 1 sender -> {} bounded actors, 1024 in flight): {:.0} events/s; ratio {:.2}",
            args.handlers, base, ratio
        );
        say!(
            "baseline (raw actix do_send, 1 sender -> {} unbounded actors on {threads} threads): {unbounded:.0} events/s; ratio {:.2}",
            args.handlers,
            eps / unbounded
        );
        json["baseline_events_per_sec"] = base.into();
        json["ratio_to_baseline"] = ratio.into();
        json["do_send_events_per_sec"] = unbounded.into();
        json["ratio_to_do_send"] = (eps / unbounded).into();
    }
    if args.json {
        say!("{json}");
    }
    Ok(())
}

/// The bench's subscriptions; the first fails `fail_rate` of its attempts.
fn counting_bus(
    args: &BenchArgs,
    mut builder: actorbus::BusBuilder,
    fail_rate: f64,
) -> anyhow::Result<(EventBus, Vec<Arc<AtomicU64>>)> {
    if let Some(n) = args.handler_threads {
        builder = builder.handler_threads(n);
    }
    let retry = actorbus::RetryPolicy::new(20)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20));
    let subscriptions = Subscriptions {
        handlers: args.handlers,
        options: HandlerOptions::new()
            .concurrency(args.concurrency)
            .retry(retry),
        work: Duration::from_secs_f64(args.work_us / 1e6),
        first_fail_rate: fail_rate,
    };
    Ok(actorbus::baseline::counting_bus(builder, &subscriptions)?)
}

/// p50 and p99 publish->handled of the slowest handler: an event is done when all handled it.
fn slowest_handler_latency(stats: &actorbus::Stats) -> (Duration, Duration) {
    let worst = |f: fn(&actorbus::HandlerStats) -> Duration| {
        stats.handlers.iter().map(f).max().unwrap_or_default()
    };
    (worst(|h| h.latency.p50), worst(|h| h.latency.p99))
}

fn check_all_seen(seen: &[Arc<AtomicU64>], events: u64) -> anyhow::Result<()> {
    actorbus::baseline::check_all_seen(seen, events).map_err(anyhow::Error::msg)
}

async fn run_memory(args: &BenchArgs) -> anyhow::Result<Measured> {
    let (bus, seen) = counting_bus(args, EventBus::builder(), 0.0)?;
    let warm = (args.events / 10).max(1);
    let mut rss_after_warmup = 0.0;
    let start = Instant::now();
    for seq in 0..args.events {
        bus.publish(BenchEvent::nth(seq, args.streams)).await?;
        if seq + 1 == warm {
            rss_after_warmup = crate::cli::rss_mb().map_or(0.0, |(_, now)| now);
        }
    }
    bus.shutdown(Duration::from_secs(3600))
        .await
        .context("draining the bus")?;
    let seconds = start.elapsed().as_secs_f64();
    let (_, rss_end) = crate::cli::rss_mb().unwrap_or((0.0, 0.0));
    check_all_seen(&seen, args.events)?;
    let (p50, p99) = slowest_handler_latency(&bus.stats());
    Ok(Measured {
        seconds,
        p50_us: p50.as_secs_f64() * 1e6,
        p99_us: p99.as_secs_f64() * 1e6,
        rss_growth_mb: (rss_end - rss_after_warmup).max(0.0),
    })
}

/// Events/s of raw actix message passing ([`actorbus::baseline::raw_actix_send`]): one
/// sender, `k` bounded actors, up to 1024 messages in flight.
async fn baseline_actix(events: u64, k: usize) -> anyhow::Result<f64> {
    let took = actorbus::baseline::raw_actix_send(events, k, 1024).await?;
    Ok(events as f64 / took.as_secs_f64())
}
