//! `actorbus demo`: one error line when it fails, and a drained stop on SIGTERM or SIGINT.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn a_failing_demo_prints_one_line_unless_rust_log_asks_for_more() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db = path(db);
    ok(&["demo", "--db", db, "--events", "300", "--quiet"]);
    // Another program makes every further append fail.
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_more BEFORE INSERT ON events
             BEGIN SELECT RAISE(ABORT, 'no more events'); END;",
        )
        .unwrap();
    let more = ["demo", "--db", db, "--events", "600", "--quiet"];
    let run = actorbus(&more);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr.starts_with("actorbus: ") && run.stderr.contains("no more events"),
        "{:?}",
        run.stderr
    );

    // Logs the user asks for are printed as they happen, before the error line.
    let run = output(command(&more).env("RUST_LOG", "error"));
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.len() >= 2, "{:?}", run.stderr);
    assert!(lines[0].contains("ERROR"), "{:?}", run.stderr);
    assert!(lines.last().unwrap().starts_with("actorbus: "));
    assert_eq!(stored_events(Path::new(db)), 300);
}

#[test]
fn a_demo_stopped_by_sigterm_drains_reports_and_exits_143() {
    interrupt_the_demo("-TERM", 143);
}

#[test]
fn a_demo_stopped_by_sigint_drains_reports_and_exits_130() {
    interrupt_the_demo("-INT", 130);
}
