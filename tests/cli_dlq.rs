//! `actorbus dlq list|show|redrive|purge`.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn dlq_list_shows_each_handlers_dead_letters() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let table = ok(&["dlq", "list", "--db", db]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "ID", "HANDLER", "ATTEMPTS", "POSITION", "STREAM", "TYPE", "ERROR",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("picky") && rows[0].contains("cannot ship order 0 (seq 3)"));
    assert!(rows[1].contains("picky") && rows[1].contains("cannot ship order 1 (seq 7)"));

    let letters = json(&["dlq", "list", "--db", db, "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["handler"], "picky");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["redrive_requested"], false);
    assert_eq!(letters[0]["event"]["payload"]["seq"], 3);
    assert_eq!(letters[1]["event"]["position"], 9);

    assert_eq!(
        json(&["dlq", "list", "--db", db, "--handler", "picky", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        json(&["dlq", "list", "--db", db, "--handler", "recorder", "--json"]),
        Value::Array(vec![])
    );
    assert_eq!(
        ok(&["dlq", "list", "--db", db, "--handler", "recorder"]).trim(),
        "no dead letters"
    );
}

#[test]
fn dlq_show_prints_everything_about_one_letter() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let letters = json(&["dlq", "list", "--db", db, "--json"]);
    let id = letters[1]["id"].as_u64().unwrap().to_string();

    let text = ok(&["dlq", "show", "--db", db, &id]);
    for expected in [
        "picky",
        "cannot ship order 1 (seq 7)",
        "order.placed",
        "order-1",
        r#""seq": 7"#,
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    let letter = json(&["dlq", "show", "--db", db, &id, "--json"]);
    assert_eq!(letter, letters[1]);

    let missing = fails(&["dlq", "show", "--db", db, "999"]);
    assert!(missing.contains("999"), "{missing}");
}

#[test]
fn dlq_redrive_hands_the_letters_back_when_a_bus_next_starts() {
    let tmp = fixture();
    let db = tmp.path();
    let out = ok(&["dlq", "redrive", "--db", path(db), "--handler", "picky"]);
    assert_eq!(
        out,
        "2 dead letter(s) of picky will be redriven when the bus next starts\n"
    );
    let letters = json(&["dlq", "list", "--db", path(db), "--json"]);
    assert!(letters
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["redrive_requested"] == true));

    // "picky" is fixed now; its checkpoint is at the head, so only the letters come back.
    let seen = run_bus_until(db, "picky handles its two dead letters", |s| {
        s.picky().len() >= 2
    });
    assert_eq!(seen.picky(), vec![3, 7]);
    assert_eq!(seen.recorder(), Vec::<u64>::new());
    assert_eq!(
        json(&["dlq", "list", "--db", path(db), "--json"]),
        Value::Array(vec![])
    );
    let stats = json(&["stats", "--db", path(db), "--json"]);
    assert!(stats["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["dead_letters"] == 0));
}

#[test]
fn dlq_redrive_without_a_handler_marks_every_handlers_letters() {
    let tmp = fixture();
    let db = tmp.path();
    let out = ok(&["dlq", "redrive", "--db", path(db)]);
    assert_eq!(
        out,
        "2 dead letter(s) of picky will be redriven when the bus next starts\n"
    );
}

#[test]
fn dlq_purge_wants_yes_then_reports_how_many_it_deleted() {
    let tmp = fixture();
    let db = tmp.path();
    let before = data_files(tmp.dir());
    let refused = fails(&["dlq", "purge", "--db", path(db), "--handler", "picky"]);
    assert!(refused.contains("--yes"), "{refused}");
    assert_eq!(data_files(tmp.dir()), before);
    assert_eq!(
        json(&["dlq", "list", "--db", path(db), "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = ok(&[
        "dlq",
        "purge",
        "--db",
        path(db),
        "--handler",
        "picky",
        "--yes",
    ]);
    assert_eq!(out, "deleted 2 dead letter(s) of picky\n");
    assert_eq!(
        json(&["dlq", "list", "--db", path(db), "--json"]),
        Value::Array(vec![])
    );
    let out = ok(&["dlq", "purge", "--db", path(db), "--yes"]);
    assert_eq!(out, "deleted 0 dead letter(s) of every handler\n");
}
