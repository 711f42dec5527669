//! Every command: `--help`, usage errors (exit 2), and refused input (a missing store, a file
//! that is not one, a newer schema, an unknown handler) left untouched.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn every_subcommand_and_flag_has_help() {
    let commands: &[&[&str]] = &[
        &["events"],
        &["events", "list"],
        &["events", "tail"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "redrive"],
        &["dlq", "purge"],
        &["replay"],
        &["stats"],
        &["migrate"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = ok(&args);
        assert!(out.contains("Usage: actorbus"), "{args:?}: {out}");
        assert!(out.lines().next().is_some_and(|l| !l.trim().is_empty()));
        if command.len() == 2 || ["replay", "stats", "migrate"].contains(&command[0]) {
            assert!(out.contains("--db <PATH>"), "{args:?}: {out}");
        }
        // Every option line carries a description after its flag.
        for line in out.lines().filter(|l| l.trim_start().starts_with('-')) {
            let parts: Vec<&str> = line.trim().split("  ").filter(|p| !p.is_empty()).collect();
            assert!(parts.len() >= 2, "{args:?}: no help for `{line}`");
        }
    }
}

#[test]
fn usage_errors_exit_with_code_2_and_create_nothing() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db = path(db);
    usage_error(&["events", "list"]);
    usage_error(&["events", "list", "--db", db, "--limit", "many"]);
    usage_error(&["events", "tail", "--db", db, "--after", "3"]);
    usage_error(&["dlq", "show", "--db", db]);
    usage_error(&["dlq", "show", "--db", db, "first"]);
    usage_error(&["dlq", "purge", "--db", db, "--force"]);
    usage_error(&["replay", "--db", db]);
    usage_error(&[
        "replay",
        "--db",
        db,
        "--handler",
        "recorder",
        "--from",
        "-1",
    ]);
    usage_error(&["stats"]);
    usage_error(&["migrate"]);
    assert!(files(tmp.dir()).is_empty());
}

#[test]
fn a_missing_store_is_an_error_and_is_not_created() {
    let tmp = TempStore::named("typo.db");
    let db = tmp.path();
    for command in every_command() {
        let msg = fails(&with_db(&command, path(db)));
        assert!(msg.contains("typo.db"), "{command:?}: {msg}");
        assert!(files(tmp.dir()).is_empty(), "{command:?} created a file");
    }
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_as_it_was() {
    let tmp = TempStore::named("notes.txt");
    let notes = tmp.path();
    std::fs::write(notes, "these are my notes, not a database\n".repeat(200)).unwrap();
    let empty = tmp.file("empty.db");
    std::fs::write(&empty, "").unwrap();
    let before = files(tmp.dir());
    let mut commands = every_command();
    commands.push(vec!["migrate", "--db", "{db}"]);
    for command in &commands {
        let msg = fails(&with_db(command, path(notes)));
        assert!(msg.contains("not a SQLite database"), "{command:?}: {msg}");
        assert_eq!(files(tmp.dir()), before, "{command:?} changed a file");
    }
    // An empty file would be taken for a new database: only `migrate` may write into it.
    for command in &commands[..commands.len() - 1] {
        let msg = fails(&with_db(command, path(&empty)));
        assert!(msg.contains("empty"), "{command:?}: {msg}");
        assert_eq!(files(tmp.dir()), before, "{command:?} changed a file");
    }
}

#[test]
fn a_store_with_a_newer_schema_is_refused_and_left_as_it_was() {
    let tmp = newer_schema_store();
    let db = tmp.path();
    let before = data_files(tmp.dir());
    let mut commands = every_command();
    commands.push(vec!["migrate", "--db", "{db}"]);
    for command in &commands {
        let msg = fails(&with_db(command, path(db)));
        assert!(msg.contains("schema version 99"), "{command:?}: {msg}");
        assert_eq!(data_files(tmp.dir()), before, "{command:?} changed a file");
    }
}

#[test]
fn an_unknown_handler_is_an_error_and_changes_nothing() {
    let tmp = fixture();
    let db = tmp.path();
    let before = data_files(tmp.dir());
    let commands: &[&[&str]] = &[
        &["dlq", "list", "--handler", "shipper"],
        &["dlq", "list", "--handler", "shipper", "--json"],
        &["dlq", "redrive", "--handler", "shipper"],
        &["dlq", "purge", "--handler", "shipper"],
        &["dlq", "purge", "--handler", "shipper", "--yes"],
        &["replay", "--handler", "shipper"],
        &["replay", "--handler", "shipper", "--from", "3"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--db", path(db)]);
        let msg = fails(&args);
        assert!(
            msg.contains("no handler named `shipper`"),
            "{args:?}: {msg}"
        );
        assert!(msg.contains("picky, recorder"), "{args:?}: {msg}");
        assert_eq!(data_files(tmp.dir()), before, "{args:?} changed a file");
    }
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_not_an_error() {
    // `actorbus bench ... | head -1`: stdout is closed before the summary is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_actorbus"))
        .args(["bench", "--events", "1000", "--no-baseline"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn positions_beyond_the_largest_sqlite_integer_are_usage_errors() {
    let tmp = fixture();
    let db = tmp.path();
    let db = path(db);
    let before = data_files(tmp.dir());
    for position in ["9223372036854775808", "18446744073709551615"] {
        usage_error(&["events", "list", "--db", db, "--after", position]);
        usage_error(&[
            "replay",
            "--db",
            db,
            "--handler",
            "recorder",
            "--from",
            position,
        ]);
    }
    assert_eq!(data_files(tmp.dir()), before);
    // The largest position there can be: nothing after it.
    let none = ok(&[
        "events",
        "list",
        "--db",
        db,
        "--after",
        "9223372036854775807",
    ]);
    assert_eq!(none.trim(), "no events");
    let all = ok(&[
        "events",
        "list",
        "--db",
        db,
        "--limit",
        "18446744073709551615",
    ]);
    assert_eq!(positions(&all), (1..=EVENTS).collect::<Vec<_>>());
}

#[test]
fn counts_and_rates_out_of_range_are_usage_errors_and_create_nothing() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db = path(db);
    for (option, value) in [
        ("--events", "0"),
        ("--handlers", "0"),
        ("--concurrency", "0"),
        ("--streams", "0"),
        ("--publishers", "0"),
        ("--baseline-batch", "0"),
    ] {
        let msg = usage_error(&["bench", "--mode", "sqlite", "--db", db, option, value]);
        assert!(msg.contains(option), "{msg}");
    }
    for option in ["--fail-rate", "--panic-rate"] {
        for value in ["2", "-0.1", "NaN", "inf"] {
            let msg = usage_error(&["demo", "--db", db, "--quiet", option, value]);
            assert!(msg.contains(option), "{msg}");
        }
    }
    assert!(files(tmp.dir()).is_empty());

    let bench = ok(&["bench", "--help"]);
    for option in ["--events", "--streams", "--baseline-batch"] {
        let line = help_for(&bench, option);
        assert!(line.contains("at least 1"), "{line}");
    }
    let demo = ok(&["demo", "--help"]);
    for option in ["--fail-rate", "--panic-rate"] {
        let line = help_for(&demo, option);
        assert!(line.contains("0 to 1"), "{line}");
    }
}
