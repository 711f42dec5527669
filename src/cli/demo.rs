//! `actorbus demo`: a small order domain through a SQLite-backed bus. Orders are placed,
//! paid, then shipped or cancelled, across many order streams; four subscriptions show what
//! the runtime does: a transactional read model, a flaky notifier (retries, dead letters), a
//! handler that panics now and then (supervised restarts) and an order checker that counts
//! per-stream ordering violations. Running it again on the same store resumes.

use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::System;
use actorbus::{
    handler_fn, Backoff, Envelope, EventBus, HandlerError, HandlerOptions, RestartPolicy,
    RetryPolicy, Store,
};
use anyhow::Context as _;
use clap::Args;
use diesel::connection::SimpleConnection;
use futures_util::future::{select, Either};
use indicatif::{ProgressBar, ProgressStyle};

mod domain;
pub(crate) use domain::OrderEvent;
use domain::*;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The SQLite store (created when missing; an interrupted run resumes on it), or a
    /// `postgres://…` database that several demos share: each publishes `--events` orders
    /// of its own and handles the share of every subscription it claims.
    #[arg(long, default_value = "actorbus-demo.db")]
    db: PathBuf,
    /// Demo events the store holds once the run completes.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Seed of the generated orders, failures and panics.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of notifier attempts that fail transiently, 0 to 1 (retried with backoff).
    #[arg(
        long,
        default_value_t = 0.02,
        value_parser = crate::cli::number_from(0.0, 1.0),
        allow_negative_numbers = true
    )]
    fail_rate: f64,
    /// Share of events on which the auditor panics on its first attempt, 0 to 1 (restarted).
    #[arg(
        long,
        default_value_t = 0.0005,
        value_parser = crate::cli::number_from(0.0, 1.0),
        allow_negative_numbers = true
    )]
    panic_rate: f64,
    /// No progress bar (for logs and scripts).
    #[arg(long)]
    quiet: bool,
    /// Serves the live web view of the running demo on this address (e.g. 127.0.0.1:8080),
    /// with `/metrics`; the token its buttons need is printed (or taken from
    /// `ACTORBUS_TOKEN`). Once the demo is done, the view stays up until Ctrl-C (or
    /// SIGTERM), and the demo then exits 0.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
}

/// Runs the demo. On SIGINT or SIGTERM it stores no more events, lets the handlers finish
/// those it stored (a second signal stops the wait), prints its summary and returns the exit
/// code of that signal.
pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let shared = args
        .db
        .to_str()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    let shown = crate::cli::shown(&args.db);
    let store = match shared {
        Some(url) => Store::create_url(url),
        None => Store::create(&args.db),
    }
    .with_context(|| format!("cannot open the store {shown}"))?;
    let (already, first_order) = match shared {
        Some(_) => {
            create_read_model_postgres(&store)?;
            // Orders of its own, apart from those of the other demos on the store; no resume.
            (0, fastrand::u64(1..1 << 30) << 32)
        }
        None => {
            store.with_connection(|conn| conn.batch_execute(READ_MODEL_DDL))?;
            (store.summary()?.events, 0)
        }
    };
    anyhow::ensure!(
        already <= args.events,
        "{shown} already holds {already} events, more than --events {}: use another --db",
        args.events
    );
    if already > 0 {
        say!(
            "resuming: {shown} holds {already} of {} demo events",
            args.events
        );
    }
    // The demo's own panics are expected: keep them out of the terminal (they are counted).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("demo: auditor tripped") {
            default_hook(info);
        }
    }));

    let started = Instant::now();
    let system = System::new();
    let mut outcome = system.block_on(run_bus(&args, shared, already, first_order))?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::panic::take_hook();

    // On a shared store, what this demo published (the others publish too).
    let total = match shared {
        Some(_) => outcome.published,
        None => store.summary()?.events,
    };
    let violations = violations(&store)?;
    let letters = store.dead_letters(None)?.len();
    print_summary(
        &args, &outcome, total, already, seconds, violations, letters,
    )?;
    if !outcome.finished && shared.is_none() {
        say!("interrupted: run `actorbus demo --db {shown}` again to resume");
    }
    anyhow::ensure!(
        violations == 0,
        "{violations} ordering violation(s) recorded"
    );
    if let Some(mut serving) = outcome.serving.take() {
        // Done, not stopped: the view stays up for whoever opened it, until a signal.
        say!(
            "the demo is done; its live view stays on http://{}/ until Ctrl-C",
            serving.addr
        );
        system.block_on(async move {
            serving.signals.next().await;
            serving.server.stop(true).await;
        });
    }
    Ok(outcome
        .stopped
        .map_or(ExitCode::SUCCESS, StopSignal::exit_code))
}

/// The live view of a demo that is done, and the signals that end it.
struct StillServing {
    addr: std::net::SocketAddr,
    server: actix_web::dev::ServerHandle,
    signals: StopSignals,
}

struct Outcome {
    /// The first SIGINT or SIGTERM the run received, if any.
    stopped: Option<StopSignal>,
    /// Every event published and handled: nothing left for another run.
    finished: bool,
    /// Events this run published.
    published: u64,
    /// The store is PostgreSQL, shared with other demos: this one's figures are its share.
    shared: bool,
    stats: actorbus::Stats,
    /// `--serve` and the demo finished: the view is still up.
    serving: Option<StillServing>,
}

/// A signal that asks the demo to stop.
#[derive(Debug, Clone, Copy)]
enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The exit code of a process this signal ended, as a shell reports it: 128 + its number.
    fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        })
    }
}

/// SIGINT and SIGTERM, caught from the moment this is created to the end of the process.
#[cfg(unix)]
struct StopSignals {
    interrupt: actix_rt::signal::unix::Signal,
    terminate: actix_rt::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn catch() -> anyhow::Result<Self> {
        use actix_rt::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> StopSignal {
        match select(pin!(self.interrupt.recv()), pin!(self.terminate.recv())).await {
            Either::Left(_) => StopSignal::Interrupt,
            Either::Right(_) => StopSignal::Terminate,
        }
    }
}

/// Ctrl-C, where there is no SIGTERM to catch.
#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn catch() -> anyhow::Result<Self> {
        Ok(Self)
    }

    /// The next Ctrl-C.
    async fn next(&mut self) -> StopSignal {
        let _ = actix_rt::signal::ctrl_c().await;
        StopSignal::Interrupt
    }
}

async fn run_bus(
    args: &DemoArgs,
    shared: Option<&str>,
    already: u64,
    first_order: u64,
) -> anyhow::Result<Outcome> {
    // Before the bus starts, so that no signal finds the demo without its handler.
    let mut signals = StopSignals::catch()?;
    // Before the bus is built: it takes its histograms from the recorder; and the address
    // is taken first, so that a bad one fails before anything starts.
    let serving = match &args.serve {
        Some(addr) => Some(crate::cli::serve::prepare(addr)?),
        None => None,
    };
    let seed = args.seed;
    let fail_rate = args.fail_rate;
    let panic_rate = args.panic_rate;
    let attempts = Arc::new(AtomicU64::new(0));
    let notifier_attempts = Arc::clone(&attempts);
    let tripped = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let quick = RetryPolicy::new(4)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20));
    let store = match shared {
        Some(url) => EventBus::builder().postgres(url),
        None => EventBus::builder().sqlite(&args.db),
    };
    let bus = store
        .projection(
            "inventory",
            HandlerOptions::new().concurrency(2).retry(quick),
            || Inventory,
        )
        .projection(
            "order-checker",
            HandlerOptions::new().concurrency(4).retry(quick),
            || OrderChecker,
        )
        .handler_with(
            "notifier",
            HandlerOptions::new().concurrency(4).retry(quick),
            move || {
                let attempts = Arc::clone(&notifier_attempts);
                handler_fn(
                    move |e: &Envelope<OrderEvent>| -> Result<(), HandlerError> {
                        let key = e.position().unwrap_or(0);
                        // One event in 2000 is addressed to a mailbox that does not exist: it fails
                        // every attempt and ends as a dead letter.
                        if mix(seed ^ 0xDEAD, key).is_multiple_of(2000) {
                            return Err(format!(
                                "mail to order {} bounced: no such mailbox",
                                e.order()
                            )
                            .into());
                        }
                        let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                        if chance(seed ^ 0xF00D, attempt, fail_rate) {
                            return Err("mail server timed out".into());
                        }
                        Ok(())
                    },
                )
            },
        )
        .handler_with(
            "auditor",
            HandlerOptions::new()
                .concurrency(2)
                .retry(quick)
                .restart(RestartPolicy::new(1000, Duration::from_secs(60)).backoff(
                    Backoff::new(Duration::from_millis(1)).max(Duration::from_millis(50)),
                )),
            move || {
                // Shared by every instance: the restarted auditor handles the event it
                // panicked on, instead of panicking on it again.
                let tripped = Arc::clone(&tripped);
                handler_fn(
                    move |e: &Envelope<OrderEvent>| -> Result<(), HandlerError> {
                        let key = e.position().unwrap_or(0);
                        if chance(seed ^ 0xBAD, key, panic_rate)
                            && tripped
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(key)
                        {
                            panic!("demo: auditor tripped on position {key}");
                        }
                        Ok(())
                    },
                )
            },
        )
        .build()?;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.events)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_position(already);
    let server = match serving {
        Some((listener, prometheus)) => {
            let addr = listener.local_addr()?;
            let token = crate::cli::serve::token(None);
            let view = actorbus::web::WebView::of_bus(bus.clone());
            let view = crate::cli::serve::equip(view, &token, prometheus);
            let server = crate::cli::serve::server(view, listener, false)?;
            let handle = server.handle();
            actix_rt::spawn(server);
            bar.println(format!(
                "live view on http://{addr}/ (changes need the token {token})"
            ));
            Some((addr, handle))
        }
        None => None,
    };
    let ticker = {
        let bar = bar.clone();
        let bus = bus.clone();
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let s = bus.stats();
                let handled = s.handler("order-checker").map_or(0, |h| h.handled);
                let rate = s.published as f64 / bar.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "| {rate:.0}/s | checked {handled} | retries {} | restarts {} | dead letters {}",
                    s.handlers.iter().map(|h| h.retries).sum::<u64>(),
                    s.restarts(),
                    s.dead_letters()
                ));
            }
        })
    };

    let mut next = already;
    let mut stopped = None;
    while next < args.events {
        let end = (next + BATCH).min(args.events);
        let batch: Vec<OrderEvent> = (next..end)
            .map(|i| demo_event(seed, first_order, i))
            .collect();
        match select(pin!(bus.publish_all(batch)), pin!(signals.next())).await {
            Either::Left((result, _)) => {
                result?;
            }
            Either::Right((signal, _)) => {
                // Whatever was committed stays; the next run counts it and goes on.
                stopped = Some(signal);
                break;
            }
        }
        next = end;
        bar.set_position(next);
    }
    bar.set_message("| draining the handlers");
    let mut drain = pin!(bus.shutdown(Duration::from_secs(600)));
    let drained = loop {
        match select(drain.as_mut(), pin!(signals.next())).await {
            Either::Left((result, _)) => break result.map(|()| true),
            // The first signal: the handlers finish what is stored, as they were doing.
            Either::Right((signal, _)) if stopped.is_none() => stopped = Some(signal),
            // A second one: stop waiting for them, the next run has them finish.
            Either::Right(_) => break Ok(false),
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    let finished = matches!(drained, Ok(true)) && next == args.events;
    let serving = match server {
        Some((addr, server)) if finished && stopped.is_none() => Some(StillServing {
            addr,
            server,
            signals,
        }),
        Some((_, server)) => {
            server.stop(true).await;
            None
        }
        None => None,
    };
    drained?;
    Ok(Outcome {
        stopped,
        finished,
        published: next - already,
        shared: shared.is_some(),
        stats: bus.stats(),
        serving,
    })
}

/// The read model's tables on a PostgreSQL store.
fn create_read_model_postgres(store: &Store) -> anyhow::Result<()> {
    #[cfg(feature = "postgres")]
    // Demos starting together would race on CREATE TABLE IF NOT EXISTS: one at a time.
    store.with_postgres_connection(|conn| {
        use diesel::Connection;
        conn.transaction(|conn| {
            conn.batch_execute("SELECT pg_advisory_xact_lock(4242424242)")?;
            conn.batch_execute(READ_MODEL_DDL_POSTGRES)
        })
    })?;
    #[cfg(not(feature = "postgres"))]
    let _ = store;
    Ok(())
}

fn print_summary(
    args: &DemoArgs,
    outcome: &Outcome,
    total: u64,
    already: u64,
    seconds: f64,
    violations: i64,
    stored_letters: usize,
) -> std::io::Result<()> {
    let s = &outcome.stats;
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    // Counted in the store: a batch being published when a signal came may have been stored.
    let published = total.saturating_sub(already);
    say!();
    say!(
        "actorbus demo: {} (seed {})",
        crate::cli::shown(&args.db),
        args.seed
    );
    if outcome.shared {
        say!(
            "  events published      {published} of {} by this demo, beside the others on the store",
            args.events,
        );
    } else {
        say!(
            "  events in store       {total} of {} ({published} published now, {already} before)",
            args.events,
        );
    }
    say!(
        "  throughput            {:.0} events/s (published, stored, handled by 4 subscriptions, in {seconds:.2} s)",
        published as f64 / seconds.max(1e-9)
    );
    say!(
        "  retries               {}",
        s.handlers.iter().map(|h| h.retries).sum::<u64>()
    );
    say!("  restarts              {}", s.restarts());
    say!(
        "  dead letters          {stored_letters} in the store ({} this run)",
        s.dead_letters()
    );
    say!("  ordering violations   {violations}");
    say!();
    say!(
        "  {:<14} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "handler",
        "handled",
        "retries",
        "restarts",
        "dead",
        "p50 (us)",
        "p99 (us)"
    );
    for h in &s.handlers {
        say!(
            "  {:<14} {:>9} {:>8} {:>8} {:>8} {:>10.0} {:>10.0}",
            h.name,
            h.handled,
            h.retries,
            h.restarts,
            h.dead_letters,
            micros(h.latency.p50),
            micros(h.latency.p99)
        );
    }
    Ok(())
}
