//! `actorbus bench --mode sqlite`: the durable bus, publishers awaiting their commits,
//! beside raw SQLite inserts of the same rows into a fresh file, measured in the same run.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbus::baseline::{publisher_share, BenchEvent};
use actorbus::{DomainEvent, EventBus};
use anyhow::Context as _;

use super::{check_all_seen, counting_bus, slowest_handler_latency, BenchArgs, Sync};

/// SQLite mode: `publishers` tasks publish and await each acknowledgement; the run ends when
/// every handler has handled every event and the checkpoints are written (shutdown).
pub(super) fn run_sqlite(args: &BenchArgs) -> anyhow::Result<()> {
    // Lives to the end of the run: dropping it deletes the temporary database.
    let tmp;
    let db = match &args.db {
        Some(db) => db.clone(),
        None => {
            tmp = TempDir::create()?;
            tmp.0.join("bench.db")
        }
    };
    if !args.no_baseline {
        // Before the run, so that a refusal costs no time.
        refuse_existing(&baseline_path(&db))?;
    }
    let durability = match args.sync {
        Sync::Normal => actorbus::Durability::Normal,
        Sync::Full => actorbus::Durability::Full,
    };
    // The same load without failures, beside the run with them, for the ratio.
    let reference = if args.fail_rate > 0.0 {
        let path = db.with_extension("reference.db");
        refuse_existing(&path)?;
        let figures = sqlite_run(args, &path, durability, 0.0);
        for file in sqlite_files(&path) {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_file(format!("{}.lock", path.display()));
        Some(figures?)
    } else {
        None
    };
    let SqliteRun {
        seconds,
        publish_seconds,
        p50,
        p99,
        ack_us: [p99_ack, p999_ack, max_ack],
        writer_cpu,
        commit_size,
    } = sqlite_run(args, &db, durability, args.fail_rate)?;
    use actorbus::baseline::StreamIndex;
    // The bus's own mean commit size, rounded: the baseline's transactions of that size pay
    // the same per-commit work.
    let own_batch = (commit_size.round() as u64).max(1);
    let baselines = if args.no_baseline {
        None
    } else {
        Some((
            baseline_rusqlite(
                args,
                args.baseline_batch,
                durability,
                &db,
                StreamIndex::Bulk,
            )?,
            baseline_rusqlite(args, own_batch, durability, &db, StreamIndex::Bulk)?,
            baseline_rusqlite(
                args,
                args.baseline_batch,
                durability,
                &db,
                StreamIndex::PerEvent,
            )?,
        ))
    };
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let (peak_rss, _) = crate::cli::rss_mb().unwrap_or((0.0, 0.0));
    let eps = args.events as f64 / seconds;
    let sync = match args.sync {
        Sync::Normal => "normal",
        Sync::Full => "full",
    };
    say!(
        "sqlite bus (synchronous={sync}): {} events, {} publishers, {} handlers in {seconds:.3} s = {eps:.0} events/s handled and checkpointed",
        args.events, args.publishers, args.handlers
    );
    say!(
        "publish->ack p99 {p99_ack:.0} us, p99.9 {p999_ack:.0} us, max {max_ack:.0} us; publish->handled p50 {:.0} us, p99 {:.0} us; file {:.1} MB ({:.1} MB per million events); peak RSS {peak_rss:.1} MiB",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        size as f64 / 1e6,
        size as f64 / 1e6 / (args.events as f64 / 1e6),
    );
    let published = args.events as f64 / publish_seconds;
    say!("group commits of {commit_size:.1} events on average");
    if let Some(reference) = &reference {
        let without = args.events as f64 / reference.publish_seconds;
        say!(
            "with subscription bench-0 failing {:.0}% of its attempts (retried): {published:.0} events/s published, all handled in {seconds:.3} s; \
             without failures, same run: {without:.0} events/s published, all handled in {:.3} s; ratio {:.2}",
            args.fail_rate * 100.0,
            reference.seconds,
            published / without
        );
    }
    let per_event_us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / args.events as f64;
    if let Some(((same, same_cpu), (own, own_cpu), (per_event, _))) = baselines {
        say!(
            "baseline (raw rusqlite, the same rows, tables and bulk stream index, prepared INSERT, transactions of {}): {same:.0} rows/s; ratio {:.2}",
            args.baseline_batch,
            eps / same
        );
        say!(
            "baseline as above, in transactions of the bus's mean commit size ({own_batch}): {own:.0} rows/s; ratio {:.2}",
            eps / own
        );
        for (raw, batch) in [(same_cpu, args.baseline_batch), (own_cpu, own_batch)] {
            if let (Some(writer), Some(raw)) = (writer_cpu, raw) {
                say!(
                    "writer thread CPU {:.2} us per event; the baseline's (transactions of {batch}) {:.2} us per row; ratio {:.2}",
                    per_event_us(writer),
                    per_event_us(raw),
                    writer.as_secs_f64() / raw.as_secs_f64()
                );
            }
        }
        say!(
            "baseline (raw rusqlite, the same event rows into one table whose UNIQUE (stream, version) index every insert keeps, transactions of {}): {per_event:.0} rows/s; ratio {:.2}",
            args.baseline_batch,
            eps / per_event
        );
    }
    if args.json {
        let mut json = serde_json::json!({
            "mode": "sqlite",
            "events": args.events,
            "handlers": args.handlers,
            "concurrency": args.concurrency,
            "handler_threads": args.handler_threads,
            "publishers": args.publishers,
            "sync": sync,
            "seconds": seconds,
            "events_per_sec": eps,
            "p50_us": p50.as_secs_f64() * 1e6,
            "p99_us": p99.as_secs_f64() * 1e6,
            "published_per_sec": published,
            "fail_rate": args.fail_rate,
            "p99_ack_us": p99_ack,
            "p999_ack_us": p999_ack,
            "max_ack_us": max_ack,
            "peak_rss_mb": peak_rss,
            "file_bytes": size,
            "mean_commit_events": commit_size,
        });
        if let Some(writer) = writer_cpu {
            json["writer_cpu_us_per_event"] = per_event_us(writer).into();
        }
        if let Some(((same, same_cpu), (own, own_cpu), (per_event, _))) = baselines {
            if let Some(raw) = same_cpu {
                json["baseline_cpu_us_per_row"] = per_event_us(raw).into();
            }
            if let Some(raw) = own_cpu {
                json["own_batch_baseline_cpu_us_per_row"] = per_event_us(raw).into();
            }
            json["own_batch"] = own_batch.into();
            json["own_batch_baseline_rows_per_sec"] = own.into();
            json["ratio_to_own_batch_baseline"] = (eps / own).into();
            json["baseline_rows_per_sec"] = same.into();
            json["baseline_batch"] = args.baseline_batch.into();
            json["ratio_to_baseline"] = (eps / same).into();
            json["per_event_index_rows_per_sec"] = per_event.into();
            json["ratio_to_per_event_index"] = (eps / per_event).into();
        }
        if let Some(reference) = &reference {
            let without = args.events as f64 / reference.publish_seconds;
            json["published_per_sec_without_failures"] = without.into();
            json["ratio_to_without_failures"] = (published / without).into();
        }
        say!("{json}");
    }
    Ok(())
}

/// What one durable run measured.
pub(super) struct SqliteRun {
    /// Until every event was handled and the checkpoints written.
    pub(super) seconds: f64,
    /// Until every publish was acknowledged.
    pub(super) publish_seconds: f64,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    /// p99, p99.9 and max publish -> ack, in µs.
    pub(super) ack_us: [f64; 3],
    /// The CPU time of the writer's thread until every publish was acknowledged, if known.
    pub(super) writer_cpu: Option<Duration>,
    /// Events per group commit, on average.
    pub(super) commit_size: f64,
}

/// Publishes `--events` with `--publishers` tasks into a bus on `db` whose first subscription
/// fails `fail_rate` of its attempts; shuts it down once every handler saw every event.
fn sqlite_run(
    args: &BenchArgs,
    db: &std::path::Path,
    durability: actorbus::Durability,
    fail_rate: f64,
) -> anyhow::Result<SqliteRun> {
    durable_run(
        args,
        EventBus::builder().sqlite(db).durability(durability),
        fail_rate,
    )
}

/// Publishes `--events` with `--publishers` tasks into a bus from `builder` (a durable
/// store) whose first subscription fails `fail_rate` of its attempts; shuts it down once
/// every handler saw every event.
pub(super) fn durable_run(
    args: &BenchArgs,
    builder: actorbus::BusBuilder,
    fail_rate: f64,
) -> anyhow::Result<SqliteRun> {
    System::new().block_on(async {
        let (bus, seen) = counting_bus(args, builder, fail_rate)?;
        let start = Instant::now();
        let (publish_seconds, ack_us) =
            publish_shares(&bus, args.events, args.publishers, args.streams).await?;
        // Every event is stored: what the writer spent on them (it is gone after shutdown).
        let writer_cpu = crate::cli::thread_cpu("actorbus-writer");
        let stats = bus.stats();
        let commit_size = stats.published as f64 / stats.commits.max(1) as f64;
        bus.shutdown(Duration::from_secs(3600)).await?;
        let seconds = start.elapsed().as_secs_f64();
        check_all_seen(&seen, args.events)?;
        let (p50, p99) = slowest_handler_latency(&bus.stats());
        Ok(SqliteRun {
            seconds,
            publish_seconds,
            p50,
            p99,
            ack_us,
            writer_cpu,
            commit_size,
        })
    })
}

/// Publishes `events` with `publishers` tasks, each awaiting its acknowledgements: the
/// seconds until every publish was acknowledged, and p99, p99.9 and max publish -> ack in
/// µs.
pub(super) async fn publish_shares(
    bus: &EventBus,
    events: u64,
    publishers: usize,
    streams: u64,
) -> anyhow::Result<(f64, [f64; 3])> {
    let start = Instant::now();
    // One histogram for all publishers (they share this thread): one each would cost
    // hundreds of KiB per publisher and blur the peak RSS.
    let acks = std::rc::Rc::new(std::cell::RefCell::new(ack_histogram()));
    let mut tasks = Vec::new();
    for p in 0..publishers as u64 {
        let bus = bus.clone();
        let n = publisher_share(events, publishers as u64, p);
        let acks = std::rc::Rc::clone(&acks);
        tasks.push(actix_rt::spawn(async move {
            for i in 0..n {
                let t = Instant::now();
                bus.publish(BenchEvent::of_publisher(p, i, streams)).await?;
                acks.borrow_mut()
                    .saturating_record(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, actorbus::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    // Each publisher waits for its ack, so a stall delays one ack per publisher: the tail
    // beyond p99 shows what p99 hides.
    let acks = acks.borrow();
    Ok((
        seconds,
        [0.99, 0.999, 1.0].map(|q| acks.value_at_quantile(q) as f64 / 1e3),
    ))
}

/// The file of the baseline runs: `db` with the extension `.baseline.db`.
fn baseline_path(db: &std::path::Path) -> std::path::PathBuf {
    db.with_extension("baseline.db")
}

/// The files of the SQLite database `path`: itself, its WAL and its shared-memory index.
fn sqlite_files(path: &std::path::Path) -> [std::path::PathBuf; 3] {
    ["", "-wal", "-shm"].map(|suffix| format!("{}{suffix}", path.display()).into())
}

/// Fails if any file of the database `path` exists: the bench deletes only files it created.
fn refuse_existing(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(file) = sqlite_files(path)
        .iter()
        .find(|f| f.symlink_metadata().is_ok())
    {
        anyhow::bail!(
            "{} exists and the baseline run would overwrite it: move it away or add --no-baseline",
            file.display()
        );
    }
    Ok(())
}

/// Rows/s of raw SQLite (see [`actorbus::baseline`]) in a file beside `db`: transactions of
/// `--baseline-batch` rows, the same `synchronous`, no actors. The file must not exist; it is
/// deleted afterwards, whatever the outcome.
fn baseline_rusqlite(
    args: &BenchArgs,
    batch: u64,
    durability: actorbus::Durability,
    db: &std::path::Path,
    index: actorbus::baseline::StreamIndex,
) -> anyhow::Result<(f64, Option<Duration>)> {
    let path = baseline_path(db);
    refuse_existing(&path)?;
    let before = crate::cli::own_cpu();
    let rate = raw_inserts_rate(args, batch, durability, &path, index);
    // The raw inserts run on this thread: its CPU time is theirs (and the schema's, once).
    let cpu = crate::cli::own_cpu()
        .zip(before)
        .map(|(after, before)| after - before);
    for file in sqlite_files(&path) {
        let _ = std::fs::remove_file(file);
    }
    Ok((rate?, cpu))
}

/// One baseline run in the new file `path`.
fn raw_inserts_rate(
    args: &BenchArgs,
    batch: u64,
    durability: actorbus::Durability,
    path: &std::path::Path,
    index: actorbus::baseline::StreamIndex,
) -> anyhow::Result<f64> {
    if index == actorbus::baseline::StreamIndex::Bulk {
        // The store's own schema, so that both runs write the same tables and indexes.
        actorbus::Store::create(path)?;
    }
    let took = actorbus::baseline::raw_sqlite_inserts(
        path,
        &actorbus::baseline::RawInserts {
            events: args.events,
            streams: args.streams,
            batch,
            durability,
            event_type: BenchEvent::EVENT_TYPE,
            index,
        },
    )?;
    Ok(args.events as f64 / took.as_secs_f64())
}

/// Publish -> acknowledgement latencies in nanoseconds, 1 µs .. 1 h.
fn ack_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)
        .expect("static bounds are valid")
}

/// A directory the bench created under the system temp dir for a throwaway database; dropping
/// it deletes the directory and everything in it.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        let mut attempt = 0;
        loop {
            let dir = base.join(format!("actorbus-bench-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                // Left by an earlier process with this id: not ours to reuse or delete.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
