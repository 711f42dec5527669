//! A small W3C WebDriver client for the browser tests: it starts `chromedriver` on a free
//! port, opens a headless Chromium session and speaks HTTP/1.1 to it over a plain
//! `TcpStream` (one connection per request). When chromedriver or Chromium is missing the
//! test says SKIPPED and passes, except under `CI=true`, where it fails.
//!
//! Every WebDriver error is a panic naming the command, the HTTP status and the message.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often [`Browser::wait_until`] and the start-up look again.
const POLL: Duration = Duration::from_millis(50);
/// How long chromedriver may take to answer `GET /status` with `ready`.
const STARTUP: Duration = Duration::from_secs(20);
/// How long one request may take (creating the session starts Chromium).
const REQUEST: Duration = Duration::from_secs(60);
/// Chromium's flags: headless, and fit for a container run as root.
const CHROMIUM_ARGS: [&str; 5] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A headless Chromium driven through its own chromedriver; both end when it is dropped.
pub struct Browser {
    port: u16,
    session: String,
    driver: Child,
    /// Their `TMPDIR` (profiles and sockets), removed at the end.
    tmp: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (SKIPPED) when either is
    /// not installed, outside CI.
    pub fn start() -> Option<Browser> {
        let (driver, chromium) = match (
            find("/usr/bin/chromedriver", "chromedriver"),
            find("/usr/bin/chromium", "chromium"),
        ) {
            (Some(driver), Some(chromium)) => (driver, chromium),
            (None, _) => return unavailable("chromedriver"),
            (_, None) => return unavailable("chromium"),
        };
        let mut browser = Browser::driver(&driver);
        let options = json!({ "binary": chromium, "args": CHROMIUM_ARGS });
        let capabilities = json!({ "alwaysMatch": { "goog:chromeOptions": options } });
        let mut created =
            browser.request("POST", "/session", json!({ "capabilities": capabilities }));
        browser.session = string(created["sessionId"].take());
        Some(browser)
    }

    /// `program` (chromedriver) started on a free port with a `TMPDIR` of its own, once it
    /// is ready for a session.
    fn driver(program: &Path) -> Browser {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tmp = std::env::temp_dir().join(format!("web_support-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let driver = Command::new(program)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        // From here on a panic drops the browser, which ends chromedriver.
        let mut browser = Browser {
            port,
            session: String::new(),
            driver,
            tmp,
        };
        let deadline = Instant::now() + STARTUP;
        let ready = |(_, reply): (u16, Value)| reply["value"]["ready"] == true;
        while !http(port, "GET", "/status", &Value::Null).is_ok_and(ready) {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start-up ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready in {STARTUP:?}"
            );
            std::thread::sleep(POLL);
        }
        browser
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    /// The rendered text of the first element matching the CSS selector `css`.
    pub fn text(&self, css: &str) -> String {
        let id = self.element(css);
        string(self.command("GET", &format!("/element/{id}/text"), Value::Null))
    }

    /// Clicks the first element matching the CSS selector `css`.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Runs `script` in the page, a function body: `arguments[i]` is `args[i]` and what it
    /// `return`s is the result.
    pub fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// Polls `f` every 50 ms until it is true; panics naming `what` after `timeout`.
    /// `f` should not panic itself (e.g. on an element that is not there yet).
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Saves a PNG screenshot of the window at `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = base64_decode(&string(self.command("GET", "/screenshot", Value::Null)));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
    }

    /// The page's current HTML.
    pub fn source(&self) -> String {
        string(self.command("GET", "/source", Value::Null))
    }

    /// The WebDriver id of the first element matching `css`.
    fn element(&self, css: &str) -> String {
        let query = json!({ "using": "css selector", "value": css });
        let mut found = self.command("POST", "/element", query);
        // The W3C key of an element reference.
        string(found["element-6066-11e4-a52e-4f735466cecf"].take())
    }

    /// A command of this session: `path` is relative to `/session/{id}`.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.request(method, &format!("/session/{}{path}", self.session), body)
    }

    /// One request to chromedriver (no body if `body` is null): its `value`, or a panic.
    fn request(&self, method: &str, path: &str, body: Value) -> Value {
        let what = format!("WebDriver {method} {path} {body}");
        let reply = http(self.port, method, path, &body);
        let (status, mut reply) = reply.unwrap_or_else(|e| panic!("{what}: {e}"));
        let value = reply["value"].take();
        if status != 200 || value.get("error").is_some() {
            let error = value["error"].as_str().unwrap_or("?");
            let message = value["message"].as_str().unwrap_or("?");
            panic!("{what}: HTTP {status}: {error}: {message}");
        }
        value
    }
}

impl Drop for Browser {
    /// Ends the session (and so Chromium), then chromedriver, and removes their files.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = http(self.port, "DELETE", &path, &Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// SKIPPED (`None`) for want of `program`, or a panic under `CI=true`.
fn unavailable(program: &str) -> Option<Browser> {
    let reason = format!("{program} is not installed (Debian packages chromium, chromium-driver)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("a headless browser is required in CI: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// `preferred` if it exists, else `name` found on `PATH`.
fn find(preferred: &str, name: &str) -> Option<PathBuf> {
    let preferred = PathBuf::from(preferred);
    if preferred.is_file() {
        return Some(preferred);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A JSON string's text; a panic for any other value.
fn string(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => panic!("WebDriver answered {other} where a string was expected"),
    }
}

/// One HTTP/1.1 request on a connection of its own (no body for null): the status and the
/// JSON body of the answer.
fn http(port: u16, method: &str, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(REQUEST))?;
    stream.set_write_timeout(Some(REQUEST))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|code| code.parse().ok());
    let status = status.ok_or_else(|| std::io::Error::other(format!("bad status: {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            }
        }
    }
    // The body is Content-Length bytes, or (without it) all until the server closes.
    let mut bytes = Vec::new();
    reader
        .take(length.unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)?;
    Ok((status, serde_json::from_slice(&bytes)?))
}

/// Decodes standard base64 (`A-Z a-z 0-9 + /`; `=` padding and line breaks are skipped).
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => panic!("not base64: byte {c:#04x}"),
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
