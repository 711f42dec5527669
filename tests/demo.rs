//! The demo as a user runs it: to completion, and killed with SIGKILL twice and resumed; the
//! store then holds exactly the requested events and `actorbus check` finds it consistent.

mod common;

use common::{stored_events, TempStore};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_actorbus");

fn actorbus(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn the_demo_completes_with_no_ordering_violation_and_a_consistent_store() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db_arg = db.to_str().unwrap();
    let out = actorbus(&["demo", "--db", db_arg, "--events", "3000", "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ordering violations   0"), "{stdout}");
    assert!(
        stdout.contains("events in store       3000 of 3000"),
        "{stdout}"
    );
    assert_eq!(stored_events(db), 3000);

    let check = actorbus(&["check", "--db", db_arg]);
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "consistent");
    assert!(check.status.success());

    // Running it again on a complete store adds nothing.
    let again = actorbus(&["demo", "--db", db_arg, "--events", "3000", "--quiet"]);
    assert!(again.status.success());
    assert_eq!(stored_events(db), 3000);
}

#[test]
fn a_demo_killed_twice_resumes_to_exactly_the_requested_events() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db_arg = db.to_str().unwrap();
    let total = 20_000;
    for kill_after in [2_000, 9_000] {
        let mut child = Command::new(BIN)
            .args([
                "demo",
                "--db",
                db_arg,
                "--events",
                &total.to_string(),
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored_events(db) < kill_after {
            assert!(Instant::now() < deadline, "the demo made no progress");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the demo ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = stored_events(db);
        assert!(n >= kill_after && n < total, "{n}");
    }
    let out = actorbus(&[
        "demo",
        "--db",
        db_arg,
        "--events",
        &total.to_string(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resuming:"), "{stdout}");
    assert!(stdout.contains("ordering violations   0"), "{stdout}");
    assert_eq!(stored_events(db), total);

    let check = actorbus(&["check", "--db", db_arg]);
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "consistent",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn the_demo_refuses_a_store_that_is_not_one_and_leaves_it_untouched() {
    let tmp = TempStore::named("notes.txt");
    let path = tmp.path();
    std::fs::write(path, "not a database").unwrap();
    let out = actorbus(&["demo", "--db", path.to_str().unwrap(), "--events", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "not a database");
}

#[test]
fn check_beside_a_running_demo_finds_the_store_consistent_every_time() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let db_arg = db.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--db", db_arg, "--events", "2000000", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checks = 0;
    let mut last_seen = 0;
    // Each check reads while the demo publishes, projects and checkpoints.
    while checks < 8 {
        assert!(Instant::now() < deadline, "the demo made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the demo ended early");
        let now = stored_events(db);
        if now <= last_seen || now < 1000 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        last_seen = now;
        let check = actorbus(&["check", "--db", db_arg]);
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            "consistent",
            "check {checks} at {now} events: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        checks += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
