//! `actorbus serve`: the live web view of a store ([`actorbus::web`]), with `/metrics`.
//! `actorbus demo --serve ADDR` mounts the same view on the demo's running bus.

use std::path::PathBuf;

use actix_web::{App, HttpServer};
use actorbus::telemetry::Prometheus;
use actorbus::web::WebView;
use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The store: a SQLite file, or a `postgres://…` URL.
    #[arg(long)]
    db: PathBuf,
    /// Where to listen. Only this machine reaches the default; another address exposes the
    /// view (and, with the token, its buttons) to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// The token a change (redrive, purge) must carry (also read from `ACTORBUS_TOKEN`);
    /// without either, one is made up and printed.
    #[arg(long)]
    token: Option<String>,
}

/// Serves the view of a store until SIGINT or SIGTERM.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = crate::cli::open_store(&args.db)?;
    let (listener, prometheus) = prepare(&args.addr)?;
    let token = token(args.token);
    let view = equip(WebView::of_store(store), &token, prometheus);
    let addr = listener.local_addr()?;
    actix::System::new().block_on(async move {
        let server = server(view, listener, true)?;
        say!(
            "serving {} on http://{addr}/ (changes need the token {token}; Ctrl-C stops)",
            crate::cli::shown(&args.db),
        );
        server.await.context("the web server failed")
    })
}

/// What serving needs before anything else starts: the address `addr`, taken (a bad or
/// taken one fails here, in one line), and the Prometheus recorder (a bus built after it
/// records into it).
pub(crate) fn prepare(addr: &str) -> anyhow::Result<(std::net::TcpListener, Prometheus)> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    Ok((listener, Prometheus::install()?))
}

/// The token changes need: the one `given`, else `ACTORBUS_TOKEN`, else a new one.
pub(crate) fn token(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("ACTORBUS_TOKEN").ok())
        .unwrap_or_else(new_token)
}

/// `view` with `token` for its changes and `prometheus` behind its `/metrics`.
pub(crate) fn equip(view: WebView, token: &str, prometheus: Prometheus) -> WebView {
    view.token(token).metrics(move || prometheus.render())
}

/// An HTTP server with `view` at `/`, on `listener`, with one worker (the view's work is
/// reading the store and copying counters); `signals`: it stops on SIGINT and SIGTERM
/// (otherwise the caller handles them and stops it).
pub(crate) fn server(
    view: WebView,
    listener: std::net::TcpListener,
    signals: bool,
) -> anyhow::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || App::new().configure(|config| view.configure(config)))
        .workers(1)
        .listen(listener)
        .context("cannot serve on the address")?;
    let server = if signals {
        server
    } else {
        server.disable_signals()
    };
    Ok(server.run())
}

/// A token no one can guess: 128 bits from the system's random source.
fn new_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom (not Unix): a v7 id's random bits, and the clock's.
        bytes = *uuid::Uuid::now_v7().as_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
