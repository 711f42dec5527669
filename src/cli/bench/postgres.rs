//! `actorbus bench --mode postgres`: the bus on PostgreSQL, publishers awaiting their
//! commits, beside raw multi-row INSERTs of the same rows into another fresh database,
//! measured in the same run. Both databases are created on `--postgres`'s server and
//! dropped at the end, whatever the outcome.

use actorbus::baseline::{RawInserts, StreamIndex};
use actorbus::diesel::prelude::*;
use actorbus::{DomainEvent, EventBus};
use anyhow::Context as _;

use super::sqlite::{durable_run, SqliteRun};
use super::BenchArgs;

/// A database the bench created; dropped (with any session left on it) when this is.
struct BenchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    fn create(admin: &str, suffix: &str) -> anyhow::Result<Self> {
        let name = format!("actorbus_bench_{}{suffix}", std::process::id());
        let mut conn = PgConnection::establish(admin)
            .with_context(|| format!("connecting to {}", redacted(admin)))?;
        actorbus::diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .with_context(|| format!("creating the database {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&self.admin) {
            let _ = actorbus::diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

fn redacted(url: &str) -> String {
    actorbus::PostgresOptions::new(url).redacted_url()
}

/// PostgreSQL mode: as SQLite mode, on a fresh database, and the raw-INSERT baseline.
pub(super) fn run_postgres(args: &BenchArgs) -> anyhow::Result<()> {
    let db = BenchDatabase::create(&args.postgres, "")?;
    let SqliteRun {
        seconds,
        publish_seconds,
        p50,
        p99,
        ack_us: [p99_ack, p999_ack, max_ack],
    } = durable_run(args, EventBus::builder().postgres(&db.url), 0.0)?;
    let baseline = if args.no_baseline {
        None
    } else {
        let raw = BenchDatabase::create(&args.postgres, "_raw")?;
        let took = actorbus::baseline::raw_postgres_inserts(
            &raw.url,
            &RawInserts {
                events: args.events,
                streams: args.streams,
                batch: args.baseline_batch,
                durability: actorbus::Durability::Normal,
                event_type: actorbus::baseline::BenchEvent::EVENT_TYPE,
                index: StreamIndex::Bulk,
            },
        )
        .map_err(|e| anyhow::anyhow!("the raw-INSERT baseline failed: {e}"))?;
        Some(args.events as f64 / took.as_secs_f64())
    };
    let eps = args.events as f64 / seconds;
    let published = args.events as f64 / publish_seconds;
    say!(
        "postgres bus: {} events, {} publishers, {} handlers in {seconds:.3} s = {eps:.0} events/s handled and checkpointed ({published:.0} events/s published)",
        args.events, args.publishers, args.handlers
    );
    say!(
        "publish->ack p99 {p99_ack:.0} us, p99.9 {p999_ack:.0} us, max {max_ack:.0} us; publish->handled p50 {:.0} us, p99 {:.0} us",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
    );
    if let Some(raw) = baseline {
        say!(
            "baseline (raw multi-row INSERT of the same rows into the same tables, transactions of {}): {raw:.0} rows/s; ratio {:.2}",
            args.baseline_batch,
            eps / raw
        );
    }
    if args.json {
        let json = serde_json::json!({
            "mode": "postgres",
            "events": args.events,
            "handlers": args.handlers,
            "concurrency": args.concurrency,
            "publishers": args.publishers,
            "seconds": seconds,
            "events_per_sec": eps,
            "published_per_sec": published,
            "p50_us": p50.as_secs_f64() * 1e6,
            "p99_us": p99.as_secs_f64() * 1e6,
            "ack_p99_us": p99_ack,
            "baseline_rows_per_sec": baseline,
            "ratio_to_baseline": baseline.map(|raw| eps / raw),
        });
        println!("{json}");
    }
    Ok(())
}
