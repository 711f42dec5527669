//! `actorbus replay`, `stats` and `migrate`.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn replay_moves_the_checkpoint_and_the_next_bus_sees_every_event_again() {
    let tmp = fixture();
    let db = tmp.path();
    let out = ok(&["replay", "--db", path(db), "--handler", "recorder"]);
    assert!(out.contains(&format!("checkpoint {EVENTS} -> 0")), "{out}");
    assert!(out.contains("moved 1 checkpoint(s)"), "{out}");
    let stats = json(&["stats", "--db", path(db), "--json"]);
    let recorder = stats["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "recorder")
        .unwrap();
    assert_eq!(recorder["checkpoint"], 0);
    assert_eq!(recorder["lag"], EVENTS);

    let seen = run_bus_until(db, "recorder handles every event again", |s| {
        s.recorder().len() as u64 >= ORDERS
    });
    assert_eq!(seen.recorder(), (0..ORDERS).collect::<Vec<_>>());
    // Only the replayed handler went back.
    assert_eq!(seen.picky(), Vec::<u64>::new());

    let out = ok(&[
        "replay",
        "--db",
        path(db),
        "--handler",
        "recorder",
        "--from",
        "8",
    ]);
    assert!(out.contains(&format!("checkpoint {EVENTS} -> 8")), "{out}");
    let past = fails(&[
        "replay",
        "--db",
        path(db),
        "--handler",
        "recorder",
        "--from",
        "12",
    ]);
    assert!(past.contains("past the head"), "{past}");
}

#[test]
fn stats_reports_counts_checkpoints_lag_and_dead_letters() {
    let tmp = fixture();
    let db = tmp.path();
    let stats = json(&["stats", "--db", path(db), "--json"]);
    assert_eq!(stats["events"], EVENTS);
    assert_eq!(stats["streams"], 3);
    assert_eq!(stats["head"], EVENTS);
    assert_eq!(stats["schema_version"], current_schema_version());
    let handlers = stats["handlers"].as_array().unwrap();
    assert_eq!(handlers.len(), 2);
    assert_eq!(handlers[0]["name"], "picky");
    assert_eq!(handlers[0]["dead_letters"], 2);
    assert_eq!(handlers[1]["name"], "recorder");
    assert_eq!(handlers[1]["dead_letters"], 0);
    for h in handlers {
        assert_eq!(h["checkpoint"], EVENTS);
        assert_eq!(h["lag"], 0);
    }

    let text = ok(&["stats", "--db", path(db)]);
    assert!(text.contains(&format!("events   {EVENTS}")), "{text}");
    assert!(text.contains("streams  3"), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("HANDLER"))
        .expect("a handler table");
    for column in ["CHECKPOINT", "LAG", "DEAD LETTERS"] {
        assert!(header.contains(column), "{header}");
    }
    let picky = text.lines().find(|l| l.starts_with("picky")).unwrap();
    assert_eq!(
        picky.split_whitespace().collect::<Vec<_>>(),
        ["picky", "11", "0", "2"]
    );
}

#[test]
fn migrate_creates_a_store_and_is_idempotent() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let version = current_schema_version();
    let out = ok(&["migrate", "--db", path(db)]);
    assert!(out.contains(&format!("schema version {version}")), "{out}");
    assert!(db.is_file());
    let out = ok(&["migrate", "--db", path(db)]);
    assert!(out.contains(&format!("schema version {version}")), "{out}");
    let stats = json(&["stats", "--db", path(db), "--json"]);
    assert_eq!(
        (
            stats["events"].as_u64(),
            stats["handlers"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    let nowhere = tmp.file("missing-dir").join("new.db");
    let msg = fails(&["migrate", "--db", path(&nowhere)]);
    assert!(msg.contains("missing-dir"), "{msg}");
    assert!(!nowhere.parent().unwrap().exists());
}
