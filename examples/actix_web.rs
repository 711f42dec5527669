//! An order service embedding the bus in actix-web, as applications do: `POST /orders/{id}`
//! places an order (409 if it exists), `POST /orders/{id}/pay` pays it (409 unless placed and
//! unpaid), `GET /orders/{id}` reads the projection (404 if unknown), `GET /stats` is the
//! bus's counters as JSON; 503 when the bus is full or the store cannot take the write.
//! `/bus/` is the bus's live web view (`actorbus::web`); its redrive and purge buttons work
//! with the token in `ACTORBUS_TOKEN`, and without one the view is read-only.
//!
//! `cargo run --example actix_web -- [--db PATH] [--addr 127.0.0.1:8080]`
//!
//! Shutdown: on SIGTERM or Ctrl-C actix-web stops accepting and finishes its requests, then
//! `server.await` returns and `bus.shutdown(..)` drains the handlers and writes the last
//! checkpoints. (If the actix system is stopped first, the bus's writer still writes the
//! checkpoints of what was handled as it goes.)

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use actorbus::{
    handler_fn, DomainEvent, Envelope, Error, EventBus, HandlerError, HandlerOptions, Projection,
    PublishOptions, RetryPolicy, Store, StoreError,
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};

/// One order's events: the order is the stream.
#[derive(Debug, Serialize, Deserialize)]
enum OrderEvent {
    Placed { order: u64, sku: String, qty: i64 },
    Paid { order: u64, cents: i64 },
}

impl DomainEvent for OrderEvent {
    const EVENT_TYPE: &'static str = "order.placed";
    const EVENT_TYPES: &'static [&'static str] = &["order.placed", "order.paid"];
    fn stream_id(&self) -> String {
        match self {
            Self::Placed { order, .. } | Self::Paid { order, .. } => format!("order-{order}"),
        }
    }
    fn event_type(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "order.placed",
            Self::Paid { .. } => "order.paid",
        }
    }
}

/// The read model `GET /orders/{id}` serves, written with the projection's checkpoint.
struct Orders;

const ORDERS_DDL: &str = "CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
    paid_cents INTEGER)";

impl Projection<OrderEvent> for Orders {
    fn apply(
        &mut self,
        e: &Envelope<OrderEvent>,
        c: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        match e.event() {
            OrderEvent::Placed { order, sku, qty } => {
                diesel::sql_query("INSERT INTO orders (id, sku, qty) VALUES (?, ?, ?)")
                    .bind::<BigInt, _>(*order as i64)
                    .bind::<Text, _>(sku)
                    .bind::<BigInt, _>(*qty)
                    .execute(c)?;
            }
            OrderEvent::Paid { order, cents } => {
                diesel::sql_query("UPDATE orders SET paid_cents = ? WHERE id = ?")
                    .bind::<BigInt, _>(*cents)
                    .bind::<BigInt, _>(*order as i64)
                    .execute(c)?;
            }
        }
        Ok(())
    }

    const RESETTABLE: bool = true;

    fn reset(&mut self, c: &mut SqliteConnection) -> Result<(), HandlerError> {
        c.batch_execute("DELETE FROM orders")?;
        Ok(())
    }
}

#[derive(QueryableByName, Serialize)]
struct OrderRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = BigInt)]
    qty: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    paid_cents: Option<i64>,
}

#[derive(Clone)]
struct AppState {
    bus: EventBus,
    store: std::sync::Arc<Store>,
}

#[derive(Deserialize)]
struct Place {
    sku: String,
    qty: i64,
}

#[derive(Deserialize)]
struct Pay {
    cents: i64,
}

/// Publishes `event` if its stream is at `version`, answering as HTTP.
async fn publish(state: &AppState, event: OrderEvent, version: u64, created: bool) -> HttpResponse {
    let options = PublishOptions::new().expected_version(version);
    // A deadline on the caller's side: when it passes the event may still be committed (the
    // bus does not take back what it accepted), so the client retries with the same id or
    // reads the order first.
    let published = actix_rt::time::timeout(
        Duration::from_secs(5),
        state.bus.publish_with(event, options),
    );
    match published.await {
        Ok(Ok(receipt)) => {
            let body = serde_json::json!({ "position": receipt.position, "version": receipt.stream_version });
            if created {
                HttpResponse::Created().json(body)
            } else {
                HttpResponse::Ok().json(body)
            }
        }
        Ok(Err(e @ Error::VersionConflict { .. })) => HttpResponse::Conflict().body(e.to_string()),
        Ok(Err(e @ (Error::Full { .. } | Error::Store(StoreError::Full | StoreError::Locked))))
        | Ok(Err(e @ (Error::Stopped | Error::Halted { .. }))) => {
            HttpResponse::ServiceUnavailable().body(e.to_string())
        }
        Ok(Err(e)) => HttpResponse::InternalServerError().body(e.to_string()),
        Err(_) => HttpResponse::ServiceUnavailable().body("the bus did not answer in time"),
    }
}

async fn place(
    state: web::Data<AppState>,
    id: web::Path<u64>,
    body: web::Json<Place>,
) -> HttpResponse {
    let Place { sku, qty } = body.into_inner();
    let event = OrderEvent::Placed {
        order: *id,
        sku,
        qty,
    };
    publish(&state, event, 0, true).await
}

async fn pay(state: web::Data<AppState>, id: web::Path<u64>, body: web::Json<Pay>) -> HttpResponse {
    let event = OrderEvent::Paid {
        order: *id,
        cents: body.cents,
    };
    publish(&state, event, 1, false).await
}

async fn order(state: web::Data<AppState>, id: web::Path<u64>) -> HttpResponse {
    let store = std::sync::Arc::clone(&state.store);
    let id = *id as i64;
    // Store reads block: off the server's threads.
    let row = web::block(move || {
        store.with_connection(|c| {
            diesel::sql_query("SELECT id, sku, qty, paid_cents FROM orders WHERE id = ?")
                .bind::<BigInt, _>(id)
                .get_result::<OrderRow>(c)
                .optional()
        })
    })
    .await;
    match row {
        Ok(Ok(Some(row))) => HttpResponse::Ok().json(row),
        Ok(Ok(None)) => HttpResponse::NotFound().body("no such order"),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

async fn stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.bus.stats())
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let db = arg("--db", "orders.db");
    let addr = arg("--addr", "127.0.0.1:8080");
    // The read model's table, before the bus starts applying events to it.
    let store = Store::create(&db)?;
    store.with_connection(|c| c.batch_execute(ORDERS_DDL))?;
    let bus = EventBus::builder()
        .sqlite(&db)
        .projection("orders", HandlerOptions::new().concurrency(2), || Orders)
        .handler_with(
            "mailer",
            HandlerOptions::new().retry(RetryPolicy::new(5)),
            || {
                // Fails now and then, as mail servers do: it lags, it never slows the service.
                handler_fn(|e: &Envelope<OrderEvent>| -> Result<(), HandlerError> {
                    if fastrand::u8(..) < 51 {
                        return Err(format!("mail server busy for {}", e.stream_id()).into());
                    }
                    Ok(())
                })
            },
        )
        .build()?;
    let view = actorbus::web::WebView::of_bus(bus.clone());
    let view = match std::env::var("ACTORBUS_TOKEN") {
        Ok(token) => view.token(token),
        Err(_) => view,
    };
    let state = AppState {
        bus: bus.clone(),
        store: std::sync::Arc::new(store),
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/orders/{id}", web::post().to(place))
            .route("/orders/{id}/pay", web::post().to(pay))
            .route("/orders/{id}", web::get().to(order))
            .route("/stats", web::get().to(stats))
            .service(web::scope("/bus").configure(|c| view.configure(c)))
    })
    .workers(2)
    .bind(&addr)?;
    for a in server.addrs() {
        println!("listening on http://{a}");
    }
    // Returns once a signal (SIGTERM, SIGINT) stopped the server and its requests finished.
    server.run().await?;
    // The one line that makes shutdown clean: drain the handlers, write the last checkpoints.
    bus.shutdown(Duration::from_secs(30)).await?;
    println!("bus drained");
    Ok(())
}
