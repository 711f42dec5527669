//! The bus embedded in actix-web (`examples/actix_web.rs`) shuts down cleanly on SIGTERM under
//! load: the server stops, `bus.shutdown` drains, every checkpoint is written (lag 0), and the
//! read model holds every stored order exactly once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actorbus::Store;
use common::TempStore;

/// The example's binary, as `cargo build --example actix_web` makes it (in this test's
/// profile): `cargo test --all-targets` builds examples only as tests.
fn example() -> PathBuf {
    let release = std::env::current_exe()
        .unwrap()
        .components()
        .any(|c| c.as_os_str() == "release");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "actix_web", "--message-format=json"])
        .stderr(Stdio::inherit());
    if release {
        cargo.arg("--release");
    }
    let out = cargo.output().expect("cargo runs");
    assert!(out.status.success(), "building the example failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["target"]["name"] == "actix_web")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the example's executable")
}

/// One HTTP/1.1 request on a fresh connection; the status code, or `None` once the server
/// no longer answers.
fn request(addr: &str, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[test]
fn sigterm_under_load_drains_the_bus_and_flushes_every_checkpoint() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let mut child = Command::new(example())
        .args(["--db", db.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // "listening on http://127.0.0.1:PORT\n"
    let mut first = Vec::new();
    let mut byte = [0u8];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let first = String::from_utf8(first).unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();

    let created = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (addr, created, stop) = (addr.clone(), Arc::clone(&created), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for i in 0.. {
                    let id = c * 1_000_000 + i;
                    let status = request(
                        &addr,
                        "POST",
                        &format!("/orders/{id}"),
                        r#"{"sku":"A-1","qty":2}"#,
                    );
                    match status {
                        Some(201) => {
                            created.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(other) => statuses.push(other),
                        None => break, // the server stopped answering
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                statuses
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while created.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "the service made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the service ended early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The live view is mounted in the service, read-only without a token.
    assert_eq!(request(&addr, "GET", "/bus/api/state", ""), Some(200));
    assert_eq!(request(&addr, "GET", "/bus/", ""), Some(200));
    assert_eq!(
        request(&addr, "POST", "/bus/api/purge?handler=mailer", ""),
        Some(403)
    );
    // Under load: SIGTERM.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let others = client.join().unwrap();
        // 409 never happens (ids are unique); 503 would say the bus refused work.
        assert!(others.iter().all(|s| *s == 503 || *s == 500), "{others:?}");
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(rest.contains("bus drained"), "{rest}\n{stderr}");
    assert!(!stderr.contains("stopped before shutdown"), "{stderr}");

    let store = Store::open(db).unwrap();
    let summary = store.summary().unwrap();
    let acknowledged = created.load(Ordering::SeqCst) as u64;
    assert!(
        summary.events >= acknowledged,
        "{} < {acknowledged}",
        summary.events
    );
    for h in &summary.handlers {
        assert_eq!(
            h.lag, 0,
            "`{}`'s checkpoint was not flushed: {summary:?}",
            h.name
        );
    }
    assert_eq!(store.check().unwrap(), Vec::<String>::new());
    let orders: i64 = store
        .with_connection(|c| {
            use diesel::prelude::*;
            diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM orders")
                .get_result(c)
        })
        .unwrap();
    assert_eq!(
        orders as u64, summary.events,
        "every stored order in the read model once"
    );
    println!(
        "SIGTERM after {acknowledged} acknowledged orders: {} stored, lag 0 for {:?}",
        summary.events,
        summary.handlers.iter().map(|h| &h.name).collect::<Vec<_>>()
    );
}
