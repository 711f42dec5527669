//! The live web view (feature `web`): one page that shows the supervision tree, each
//! handler's throughput, lag, mailbox depth, retries, restarts and dead letters, updated by
//! server-sent events, and the dead letters with redrive and purge buttons.
//!
//! It is mounted in any actix-web app ([`WebView::configure`]); `actorbus serve` and
//! `actorbus demo --serve` mount it at `/`. It watches either a running bus in the same
//! process ([`WebView::of_bus`]: every number, live) or a store another process writes
//! ([`WebView::of_store`]: what the store holds; progress is each subscription's slowest
//! checkpoint).
//!
//! Routes, relative to where it is mounted:
//!
//! | route | |
//! |---|---|
//! | `GET /` | the page (server-rendered HTML, a little script) |
//! | `GET /api/state` | the snapshot the page shows, as JSON |
//! | `GET /api/events` | the same snapshot every [`PUSH_EVERY`], as server-sent events |
//! | `POST /api/redrive?handler=NAME` | redrive a handler's dead letters |
//! | `POST /api/purge?handler=NAME` | delete a handler's dead letters |
//! | `GET /metrics` | Prometheus text format, when a renderer is given ([`WebView::metrics`]) |
//!
//! A change (redrive, purge) needs the token the view was given ([`WebView::token`]) in the
//! `X-Actorbus-Token` header; without a token the view is read-only. Bind the server to
//! 127.0.0.1 unless the network in front of it is trusted.
//!
//! ```no_run
//! # async fn run(bus: actorbus::EventBus) -> std::io::Result<()> {
//! use actix_web::{App, HttpServer};
//!
//! let view = actorbus::web::WebView::of_bus(bus).token("s3cret");
//! HttpServer::new(move || App::new().service(actix_web::web::scope("/bus").configure(|c| view.configure(c))))
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{EventBus, Store};

/// How often `/api/events` sends a snapshot.
pub const PUSH_EVERY: Duration = Duration::from_millis(500);

/// The header a change must carry the token in.
pub const TOKEN_HEADER: &str = "X-Actorbus-Token";

/// Dead letters listed on the page (the counts cover all of them, up to
/// [`COUNTED_LETTERS`]).
const LISTED_LETTERS: usize = 50;
/// Dead letters a bus's snapshot reads to count them, at most, and how many per read.
const COUNTED_LETTERS: usize = 100_000;
const LETTER_PAGE: usize = 1_000;

const PAGE: &str = include_str!("web/page.html");

/// What the view watches.
#[derive(Clone)]
enum Source {
    Bus(EventBus),
    Store(Arc<Store>),
}

#[derive(Clone)]
struct Inner {
    source: Source,
    token: Option<String>,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// The live view of a bus or a store, to mount in an actix-web app. Cheap to clone.
#[derive(Clone)]
pub struct WebView {
    inner: Arc<Inner>,
}

/// Shows what it watches, never the token.
impl std::fmt::Debug for WebView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watches = match &self.inner.source {
            Source::Bus(_) => "a bus",
            Source::Store(_) => "a store",
        };
        f.debug_struct("WebView")
            .field("watches", &watches)
            .field("token", &self.inner.token.as_ref().map(|_| "…"))
            .field("metrics", &self.inner.metrics.is_some())
            .finish()
    }
}

impl WebView {
    /// Watches `bus`, running in this process: counters, lag and mailboxes as they are now.
    pub fn of_bus(bus: EventBus) -> Self {
        Self::new(Source::Bus(bus))
    }

    /// Watches the store another process (or none) writes: head, checkpoints, dead letters
    /// and the buses running on it.
    pub fn of_store(store: Store) -> Self {
        Self::new(Source::Store(Arc::new(store)))
    }

    fn new(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                token: None,
                metrics: None,
            }),
        }
    }

    /// Allows changes (redrive, purge) to requests that carry `token` in
    /// [`TOKEN_HEADER`]. Without it the view is read-only.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.with(|inner| inner.token = Some(token.into()))
    }

    /// Serves `/metrics` with what `render` returns (Prometheus's text format; e.g. a
    /// `metrics_exporter_prometheus::PrometheusHandle::render`). A bus's counters are
    /// copied into the recorder just before ([`EventBus::report_metrics`]).
    pub fn metrics(self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.with(|inner| inner.metrics = Some(Arc::new(render)))
    }

    /// A view changed by `change` (its clones, already in a server, stay as they were).
    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Registers the view's routes on `config` (relative to its scope).
    pub fn configure(&self, config: &mut web::ServiceConfig) {
        config
            .app_data(web::Data::new(self.clone()))
            .route("/", web::get().to(page))
            .route("/api/state", web::get().to(state))
            .route("/api/events", web::get().to(events))
            .route("/api/redrive", web::post().to(redrive))
            .route("/api/purge", web::post().to(purge))
            .route("/metrics", web::get().to(metrics));
    }

    /// The snapshot the page shows (`/api/state`).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn snapshot(&self) -> crate::Result<Value> {
        match &self.inner.source {
            Source::Bus(bus) => bus_snapshot(bus).await,
            Source::Store(store) => {
                let store = Arc::clone(store);
                match actix_web::rt::task::spawn_blocking(move || store_snapshot(&store)).await {
                    Ok(snapshot) => snapshot,
                    Err(_) => Err(crate::Error::Stopped),
                }
            }
        }
    }

    /// Why `request` may not change anything (no token given to the view, or not this one).
    fn refusal(&self, request: &HttpRequest) -> Option<&'static str> {
        let Some(token) = &self.inner.token else {
            return Some("read-only: this view was started without a token\n");
        };
        let given = request
            .headers()
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        (!same(given, token.as_bytes())).then_some("refused: a change needs the view's token\n")
    }
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn bus_snapshot(bus: &EventBus) -> crate::Result<Value> {
    let stats = bus.stats();
    let letters = if bus.is_durable() {
        // Every letter, a page at a time (they are counted per handler), up to a bound.
        let mut letters = Vec::new();
        loop {
            let after = letters.last().map(crate::DeadLetter::id);
            let page = bus.list_dead_letters(None, after, LETTER_PAGE).await?;
            let done = page.len() < LETTER_PAGE;
            letters.extend(page);
            if done || letters.len() >= COUNTED_LETTERS {
                break letters;
            }
        }
    } else {
        bus.dead_letters(None)?
    };
    let handlers: Vec<Value> = stats
        .handlers
        .iter()
        .map(|h| {
            json!({
                "name": h.name, "event_type": h.event_type, "concurrency": h.concurrency,
                "progress": h.handled, "handled": h.handled, "lag": h.lag,
                "lag_ms": h.lag_time.as_secs_f64() * 1e3, "mailbox_depth": h.mailbox_depth,
                "in_flight": h.in_flight, "retries": h.retries, "restarts": h.restarts,
                "dead_letters": letters.iter().filter(|l| l.handler() == h.name).count(),
                "dead_letters_ever": h.dead_letters, "parked": h.parked,
                "p99_ms": h.latency.p99.as_secs_f64() * 1e3,
            })
        })
        .collect();
    let listed: Vec<Value> = letters
        .iter()
        .take(LISTED_LETTERS)
        .map(|l| {
            let meta = l.event();
            json!({
                "id": l.id(), "handler": l.handler(), "attempts": l.attempts(),
                "last_error": l.last_error(), "position": meta.position,
                "event_type": meta.event_type, "stream": meta.stream_id,
                "redrive_requested": false,
            })
        })
        .collect();
    let layout: Vec<(String, u64, bool)> = (stats.handlers.iter())
        .map(|h| (h.name.clone(), h.concurrency as u64, h.parked))
        .collect();
    Ok(json!({
        "source": "bus",
        "store": if bus.is_durable() { "durable" } else { "in memory" },
        "head": stats.head,
        "published": stats.published,
        "running": [],
        "tree": tree(&layout, bus.is_durable()),
        "handlers": handlers,
        "dead_letters": listed,
    }))
}

fn store_snapshot(store: &Store) -> crate::Result<Value> {
    // Checkpoints and lag as `actorbus stats` reads them (the current layout's slowest
    // actor); the letters waiting are those no redrive was asked for yet.
    let (head, summaries) = store.handler_summaries()?;
    let letters = store.dead_letters(None)?;
    let running = store.running()?;
    let handlers: Vec<Value> = summaries
        .iter()
        .map(|h| {
            let waiting = letters
                .iter()
                .filter(|l| l.handler == h.name && !l.redrive_requested)
                .count();
            json!({
                "name": h.name, "concurrency": h.partitions.unwrap_or(0),
                "progress": h.checkpoint.unwrap_or(0), "lag": h.lag,
                "dead_letters": waiting,
            })
        })
        .collect();
    let listed: Vec<Value> = letters
        .iter()
        .take(LISTED_LETTERS)
        .map(|l| {
            json!({
                "id": l.id, "handler": l.handler, "attempts": l.attempts,
                "last_error": l.last_error, "position": l.event.position,
                "event_type": l.event.event_type, "stream": l.event.stream_id,
                "redrive_requested": l.redrive_requested,
            })
        })
        .collect();
    let layout: Vec<(String, u64, bool)> = (summaries.iter())
        .map(|h| (h.name.clone(), u64::from(h.partitions.unwrap_or(0)), false))
        .collect();
    let running: Vec<String> = (running.iter())
        .map(|r| match r.partitions {
            Some(p) => format!("{} ({p} partitions)", r.label),
            None => r.label.clone(),
        })
        .collect();
    Ok(json!({
        "source": "store",
        "store": store.path().display().to_string(),
        "head": head,
        "running": running,
        "tree": tree(&layout, true),
        "handlers": handlers,
        "dead_letters": listed,
    }))
}

/// The supervision tree: the supervisor owns the router, the storage actor (durable) and
/// each subscription's handler actors.
fn tree(subscriptions: &[(String, u64, bool)], durable: bool) -> Value {
    let node = |name: &str, role: &str| json!({"name": name, "role": role});
    let mut children = vec![node(
        "RouterActor",
        "routes each event to its subscriptions",
    )];
    if durable {
        children.push(node(
            "StorageActor",
            "group commits, checkpoints, dead letters",
        ));
    }
    for (name, actors, parked) in subscriptions {
        children.push(json!({
            "name": format!("HandlerActor × {actors}"),
            "role": format!("subscription `{name}`"),
            "parked": parked,
        }));
    }
    json!({"name": "SupervisorActor", "children": children})
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(PAGE)
}

async fn state(view: web::Data<WebView>) -> HttpResponse {
    match view.snapshot().await {
        Ok(snapshot) => HttpResponse::Ok().json(snapshot),
        Err(e) => {
            HttpResponse::InternalServerError().body(format!("{}\n", crate::error::chain(&e)))
        }
    }
}

async fn events(view: web::Data<WebView>) -> HttpResponse {
    let view = view.into_inner();
    let stream = futures_util::stream::unfold(true, move |first| {
        let view = Arc::clone(&view);
        async move {
            if !first {
                actix_web::rt::time::sleep(PUSH_EVERY).await;
            }
            let data = match view.snapshot().await {
                Ok(snapshot) => snapshot.to_string(),
                Err(e) => json!({"error": crate::error::chain(&e)}).to_string(),
            };
            let message = web::Bytes::from(format!("data: {data}\n\n"));
            Some((Ok::<_, actix_web::Error>(message), false))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .streaming(stream)
}

/// `?handler=NAME` of a change.
#[derive(serde::Deserialize)]
struct Target {
    handler: String,
}

/// What a POST asks for.
#[derive(Clone, Copy)]
enum Change {
    Redrive,
    Purge,
}

async fn redrive(
    view: web::Data<WebView>,
    request: HttpRequest,
    target: web::Query<Target>,
) -> HttpResponse {
    change(view, request, target, Change::Redrive).await
}

async fn purge(
    view: web::Data<WebView>,
    request: HttpRequest,
    target: web::Query<Target>,
) -> HttpResponse {
    change(view, request, target, Change::Purge).await
}

/// A redrive or a purge of one handler's dead letters: through the bus (it redrives at
/// once) or the store (the bus running on it, or the next one, redrives).
async fn change(
    view: web::Data<WebView>,
    request: HttpRequest,
    target: web::Query<Target>,
    what: Change,
) -> HttpResponse {
    if let Some(why) = view.refusal(&request) {
        return HttpResponse::Forbidden().body(why);
    }
    let handler = target.into_inner().handler;
    let done = match (&view.inner.source, what) {
        (Source::Bus(bus), Change::Redrive) => bus.redrive(&handler).await,
        (Source::Bus(bus), Change::Purge) => bus.purge_dead_letters(Some(&handler)).await,
        (Source::Store(store), _) => {
            let store = Arc::clone(store);
            blocking(move || {
                store.require_handler(&handler)?;
                match what {
                    Change::Redrive => store.request_redrive(Some(&handler)),
                    Change::Purge => store.purge_dead_letters(Some(&handler)),
                }
            })
            .await
        }
    };
    match what {
        Change::Redrive => answer(done, "redriven"),
        Change::Purge => answer(done, "purged"),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(crate::Error::Stopped))
}

fn answer(done: crate::Result<usize>, what: &str) -> HttpResponse {
    match done {
        Ok(n) => HttpResponse::Ok().json(json!({ what: n })),
        Err(e @ crate::Error::UnknownHandler(_)) => HttpResponse::NotFound().body(format!("{e}\n")),
        // The bus behind the view is gone (shut down, halted): nothing is wrong with the view.
        Err(
            e @ (crate::Error::Stopped
            | crate::Error::Halted { .. }
            | crate::Error::Store(crate::storage::StoreError::WriterStopped)),
        ) => HttpResponse::ServiceUnavailable().body(format!("{}\n", crate::error::chain(&e))),
        Err(e) => {
            HttpResponse::InternalServerError().body(format!("{}\n", crate::error::chain(&e)))
        }
    }
}

/// What a store shows, as gauges: its head, and each subscription's lag (positions behind
/// the head) and dead letters waiting.
fn report_store(snapshot: &Value) {
    let head = snapshot["head"].as_u64().unwrap_or(0);
    metrics::gauge!("actorbus_store_head").set(head as f64);
    for h in snapshot["handlers"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or_default().to_owned();
        let lag = h["lag"].as_u64().unwrap_or(0) as f64;
        let letters = h["dead_letters"].as_u64().unwrap_or(0) as f64;
        metrics::gauge!("actorbus_lag_events", "handler" => name.clone()).set(lag);
        metrics::gauge!("actorbus_dead_letters_waiting", "handler" => name).set(letters);
    }
}

async fn metrics(view: web::Data<WebView>) -> HttpResponse {
    let Some(render) = &view.inner.metrics else {
        return HttpResponse::NotFound().body("no metrics recorder was given to this view\n");
    };
    match &view.inner.source {
        Source::Bus(bus) => bus.report_metrics(),
        Source::Store(_) => match view.snapshot().await {
            Ok(snapshot) => report_store(&snapshot),
            Err(e) => {
                let why = crate::error::chain(&e);
                return HttpResponse::InternalServerError().body(format!("{why}\n"));
            }
        },
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(render())
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cre", b"s3cret"));
        assert!(!same(b"s3crex", b"s3cret"));
        assert!(!same(b"", b"s3cret"));
    }
}
