//! `actorbus bench --mode postgres`: the bus on PostgreSQL, publishers awaiting their
//! commits, beside raw multi-row INSERTs of the same rows into another fresh database,
//! measured in the same run. Both databases are created on `--postgres`'s server and
//! dropped at the end, whatever the outcome.

use actorbus::baseline::{RawInserts, StreamIndex};
use actorbus::diesel::prelude::*;
use actorbus::{DomainEvent, EventBus};
use anyhow::Context as _;

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

/// PostgreSQL mode: `--processes` processes (this one and copies of it) on a fresh
/// database, each publishing its share and handling the partitions it claims, and the
/// raw-INSERT baseline.
pub(super) fn run_postgres(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.join {
        return join(args, url);
    }
    let db = BenchDatabase::create(&args.postgres, "")?;
    let run = shared_run(args, &db.url)?;
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
    let SharedRun {
        seconds,
        publish_seconds,
        ack_us: [p99_ack, p999_ack, max_ack],
        commit_size,
    } = run;
    let eps = args.events as f64 / seconds;
    let published = args.events as f64 / publish_seconds;
    say!(
        "postgres bus, {} process(es): {} events, {} publishers each, {} handlers x {} partitions in {seconds:.3} s = {eps:.0} events/s handled and checkpointed ({published:.0} events/s published)",
        args.processes, args.events, args.publishers, args.handlers, args.concurrency
    );
    say!(
        "publish->ack (this process) p99 {p99_ack:.0} us, p99.9 {p999_ack:.0} us, max {max_ack:.0} us; group commits of {commit_size:.1} events on average"
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
            "processes": args.processes,
            "events": args.events,
            "handlers": args.handlers,
            "concurrency": args.concurrency,
            "publishers": args.publishers,
            "seconds": seconds,
            "events_per_sec": eps,
            "published_per_sec": published,
            "ack_p99_us": p99_ack,
            "mean_commit_events": commit_size,
            "baseline_rows_per_sec": baseline,
            "ratio_to_baseline": baseline.map(|raw| eps / raw),
        });
        println!("{json}");
    }
    Ok(())
}

/// What a run over several processes measured.
struct SharedRun {
    /// Until every subscription's checkpoints reached the head.
    seconds: f64,
    /// Until the last process had every publish acknowledged.
    publish_seconds: f64,
    /// This process's p99, p99.9 and max publish -> ack, in µs.
    ack_us: [f64; 3],
    /// This process's events per group commit, on average.
    commit_size: f64,
}

/// The bench processes other than this one, and what they print.
struct Joined {
    children: Vec<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Joined {
    /// Starts `n` copies of this bench on `url`, each with its share of the events.
    fn spawn(args: &BenchArgs, url: &str, n: usize) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let (tx, lines) = std::sync::mpsc::channel();
        let mut children = Vec::new();
        for k in 1..=n as u64 {
            let share = actorbus::baseline::publisher_share(args.events, n as u64 + 1, k);
            let mut command = std::process::Command::new(std::env::current_exe()?);
            command.args(["bench", "--mode", "postgres", "--join", url]);
            for (flag, value) in [
                ("--events", share.to_string()),
                ("--handlers", args.handlers.to_string()),
                ("--concurrency", args.concurrency.to_string()),
                ("--streams", args.streams.to_string()),
                ("--work-us", args.work_us.to_string()),
                ("--publishers", args.publishers.to_string()),
            ] {
                command.args([flag, &value]);
            }
            if let Some(threads) = args.handler_threads {
                command.args(["--handler-threads", &threads.to_string()]);
            }
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting a bench process")?;
            let stdout = child.stdout.take().context("its output")?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(line);
                }
            });
            children.push(child);
        }
        Ok(Self { children, lines })
    }

    /// Waits (without blocking the arbiter: this process's actors run on it) for one line
    /// starting with `prefix` from each process; answers their rests.
    async fn each(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while found.len() < self.children.len() {
            match self.lines.try_recv() {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        found.push(rest.trim().to_owned());
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "a bench process stopped answering"
                    );
                    actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    anyhow::bail!("a bench process ended before it said `{prefix}`")
                }
            }
        }
        Ok(found)
    }

    /// Tells every process to go on (one line on its stdin).
    fn tell(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        for child in &mut self.children {
            let stdin = child.stdin.as_mut().context("its input")?;
            writeln!(stdin, "go")?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// Closes their stdin (they shut down) and waits for them.
    fn finish(mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for mut child in self.children.drain(..) {
            anyhow::ensure!(child.wait()?.success(), "a bench process failed");
        }
        Ok(())
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This process and `--processes - 1` copies of it publish together; the run ends when
/// every subscription's checkpoints (read from the store) reach the head.
fn shared_run(args: &BenchArgs, url: &str) -> anyhow::Result<SharedRun> {
    let mut joined = Joined::spawn(args, url, args.processes - 1)?;
    let own = actorbus::baseline::publisher_share(args.events, args.processes as u64, 0);
    let store = std::sync::Arc::new(actorbus::Store::open_url(url)?);
    let run = actix::System::new().block_on(async {
        let (bus, _seen) = super::counting_bus(args, EventBus::builder().postgres(url), 0.0)?;
        joined.each("ready").await?;
        spread(&store, args).await?;
        joined.tell()?;
        let start = std::time::Instant::now();
        let (mut publish_seconds, ack_us) =
            super::sqlite::publish_shares(&bus, own, args.publishers, args.streams).await?;
        for seconds in joined.each("published").await? {
            publish_seconds = publish_seconds.max(seconds.parse().unwrap_or(0.0));
        }
        // Checkpoints are written every 200 ms: the end is within that of the last one. The
        // head and the checkpoints only (no counting of the log), off this arbiter, which
        // this process's router runs on.
        let partitions = args.handlers * args.concurrency;
        let (events, concurrency) = (args.events, args.concurrency as u32);
        loop {
            let store = std::sync::Arc::clone(&store);
            let done = actix_rt::task::spawn_blocking(move || {
                let head = store.head()?;
                let caught_up = store
                    .checkpoints()?
                    .iter()
                    .filter(|c| c.handler.starts_with("bench-") && c.partitions == concurrency)
                    .filter(|c| c.position >= head)
                    .count();
                Ok::<_, actorbus::Error>(head >= events && caught_up == partitions)
            })
            .await??;
            if done {
                break;
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let seconds = start.elapsed().as_secs_f64();
        let stats = bus.stats();
        bus.shutdown(std::time::Duration::from_secs(3600)).await?;
        Ok::<_, anyhow::Error>(SharedRun {
            seconds,
            publish_seconds,
            ack_us,
            commit_size: stats.published as f64 / stats.commits.max(1) as f64,
        })
    })?;
    joined.finish()?;
    Ok(run)
}

/// Waits until every process is a live member and the partitions are spread over them (each
/// owning its round-robin share, within one per subscription): the run measures the shared
/// steady state, not the hand-overs of processes joining one after another.
async fn spread(store: &std::sync::Arc<actorbus::Store>, args: &BenchArgs) -> anyhow::Result<()> {
    let partitions = (args.handlers * args.concurrency) as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let store = std::sync::Arc::clone(store);
        let running = actix_rt::task::spawn_blocking(move || store.running()).await??;
        let owned: Vec<u64> = running.iter().filter_map(|r| r.partitions).collect();
        let (least, most) = (owned.iter().min(), owned.iter().max());
        if owned.len() == args.processes
            && owned.iter().sum::<u64>() == partitions
            && least
                .zip(most)
                .is_some_and(|(l, m)| m - l <= args.handlers as u64)
        {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the partitions were not spread over the {} processes within a minute: {owned:?}",
            args.processes
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A copy's part of a shared run: build the bus, say `ready`, wait for `go`, publish its
/// share, say `published <seconds>`, then handle what it claims until its stdin closes.
fn join(args: &BenchArgs, url: &str) -> anyhow::Result<()> {
    actix::System::new().block_on(async {
        let (bus, _seen) = super::counting_bus(args, EventBus::builder().postgres(url), 0.0)?;
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let (seconds, _) =
            super::sqlite::publish_shares(&bus, args.events, args.publishers, args.streams).await?;
        println!("published {seconds}");
        // Blocking the arbiter here is fine for the publisher, not for the handlers: wait on
        // a thread instead.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut rest = String::new();
            while std::io::stdin().read_line(&mut rest).unwrap_or(0) > 0 {}
            let _ = tx.send(());
        });
        let _ = rx.await;
        bus.shutdown(std::time::Duration::from_secs(3600)).await?;
        Ok(())
    })
}
