//! The live web view as operators use it: `actorbus serve` on a demo store, driven in a
//! headless Chromium, and `/metrics` scraped from `actorbus demo --serve` while it runs.

mod cli_support;
mod common;
mod web_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cli_support::*;
use common::TempStore;
use serde_json::{json, Value};
use web_support::Browser;

const TOKEN: &str = "test-token-7f3a";
const PATIENCE: Duration = Duration::from_secs(120);

/// A free port on 127.0.0.1 (bound, then let go for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; the status and the body.
fn http(method: &str, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let token = token.map_or(String::new(), |t| format!("X-Actorbus-Token: {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{token}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The small answers here are not chunked; a chunked one is only checked for content.
    (status, body.to_owned())
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the server on `port` answers.
fn until_listening(port: u16, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(start.elapsed() < PATIENCE, "the server listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn number(text: &str) -> u64 {
    text.replace(',', "").parse().unwrap_or(0)
}

#[test]
fn the_page_shows_the_handlers_live_and_redrives_only_with_the_token() {
    let tmp = TempStore::new();
    let db = path(tmp.path());
    ok(&[
        "demo", "--db", db, "--events", "4000", "--quiet", "--seed", "7",
    ]);
    let port = free_port();
    let mut serve = command(&["serve", "--db", db, "--addr", &format!("127.0.0.1:{port}")]);
    serve
        .env("ACTORBUS_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut serve = Running(serve.spawn().unwrap());
    until_listening(port, &mut serve.0);
    let mut said = String::new();
    BufReader::new(serve.0.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(
        said.contains(&format!("http://127.0.0.1:{port}/")),
        "{said}"
    );

    let Some(browser) = Browser::start() else {
        return;
    };
    browser.goto(&format!("http://127.0.0.1:{port}/"));
    let rows = |b: &Browser| {
        b.exec(
            "return [...document.querySelectorAll('#handlers tbody tr')].map(r => r.dataset.handler)",
            vec![],
        )
    };
    browser.wait_until("the handlers are shown", PATIENCE, |b| {
        rows(b).as_array().is_some_and(|r| r.len() == 4)
    });
    assert_eq!(
        rows(&browser),
        json!(["auditor", "inventory", "notifier", "order-checker"])
    );
    let cell = |b: &Browser, handler: &str, class: &str| -> u64 {
        let script = "const r = document.querySelector(`#handlers tr[data-handler='${arguments[0]}'] .${arguments[1]}`); return r ? r.textContent : ''";
        number(
            b.exec(script, vec![json!(handler), json!(class)])
                .as_str()
                .unwrap_or(""),
        )
    };
    assert_eq!(cell(&browser, "order-checker", "progress"), 4000);
    assert_eq!(browser.text("#status"), "live");

    // Another demo run on the store publishes more: the page follows without a reload.
    let mut more = command(&[
        "demo", "--db", db, "--events", "30000", "--quiet", "--seed", "7",
    ]);
    more.stdout(Stdio::null()).stderr(Stdio::inherit());
    let mut more = Running(more.spawn().unwrap());
    browser.wait_until(
        "the progress moves while the demo publishes",
        PATIENCE,
        |b| (4000..30000).contains(&cell(b, "order-checker", "progress")),
    );
    assert!(more.0.wait().unwrap().success());
    browser.wait_until("the page shows the whole run", PATIENCE, |b| {
        cell(b, "order-checker", "progress") == 30000
    });
    let letters = cell(&browser, "notifier", "dead-letters");
    assert!(letters > 0, "the demo's notifier gave up on some events");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    browser.screenshot(&screenshot);
    eprintln!("screenshot: {}", screenshot.display());

    // Without the token the button is refused, and nothing changes.
    let redrive = "#handlers tr[data-handler='notifier'] button.redrive";
    browser.click(redrive);
    browser.wait_until("the refusal is shown", PATIENCE, |b| {
        b.text("#message").starts_with("refused (403)")
    });
    assert_eq!(cell(&browser, "notifier", "dead-letters"), letters);
    // With it, the letters are handed back (the next bus on the store redrives them).
    browser.exec(
        "document.getElementById('token').value = arguments[0]",
        vec![json!(TOKEN)],
    );
    browser.click(redrive);
    browser.wait_until("the count drops", PATIENCE, |b| {
        cell(b, "notifier", "dead-letters") == 0
    });
    assert!(browser.text("#message").starts_with("redrive notifier"));
    let waiting = ok(&["dlq", "list", "--db", db, "--json"]);
    let waiting: Value = serde_json::from_str(&waiting).unwrap();
    let requested = waiting.as_array().unwrap().iter();
    assert_eq!(
        requested
            .filter(|l| l["redrive_requested"] == json!(true))
            .count() as u64,
        letters
    );
}

/// The Prometheus text format: each sample's name with its labels, and its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(series.starts_with("actorbus_"), "{line:?}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn metrics_are_scraped_from_a_running_demo() {
    let tmp = TempStore::new();
    let db = path(tmp.path());
    // More events than it publishes while scraped: the view must still be up for the last
    // request, however fast the machine; the test ends it with Ctrl-C, as a user would.
    let (mut demo, port, _) = demo_serving(db, "10000000", Stdio::null());
    until_listening(port, &mut demo.0);

    let scrape = || {
        let (status, body) = http("GET", port, "/metrics", None);
        assert_eq!(status, 200, "{body}");
        samples(&body)
    };
    // The first scrape that follows a commit.
    let start = Instant::now();
    let first = loop {
        let first = scrape();
        if first.get("actorbus_commit_seconds_count") >= Some(&1.0) {
            break first;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "a commit is measured: {first:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let published = |s: &BTreeMap<String, f64>| s["actorbus_published_total"];
    // Counters, per handler, with the Prometheus names the README lists.
    for name in [
        "handled_total",
        "retries_total",
        "restarts_total",
        "dead_letters_total",
        "mailbox_depth",
        "lag_events",
        "lag_seconds",
        "handler_parked",
    ] {
        let series = format!("actorbus_{name}{{handler=\"notifier\"}}");
        assert!(first.contains_key(&series), "no {series} in {first:?}");
    }
    // Histograms with cumulative buckets.
    let buckets: Vec<f64> = first
        .iter()
        .filter(|(k, _)| k.starts_with("actorbus_commit_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5, "{first:?}");
    assert_eq!(
        first["actorbus_commit_seconds_bucket{le=\"+Inf\"}"],
        first["actorbus_commit_seconds_count"]
    );
    assert!(first.contains_key("actorbus_publish_ack_seconds_count"));
    assert!(first.contains_key("actorbus_commit_events_sum"));

    // Live: a later scrape has more.
    let start = Instant::now();
    loop {
        let now = scrape();
        if published(&now) > published(&first) {
            assert!(now["actorbus_committed_total"] >= published(&now) * 0.5);
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the counters move");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The running bus's own view: mailboxes and retries are known here.
    let (status, state) = http("GET", port, "/api/state", None);
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["source"], "bus");
    assert!(state["handlers"][0]["mailbox_depth"].is_u64(), "{state}");
    // A change without the token is refused.
    let (status, _) = http("POST", port, "/api/purge?handler=notifier", None);
    assert_eq!(status, 403);
    let (status, _) = http("POST", port, "/api/purge?handler=notifier", Some("wrong"));
    assert_eq!(status, 403);
    // Ctrl-C: it stores no more events, drains the handlers, and exits with SIGINT's code.
    ctrl_c_then_check(&mut demo, db, 130);
}

/// A demo that is done keeps its view up for whoever opened the link, showing the final
/// counts; its bus is shut down, so changes are answered 503 in one line; Ctrl-C then ends
/// it with exit code 0 (it finished).
#[test]
fn a_finished_demo_keeps_its_view_up_until_ctrl_c() {
    let tmp = TempStore::new();
    let db = path(tmp.path());
    let (mut demo, port, addr) = demo_serving(db, "3000", Stdio::piped());
    let (lines, said) = std::sync::mpsc::channel();
    let stdout = BufReader::new(demo.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut summary = Vec::new();
    loop {
        let line = said
            .recv_timeout(PATIENCE.saturating_sub(start.elapsed()))
            .unwrap_or_else(|e| panic!("no word that the view stays ({e}): {summary:#?}"));
        if line.contains("the demo is done; its live view stays on") {
            assert!(line.contains(&format!("http://{addr}/")), "{line}");
            break;
        }
        summary.push(line);
    }
    assert!(
        summary
            .iter()
            .any(|l| l.contains("events in store       3000 of 3000")),
        "{summary:#?}"
    );

    let (status, state) = http("GET", port, "/api/state", None);
    assert_eq!(status, 200, "{state}");
    let state: Value = serde_json::from_str(&state).unwrap();
    let checker = state["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "order-checker")
        .unwrap_or_else(|| panic!("{state}"));
    assert_eq!(checker["handled"], 3000, "{state}");
    let (status, body) = http("POST", port, "/api/redrive?handler=notifier", Some(TOKEN));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body.trim(), "the bus is shut down");
    assert!(demo.0.try_wait().unwrap().is_none(), "still serving");
    ctrl_c_then_check(&mut demo, db, 0);
}

/// `demo --serve` on a free port of 127.0.0.1 with `events` to publish and [`TOKEN`]; the
/// process, the port and the address.
fn demo_serving(db: &str, events: &str, stdout: Stdio) -> (Running, u16, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = command(&["demo", "--db", db, "--events", events, "--serve", &addr]);
    demo.env("ACTORBUS_TOKEN", TOKEN)
        .stdout(stdout)
        .stderr(Stdio::inherit());
    (Running(demo.spawn().unwrap()), port, addr)
}

/// Sends the demo SIGINT, as Ctrl-C does; it exits with `code`, and its store checks out.
fn ctrl_c_then_check(demo: &mut Running, db: &str, code: i32) {
    let kill = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(demo.0.wait().unwrap().code(), Some(code));
    assert_eq!(ok(&["check", "--db", db]).trim(), "consistent");
}

#[test]
fn serve_refuses_an_address_it_cannot_listen_on_in_one_line() {
    let tmp = TempStore::new();
    let db = path(tmp.path());
    ok(&["demo", "--db", db, "--events", "100", "--quiet"]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let msg = fails(&["serve", "--db", db, "--addr", &addr]);
    assert!(msg.contains(&addr), "{msg}");
    let fresh = TempStore::new();
    let msg = fails(&[
        "demo",
        "--db",
        path(fresh.path()),
        "--events",
        "200",
        "--serve",
        &addr,
    ]);
    assert!(msg.contains(&addr), "{msg}");
}

/// A bus's own view counts every dead letter, however many there are, and lists the first.
#[actix::test]
async fn the_view_of_a_bus_counts_every_dead_letter() {
    use actorbus::{EventBus, HandlerOptions};
    let tmp = TempStore::new();
    let bus = EventBus::builder()
        .sqlite(tmp.path())
        .handler_with(
            "doomed",
            HandlerOptions::new().retry(common::fast_retry(1)),
            || common::FailingHandler {
                failures_left: 1 << 20,
                log: common::new_log(),
            },
        )
        .build()
        .unwrap();
    for seq in 0..1_500 {
        bus.publish(common::placed(seq % 9, seq)).await.unwrap();
    }
    let view = actorbus::web::WebView::of_bus(bus.clone());
    let start = Instant::now();
    loop {
        let state = view.snapshot().await.unwrap();
        if state["handlers"][0]["dead_letters"] == json!(1_500) {
            assert_eq!(state["dead_letters"].as_array().unwrap().len(), 50);
            assert_eq!(state["dead_letters"][0]["handler"], "doomed");
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{state}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    bus.shutdown(common::DRAIN).await.unwrap();
}
