//! actorbus: an actor-model runtime for domain events, embedded in actix applications.
//!
//! ```text
//!   EventBus (cheap Clone handle: publish / try_publish / publish_all / shutdown / stats)
//!        |  bounded intake
//!   SupervisorActor ── starts and owns everything below (the StorageActor on its writer
//!        |            thread, the handler threads and actors, the router); restarts
//!        |            panicked handlers with backoff; shutdown flows through it
//!        |
//!   RouterActor ── catch-up from checkpoints; each intake chunk -> StorageActor (one
//!        |         transaction through the store's LogWriter: the single writer; two in
//!        |         flight, answered in order); event type -> subscriptions; stream hash
//!        |         -> partition (handler actor)
//!        |  Deliver batches (+ the watermark: delivered through position P). Durable bus:
//!        |  do_send within each actor's buffer (its Load); an actor without room falls
//!        |  behind and reads its events through the store's LogReader until it is live
//!        |  again (lanes.rs); in memory: send().await. Idle actors get the watermark
//!        |  alone every 200 ms
//!   HandlerActor x concurrency (partitions) per subscription ── your EventHandler or
//!                  Projection, retries, dead letters, checkpoints (moved to P once handled)
//! ```
//!
//! On SQLite a bus holds `<store>.lock` (one bus per store); on PostgreSQL (feature
//! `postgres`) several processes share a store, each claiming a share of every
//! subscription's partitions (`storage/postgres/coordinator.rs`). A bus registers its
//! subscriptions at start (`subscriptions` table, a checkpoint row per partition and
//! concurrency): see `storage/registry.rs` for how actors resume, also after a change of
//! concurrency. The project's map is `ARCHITECTURE.md` at the repository root.
//!
//! A minimal bus, end to end:
//!
//! ```
//! use actorbus::{DomainEvent, Envelope, EventBus, EventHandler, HandlerError, HandlerOptions};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct PaymentCaptured { order_id: u64, cents: u64 }
//! impl DomainEvent for PaymentCaptured {
//!     const EVENT_TYPE: &'static str = "payment.captured";
//!     fn stream_id(&self) -> String { format!("order-{}", self.order_id) }
//! }
//!
//! #[derive(Default)]
//! struct Revenue { cents: u64 }
//! impl EventHandler<PaymentCaptured> for Revenue {
//!     async fn handle(&mut self, e: &Envelope<PaymentCaptured>) -> Result<(), HandlerError> {
//!         self.cents += e.cents;
//!         Ok(())
//!     }
//! }
//!
//! actix::System::new().block_on(async {
//!     let bus = EventBus::builder()
//!         .handler_with("revenue", HandlerOptions::new().concurrency(2), Revenue::default)
//!         .build()?;
//!     for i in 0..100 {
//!         bus.publish(PaymentCaptured { order_id: i % 7, cents: 100 }).await?;
//!     }
//!     bus.shutdown(Duration::from_secs(5)).await?;
//!     assert_eq!(bus.stats().handler("revenue").unwrap().handled, 100);
//!     Ok::<_, actorbus::Error>(())
//! }).unwrap();
//! ```
//!
//! # Layout
//! - [`EventBus`], [`BusBuilder`], [`HandlerOptions`]: what an application holds and configures.
//! - [`DomainEvent`], [`Envelope`], [`Metadata`], [`PublishOptions`]: events and their metadata.
//! - [`EventHandler`], [`BatchHandler`], [`handler_fn`], [`blocking`], [`Handle`]: ways to
//!   handle events.
//! - [`RetryPolicy`], [`RestartPolicy`], [`Backoff`], [`Escalation`]: failure policies.
//! - [`Projection`]: a read model written in the store's transaction with its checkpoint.
//! - [`StoreConfig`], [`SqliteOptions`], [`PostgresOptions`], [`Durability`], [`Retention`]:
//!   where events are kept.
//! - [`Store`], [`Replay`]: an operator's view of a store (what the `actorbus` command uses).
//! - [`Stats`], [`DeadLetter`], [`Error`], [`StoreError`]: what the bus reports.
//! - [`telemetry`]: its metrics (the `metrics` facade; Prometheus with feature `prometheus`)
//!   and `tracing` spans; `web` (feature `web`): the live view to mount in an actix-web app.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod actors;
mod admin;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod baseline;
mod batch;
mod blocking;
mod builder;
mod bus;
mod dead_letter;
mod error;
mod event;
mod handler;
mod lifecycle;
mod options;
mod policy;
mod projection;
mod stats;
mod storage;
pub mod telemetry;
#[cfg(feature = "web")]
pub mod web;

pub use crate::admin::{
    CheckpointInfo, DeadLetterInfo, EventFilter, HandlerSummary, Replay, RunningBus, Store,
    StoreSummary, StoredEventInfo,
};
pub use crate::batch::{BatchError, BatchHandler};
pub use crate::blocking::{blocking, Blocking};
pub use crate::builder::BusBuilder;
pub use crate::bus::EventBus;
pub use crate::dead_letter::DeadLetter;
pub use crate::error::{Error, HandlerError, Result};
pub use crate::event::{
    partition_for, DomainEvent, Envelope, Metadata, PublishOptions, Receipt, MAX_STREAM_ID_BYTES,
};
pub use crate::handler::{handler_fn, EventHandler, Handle, HandlerFn};
pub use crate::options::{
    HandlerOptions, StartFrom, DEFAULT_INTAKE_CAPACITY, DEFAULT_MAILBOX_CAPACITY,
    MAX_INTAKE_CAPACITY,
};
pub use crate::policy::{Backoff, Escalation, RestartPolicy, RetryPolicy};
pub use crate::projection::Projection;
pub use crate::stats::{HandlerStats, Latency, Stats};
pub use crate::storage::{
    Durability, PostgresOptions, Retention, Source, SqliteOptions, StoreConfig, StoreError,
};

/// The diesel this crate is built with: [`Projection::apply`] takes its `SqliteConnection`,
/// so `actorbus::diesel::...` writes a read model without a diesel dependency of the
/// application's own (or add `diesel` at the same version, with the `sqlite` feature).
pub use diesel;
