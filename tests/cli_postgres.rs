//! The operator commands on a PostgreSQL store (feature `postgres`): every subcommand that
//! takes `--db` takes a `postgres://` URL, with the same output as on SQLite.

#![cfg(feature = "postgres")]

mod cli_support;
mod common;

use cli_support::*;
use common::postgres::PgDatabase;

#[test]
fn every_operator_command_takes_a_postgres_url() {
    let Some(db) = PgDatabase::fresh() else {
        return;
    };
    let url = db.url.as_str();
    let created = ok(&["migrate", "--db", url]);
    assert!(created.contains("schema version"), "{created}");
    fill(actorbus::EventBus::builder().postgres(url));

    let stats = json(&["stats", "--db", url, "--json"]);
    assert_eq!(stats["events"], EVENTS, "{stats}");
    let picky = stats["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "picky")
        .unwrap();
    assert_eq!(picky["dead_letters"], 2, "{stats}");
    assert_eq!(picky["lag"], 0, "{stats}");

    let events = json(&[
        "events", "list", "--db", url, "--stream", "order-1", "--json",
    ]);
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["payload"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![1, 4, 7], "{events}");

    assert_eq!(ok(&["check", "--db", url]).trim(), "consistent");

    let letters = json(&["dlq", "list", "--db", url, "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    let id = letters[0]["id"].as_u64().unwrap().to_string();
    assert!(ok(&["dlq", "show", "--db", url, &id]).contains("cannot ship order 0 (seq 3)"));
    assert!(ok(&["dlq", "redrive", "--db", url, "--handler", "picky"]).contains('2'));
    // The next bus hands them back (the handler is fixed now) and they go.
    let seen = run_with(url);
    assert_eq!(seen.picky(), vec![3, 7]);
    assert_eq!(
        json(&["dlq", "list", "--db", url, "--json"]),
        Value::Array(vec![])
    );

    // Replay is refused while a bus runs on the database, and moves checkpoints otherwise.
    let replay = [
        "replay",
        "--db",
        url,
        "--handler",
        "recorder",
        "--from",
        "0",
    ];
    actix::System::new().block_on(async {
        let bus = bus_with(
            actorbus::EventBus::builder().postgres(url),
            false,
            &Seen::default(),
        );
        let refused = fails(&replay);
        // stats names the running process and its share: both subscriptions' partition.
        let stats = json(&["stats", "--db", url, "--json"]);
        let running = stats["running"].as_array().unwrap();
        assert_eq!(running.len(), 1, "{stats}");
        assert_eq!(running[0]["partitions"], 2, "{stats}");
        assert!(ok(&["stats", "--db", url]).contains("(2 partitions)"));
        assert!(refused.contains("another bus is running"), "{refused}");
        bus.shutdown(PATIENCE).await.unwrap();
    });
    ok(&replay);
    assert_eq!(run_with(url).recorder(), (0..ORDERS).collect::<Vec<_>>());

    // The password never shows.
    let wrong = fails(&["stats", "--db", "postgres://me:s3cret@127.0.0.1:1/nothing"]);
    assert!(!wrong.contains("s3cret"), "{wrong}");
}

/// Starts a bus (handlers fixed) on `url`, lets it catch up, shuts it down.
fn run_with(url: &str) -> Seen {
    let seen = Seen::default();
    actix::System::new().block_on(async {
        let bus = bus_with(actorbus::EventBus::builder().postgres(url), false, &seen);
        bus.shutdown(PATIENCE).await.expect("the bus drains");
    });
    seen
}

/// The `handled` plus `dead` columns of a subscription in a demo's summary: the events it
/// is done with.
fn handled(summary: &str, subscription: &str) -> u64 {
    let row: Vec<u64> = summary
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{subscription} ")))
        .unwrap_or_else(|| panic!("no `{subscription}` row in:\n{summary}"))
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    row[0] + row[3]
}

#[test]
fn demos_in_three_processes_share_one_database() {
    let Some(db) = PgDatabase::fresh() else {
        return;
    };
    let demos: Vec<_> = (0..3)
        .map(|_| {
            // 10 blocks of 64 orders, each placed, paid, then shipped or cancelled.
            command(&["demo", "--db", &db.url, "--events", "1920", "--quiet"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut summaries: Vec<String> = demos
        .into_iter()
        .map(|d| {
            let out = d.wait_with_output().unwrap();
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("ordering violations   0"), "{stdout}");
            assert!(stdout.contains("1920 of 1920 by this demo"), "{stdout}");
            stdout
        })
        .collect();
    // A demo that leaves hands its partitions to those still running; what was published
    // after the last one left is handled by the next bus to start: here one more demo,
    // publishing nothing.
    let last = ok(&["demo", "--db", &db.url, "--events", "0", "--quiet"]);
    assert!(last.contains("ordering violations   0"), "{last}");
    summaries.push(last);
    // Each event was applied once, by one process's projections: the read model is the
    // fold of the log (every order finished, stock per product as its orders say).
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.connect();
    let mut number = |sql: &str| diesel::sql_query(sql).get_result::<N>(&mut conn).unwrap().n;
    assert_eq!(number("SELECT count(*) AS n FROM demo_orders"), 3 * 640);
    assert_eq!(
        number(
            "SELECT count(*) AS n FROM demo_orders WHERE status NOT IN ('shipped', 'cancelled')"
        ),
        0
    );
    assert_eq!(
        number("SELECT count(*) AS n FROM demo_checker WHERE last_version = 3"),
        3 * 640
    );
    assert_eq!(number("SELECT count(*) AS n FROM demo_violations"), 0);
    assert_eq!(
        number(
            "SELECT count(*) AS n FROM (SELECT sku, \
               sum(CASE WHEN status IN ('placed', 'paid') THEN qty ELSE 0 END) AS r, \
               sum(CASE WHEN status = 'shipped' THEN qty ELSE 0 END) AS s \
             FROM demo_orders GROUP BY sku) AS f FULL JOIN demo_inventory i USING (sku) \
             WHERE coalesce(f.r, 0) <> coalesce(i.reserved, 0) \
                OR coalesce(f.s, 0) <> coalesce(i.shipped, 0)"
        ),
        0,
        "stock per product is the fold of the orders"
    );
    // What each demo handled (or dead-lettered) is its share; together at least every event
    // (a plain handler may see an event of a hand-over again, after a lapsed lease).
    for subscription in ["inventory", "order-checker", "notifier", "auditor"] {
        let total: u64 = summaries.iter().map(|s| handled(s, subscription)).sum();
        assert!(total >= 3 * 1920, "{subscription}: {summaries:?}");
    }
    assert_eq!(ok(&["check", "--db", &db.url]).trim(), "consistent");
    let stats = json(&["stats", "--db", &db.url, "--json"]);
    assert_eq!(stats["events"], 3 * 1920, "{stats}");
}
