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
    actix::System::new().block_on(async {
        let bus = bus_with(
            actorbus::EventBus::builder().postgres(url),
            false,
            &Seen::default(),
        );
        let refused = fails(&[
            "replay",
            "--db",
            url,
            "--handler",
            "recorder",
            "--from",
            "0",
        ]);
        assert!(refused.contains("another bus is running"), "{refused}");
        bus.shutdown(PATIENCE).await.unwrap();
    });
    ok(&[
        "replay",
        "--db",
        url,
        "--handler",
        "recorder",
        "--from",
        "0",
    ]);
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
