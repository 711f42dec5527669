//! `actorbus events list|tail`: tables, JSON, filters, and `--follow`.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn events_list_prints_a_table_oldest_first_and_filters_it() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let table = ok(&["events", "list", "--db", db]);
    let header = table.lines().next().unwrap();
    for column in [
        "POSITION", "STREAM", "VERSION", "TYPE", "RECORDED", "PAYLOAD",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(positions(&table), (1..=EVENTS).collect::<Vec<_>>());
    // The long payload is cut in the table.
    let note = table.lines().nth(1).unwrap();
    assert!(
        note.contains("note.added") && note.ends_with("..."),
        "{note}"
    );
    assert!(!note.contains(&long_note()));
    // Columns are aligned: every row's TYPE cell starts where the header's does.
    let type_at = header.find("TYPE").unwrap();
    for row in table.lines().skip(1) {
        assert!(
            row[type_at..].starts_with("note.added") || row[type_at..].starts_with("order.placed"),
            "{row}"
        );
    }

    let order_1 = ok(&["events", "list", "--db", db, "--stream", "order-1"]);
    assert_eq!(positions(&order_1), vec![1, 3, 6, 9]);
    let placed = ok(&["events", "list", "--db", db, "--type", "order.placed"]);
    assert_eq!(positions(&placed), (2..=EVENTS).collect::<Vec<_>>());
    let page = ok(&["events", "list", "--db", db, "--after", "4", "--limit", "3"]);
    assert_eq!(positions(&page), vec![5, 6, 7]);
    let none = ok(&["events", "list", "--db", db, "--stream", "order-404"]);
    assert_eq!(none.trim(), "no events");
    // A page of nothing is a mistake, not an empty result.
    let zero = usage_error(&["events", "list", "--db", db, "--limit", "0"]);
    assert!(zero.contains("not a whole number of at least 1"), "{zero}");
}

#[test]
fn events_list_json_has_every_field_and_the_full_payload() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let all = json(&["events", "list", "--db", db, "--json"]);
    let all = all.as_array().expect("an array of events");
    assert_eq!(all.len() as u64, EVENTS);
    let note = &all[0];
    assert_eq!(note["position"], 1);
    assert_eq!(note["event_type"], "note.added");
    assert_eq!(note["stream_id"], "order-1");
    assert_eq!(note["stream_version"], 1);
    assert_eq!(note["payload"]["text"], long_note());
    let recorded = note["recorded_at"].as_str().unwrap();
    assert!(recorded.len() == 27 && &recorded[10..11] == "T" && recorded.ends_with('Z'));
    assert!(uuid::Uuid::parse_str(note["id"].as_str().unwrap()).is_ok());
    assert_eq!(all[10]["payload"]["seq"], 9);

    let limited = json(&[
        "events",
        "list",
        "--db",
        db,
        "--type",
        "order.placed",
        "--limit",
        "4",
        "--json",
    ]);
    let seqs: Vec<&Value> = limited
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["seq"])
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
}

#[test]
fn events_tail_prints_the_newest_events_oldest_first() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let default = ok(&["events", "tail", "--db", db]);
    assert_eq!(positions(&default), (1..=EVENTS).collect::<Vec<_>>());
    let last = ok(&["events", "tail", "--db", db, "--limit", "3"]);
    assert_eq!(positions(&last), vec![9, 10, 11]);
    let order_0 = ok(&[
        "events", "tail", "--db", db, "--stream", "order-0", "--limit", "2",
    ]);
    assert_eq!(positions(&order_0), vec![8, 11]);
}

#[test]
fn events_tail_follow_prints_events_stored_after_it_started() {
    let tmp = fixture();
    let db = tmp.path();
    let mut child = command(&[
        "events",
        "tail",
        "--db",
        path(db),
        "--type",
        "order.placed",
        "--limit",
        "1",
        "--follow",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(PATIENCE).expect("tail prints a line");
    assert!(next().starts_with("POSITION"));
    assert_eq!(positions(&next()), vec![EVENTS]);

    actix::System::new().block_on(async {
        let bus = EventBus::builder().sqlite(db).build().unwrap();
        bus.publish(NoteAdded {
            order: 2,
            text: "filtered out".into(),
        })
        .await
        .unwrap();
        bus.publish(OrderPlaced { order: 2, seq: 100 })
            .await
            .unwrap();
        bus.shutdown(PATIENCE).await.unwrap();
    });
    // The note (position 12) does not match --type; had it been printed, it would come first.
    let line = next();
    assert_eq!(positions(&line), vec![EVENTS + 2], "{line}");
    assert!(
        line.contains("order.placed") && line.contains(r#""seq":100"#),
        "{line}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
}
