//! `actorbus bench`: reports, baselines, `--fail-rate`, and its own files.

mod cli_support;
mod common;

use cli_support::*;

#[test]
fn sqlite_bench_leaves_a_consistent_store_and_reports_both_baselines() {
    let tmp = TempStore::named("bench.db");
    let db = tmp.path();
    let out = ok(&[
        "bench",
        "--mode",
        "sqlite",
        "--events",
        "3000",
        "--publishers",
        "16",
        "--db",
        path(db),
        "--json",
    ]);
    let last = out.lines().last().expect("a summary");
    let report: Value = serde_json::from_str(last).unwrap();
    assert_eq!(report["mode"], "sqlite");
    assert_eq!(report["events"], 3000);
    assert_eq!(report["publishers"], 16);
    let eps = report["events_per_sec"].as_f64().unwrap();
    for (rate, ratio) in [
        ("baseline_rows_per_sec", "ratio_to_baseline"),
        ("per_event_index_rows_per_sec", "ratio_to_per_event_index"),
    ] {
        let base = report[rate]
            .as_f64()
            .unwrap_or_else(|| panic!("{rate}: {report}"));
        let r = report[ratio].as_f64().unwrap();
        assert!(
            (r - eps / base).abs() < 1e-9,
            "{ratio} is events/s over {rate}"
        );
    }
    // The CPU time of the writer's thread per event, beside the baseline's per row (Linux).
    for cpu in ["writer_cpu_us_per_event", "baseline_cpu_us_per_row"] {
        let us = report[cpu]
            .as_f64()
            .unwrap_or_else(|| panic!("{cpu}: {report}"));
        assert!(us > 0.0 && us < 10_000.0, "{cpu}: {report}");
    }
    assert!(out.contains("writer thread CPU"), "{out}");
    // What the bench published is stored once, indexed, and checks out.
    let stats = json(&["stats", "--db", path(db), "--json"]);
    assert_eq!(stats["events"], 3000);
    assert_eq!(ok(&["check", "--db", path(db)]).trim(), "consistent");
}

#[test]
fn sqlite_bench_with_a_failing_subscription_reports_its_publish_rate_beside_one_without() {
    let tmp = TempStore::named("bench.db");
    let db = tmp.path();
    let out = ok(&[
        "bench",
        "--mode",
        "sqlite",
        "--events",
        "2000",
        "--publishers",
        "8",
        "--fail-rate",
        "0.2",
        "--no-baseline",
        "--db",
        path(db),
        "--json",
    ]);
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let with = report["published_per_sec"].as_f64().unwrap();
    let without = report["published_per_sec_without_failures"]
        .as_f64()
        .unwrap();
    let ratio = report["ratio_to_without_failures"].as_f64().unwrap();
    assert!((ratio - with / without).abs() < 1e-9, "{report}");
    assert!(out.contains("failing 20% of its attempts"), "{out}");
    // The failing subscription retried until every event was handled: the store is drained
    // and consistent; the reference run left nothing behind.
    let stats = json(&["stats", "--db", path(db), "--json"]);
    assert_eq!(stats["events"], 2000);
    assert!(
        stats["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["lag"] == 0 && h["dead_letters"] == 0),
        "{stats}"
    );
    assert_eq!(ok(&["check", "--db", path(db)]).trim(), "consistent");
    let mut left: Vec<_> = files(tmp.dir()).into_keys().collect();
    left.sort();
    assert!(left.iter().all(|f| f.starts_with("bench.db")), "{left:?}");
}

#[test]
fn bench_work_us_must_be_a_finite_number_of_microseconds_up_to_a_second() {
    for work in ["NaN", "inf", "-inf", "-1", "1e300", "1000001"] {
        let msg = usage_error(&[
            "bench",
            "--events",
            "10",
            "--no-baseline",
            &format!("--work-us={work}"),
        ]);
        assert!(msg.contains("--work-us"), "{work}: {msg}");
    }
    let help = help_for(&ok(&["bench", "--help"]), "--work-us");
    assert!(help.contains("0 to 1000000"), "{help}");
    ok(&[
        "bench",
        "--events",
        "10",
        "--no-baseline",
        "--work-us",
        "0.5",
    ]);
}

#[test]
fn bench_caps_the_actors_and_publishers_it_starts() {
    for (option, most) in [
        ("--concurrency", 4096),
        ("--handlers", 1024),
        ("--publishers", 4096),
    ] {
        for value in [most + 1, 100_000_000] {
            let msg = usage_error(&[
                "bench",
                "--mode",
                "sqlite",
                "--events",
                "10",
                "--no-baseline",
                option,
                &value.to_string(),
            ]);
            assert!(msg.contains(option), "{msg}");
        }
        assert!(
            help_for(&ok(&["bench", "--help"]), option).contains(&format!("1 to {most}")),
            "{option}"
        );
    }
    ok(&[
        "bench",
        "--events",
        "10",
        "--no-baseline",
        "--handlers",
        "1",
        "--concurrency",
        "4096",
    ]);
}

#[test]
fn bench_refuses_to_overwrite_a_baseline_file_it_did_not_write() {
    let tmp = TempStore::named("mine.db");
    let db = tmp.path();
    let baseline = tmp.file("mine.baseline.db");
    std::fs::write(&baseline, "somebody's data").unwrap();
    let bench = |no_baseline: bool| {
        let mut args = vec![
            "bench",
            "--mode",
            "sqlite",
            "--events",
            "200",
            "--db",
            path(db),
        ];
        if no_baseline {
            args.push("--no-baseline");
        }
        args
    };
    let msg = fails(&bench(false));
    assert!(msg.contains("mine.baseline.db"), "{msg}");
    assert_eq!(
        files(tmp.dir()).keys().collect::<Vec<_>>(),
        ["mine.baseline.db"]
    );
    assert_eq!(std::fs::read(&baseline).unwrap(), b"somebody's data");
    ok(&bench(true));
    assert_eq!(std::fs::read(&baseline).unwrap(), b"somebody's data");

    // Once the file is gone, the bench writes its baseline there and deletes it afterwards.
    std::fs::remove_file(&baseline).unwrap();
    ok(&bench(false));
    assert!(!baseline.exists());
    assert!(files(tmp.dir())
        .keys()
        .all(|name| name.starts_with("mine.db")));
    let help = help_for(&ok(&["bench", "--help"]), "--db");
    assert!(help.contains(".baseline.db"), "{help}");
}

#[test]
fn sqlite_bench_without_db_deletes_its_temporary_database() {
    let tmp = TempStore::new();
    for baseline in [true, false] {
        let mut args = vec!["bench", "--mode", "sqlite", "--events", "200"];
        if !baseline {
            args.push("--no-baseline");
        }
        let run = output(command(&args).env("TMPDIR", tmp.dir()));
        assert_eq!(run.code, Some(0), "{run:?}");
        let left = tmp.file_names();
        assert!(left.is_empty(), "{args:?} left {left:?} in the temp dir");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_bench_over_two_processes_reports_its_rate_beside_raw_inserts_and_drops_its_databases() {
    use diesel::prelude::*;
    // The fresh database serves as the server's maintenance database here.
    let Some(server) = common::postgres::PgDatabase::fresh() else {
        return;
    };
    let out = ok(&[
        "bench",
        "--mode",
        "postgres",
        "--events",
        "3000",
        "--publishers",
        "32",
        "--concurrency",
        "4",
        "--processes",
        "2",
        "--postgres",
        &server.url,
        "--json",
    ]);
    let report: Value = serde_json::from_str(out.lines().last().expect("a summary")).unwrap();
    assert_eq!(report["mode"], "postgres");
    assert_eq!(report["events"], 3000);
    assert_eq!(report["processes"], 2);
    let eps = report["events_per_sec"].as_f64().unwrap();
    let base = report["baseline_rows_per_sec"].as_f64().unwrap();
    let ratio = report["ratio_to_baseline"].as_f64().unwrap();
    assert!((ratio - eps / base).abs() < 1e-9, "{report}");
    #[derive(QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let left = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_database WHERE datname LIKE 'actorbus\\_bench\\_%'",
    )
    .get_result::<Left>(&mut server.connect())
    .unwrap();
    assert_eq!(left.n, 0, "the bench dropped the databases it created");
}
