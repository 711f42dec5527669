//! EventBus: the handle applications hold. It puts published events into the router's
//! bounded intake and reads stats and dead letters; the actors do the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::actors::letters::DeadLetters;
use crate::actors::router::{Intake, Redrive, RouterActor};
use crate::actors::supervisor::{ResetBudget, Shutdown, SupervisorActor};
use crate::builder::BusBuilder;
use crate::dead_letter::DeadLetter;
use crate::error::{Error, Result};
use crate::event::Receipt;
use crate::event::{DomainEvent, PublishOptions, Record};
use crate::lifecycle::Lifecycle;
use crate::stats::{BusCounters, HandlerCounters, Stats};

pub(crate) struct BusShared {
    /// Whether events go through the store (publish then waits for the commit).
    pub(crate) durable: bool,
    /// The store's readers (durable bus).
    pub(crate) reader: Option<crate::storage::backend::Reader>,
    pub(crate) intake: crate::actors::intake::IntakeTx,
    pub(crate) intake_capacity: usize,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) counters: Arc<BusCounters>,
    pub(crate) handlers: Vec<Arc<HandlerCounters>>,
    pub(crate) subscription_index: HashMap<String, usize>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) router: Addr<RouterActor>,
    pub(crate) supervisor: Addr<SupervisorActor>,
}

/// The handle to a running bus: cheap to clone, `Send + Sync`.
///
/// ```
/// use actorbus::{handler_fn, DomainEvent, Envelope, EventBus, HandlerError};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OrderPlaced { order_id: u64 }
/// impl DomainEvent for OrderPlaced {
///     const EVENT_TYPE: &'static str = "order.placed";
///     fn stream_id(&self) -> String { format!("order-{}", self.order_id) }
/// }
///
/// #[actix::main]
/// async fn main() -> Result<(), actorbus::Error> {
///     let bus = EventBus::builder()
///         .handler("printer", || handler_fn(|e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> {
///             println!("order {} placed", e.order_id);
///             Ok(())
///         }))
///         .build()?;
///     bus.publish(OrderPlaced { order_id: 1 }).await?;
///     bus.shutdown(Duration::from_secs(5)).await?; // drains: the handler has run
///     assert_eq!(bus.stats().handler("printer").unwrap().handled, 1);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<BusShared>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("intake_capacity", &self.shared.intake_capacity)
            .field("handlers", &self.shared.handlers.len())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Starts configuring a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn from_shared(shared: BusShared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Publishes one event; waits while the pipeline is full. On a durable bus it returns once
    /// the event is committed (group commit): an `Ok` event is never lost.
    ///
    /// A deadline around it (`actix_rt::time::timeout`) that drops the future after the
    /// event was handed over does not take the event back: it may still be committed. To
    /// retry safely, publish with a chosen id ([`PublishOptions::event_id`]): the store keeps
    /// one event per id, and a retry of a stored one answers its receipt.
    ///
    /// # Errors
    /// [`Error::Stopped`] after `shutdown`, [`Error::Halted`] after an escalation stopped the
    /// bus, [`Error::Store`] when the commit failed (nothing was stored),
    /// [`Error::InvalidEvent`] on a durable bus for an event no store can keep (a NUL
    /// character in its stream id, or an id over [`MAX_STREAM_ID_BYTES`](crate::MAX_STREAM_ID_BYTES)),
    /// [`Error::Encode`] when its `Serialize` impl fails.
    pub async fn publish<E: DomainEvent>(&self, event: E) -> Result<Receipt> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes one event with correlation, causation and headers.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_with<E: DomainEvent>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<Receipt> {
        self.shared.lifecycle.check_publish()?;
        if !self.shared.durable {
            if options.expected().is_some() {
                return Err(Error::Config(
                    "expected_version needs a durable store (sqlite://)".into(),
                ));
            }
            let record = Record::new(event, options);
            let receipt = receipt(&record);
            let span = crate::telemetry::publish_span(&record);
            crate::telemetry::within!(span, self.send(Intake::One(record, None)))?;
            HandlerCounters::add(&self.shared.counters.published, 1);
            return Ok(receipt);
        }
        let expected_version = options.expected();
        let check_ids = options.has_event_id();
        let record = self.record(event, options)?;
        let span = crate::telemetry::publish_span(&record);
        let (ack, acked) = oneshot::channel();
        let item = if expected_version.is_some() || check_ids {
            Intake::Many {
                records: vec![record],
                expected_version,
                check_ids,
                ack: Some(ack),
            }
        } else {
            Intake::One(record, Some(ack))
        };
        let receipts = crate::telemetry::within!(span, self.send_and_wait(item, acked))?;
        receipts.into_iter().next().ok_or(Error::Stopped)
    }

    /// Wraps an event for the intake; a durable bus also encodes its payload for the store,
    /// and refuses what no store could keep (before the intake: a group commit fails whole,
    /// so one such event would fail every publish committed with it).
    fn record<E: DomainEvent>(&self, event: E, options: PublishOptions) -> Result<Record> {
        if self.shared.durable {
            let record = Record::encoded(event, options)?;
            let meta = &record.meta;
            for (what, text) in [
                ("stream id", meta.stream_id.as_str()),
                ("type", &*meta.event_type),
            ] {
                if text.contains('\0') {
                    return Err(Error::InvalidEvent(format!(
                        "its {what} {text:?} contains a NUL character (U+0000)"
                    )));
                }
            }
            let bytes = meta.stream_id.len();
            if bytes > crate::event::MAX_STREAM_ID_BYTES {
                return Err(Error::InvalidEvent(format!(
                    "its stream id is {bytes} bytes long; a store keeps at most {}",
                    crate::event::MAX_STREAM_ID_BYTES
                )));
            }
            Ok(record)
        } else {
            Ok(Record::new(event, options))
        }
    }

    async fn send(&self, item: Intake) -> Result<()> {
        self.shared
            .intake
            .send(item)
            .await
            .map_err(|_| self.shared.lifecycle.closed())
    }

    async fn send_and_wait(
        &self,
        item: Intake,
        acked: oneshot::Receiver<Result<Vec<Receipt>>>,
    ) -> Result<Vec<Receipt>> {
        self.send(item).await?;
        let receipts = acked.await.map_err(|_| self.shared.lifecycle.closed())??;
        HandlerCounters::add(&self.shared.counters.published, receipts.len() as u64);
        Ok(receipts)
    }

    /// Publishes a batch; the events are stored in one transaction (all or nothing) and
    /// routed together, in order.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_all<E: DomainEvent>(
        &self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<Vec<Receipt>> {
        self.shared.lifecycle.check_publish()?;
        let records: Vec<Record> = events
            .into_iter()
            .map(|e| self.record(e, PublishOptions::default()))
            .collect::<Result<_>>()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if self.shared.durable {
            let (ack, acked) = oneshot::channel();
            let item = Intake::Many {
                records,
                expected_version: None,
                check_ids: false,
                ack: Some(ack),
            };
            return self.send_and_wait(item, acked).await;
        }
        let receipts = records.iter().map(receipt).collect::<Vec<_>>();
        self.send(Intake::Many {
            records,
            expected_version: None,
            check_ids: false,
            ack: None,
        })
        .await?;
        HandlerCounters::add(&self.shared.counters.published, receipts.len() as u64);
        Ok(receipts)
    }

    /// Hands one event over if the pipeline has room, without waiting for anything. On a
    /// durable bus `Ok` means *accepted*, not yet committed (the receipt has no position):
    /// use [`publish`](Self::publish) where the caller must know the event is stored.
    ///
    /// # Errors
    /// [`Error::Full`] at once when the intake is full; otherwise as [`publish`](Self::publish).
    pub fn try_publish<E: DomainEvent>(&self, event: E) -> Result<Receipt> {
        self.try_publish_with(event, PublishOptions::default())
    }

    /// [`try_publish`](Self::try_publish) with correlation, causation, headers and a chosen
    /// event id (stored once, whatever how often it is handed over).
    ///
    /// # Errors
    /// As [`try_publish`](Self::try_publish); [`Error::Config`] for
    /// [`PublishOptions::expected_version`], whose outcome is known only at commit: use
    /// [`publish_with`](Self::publish_with) for it.
    pub fn try_publish_with<E: DomainEvent>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<Receipt> {
        self.shared.lifecycle.check_publish()?;
        if options.expected().is_some() {
            return Err(Error::Config(
                "expected_version is decided at commit: use publish_with, which waits for it"
                    .into(),
            ));
        }
        let check_ids = self.shared.durable && options.has_event_id();
        let record = self.record(event, options)?;
        let receipt = receipt(&record);
        let item = if check_ids {
            Intake::Many {
                records: vec![record],
                expected_version: None,
                check_ids,
                ack: None,
            }
        } else {
            Intake::One(record, None)
        };
        self.shared.intake.try_send(item).map_err(|e| match e {
            crate::actors::intake::TrySendError::Full => Error::Full {
                capacity: self.shared.intake_capacity,
            },
            crate::actors::intake::TrySendError::Closed => self.shared.lifecycle.closed(),
        })?;
        HandlerCounters::add(&self.shared.counters.published, 1);
        Ok(receipt)
    }

    /// The current version of `stream` as committed (0 for a stream never written): what
    /// `expected_version` must be for the next event, and how an HTTP handler tells "no such
    /// order" without provoking a [`Error::VersionConflict`]. Reads off the arbiter.
    ///
    /// # Errors
    /// [`Error::Config`] in memory (streams have no versions there); [`Error::Store`] when
    /// the store cannot be read.
    pub async fn stream_version(&self, stream: &str) -> Result<u64> {
        let Some(reader) = &self.shared.reader else {
            return Err(Error::Config(
                "stream versions need a durable store (sqlite://)".into(),
            ));
        };
        let stream = stream.to_owned();
        let version = crate::storage::backend::in_background(reader, move |reader| {
            reader.stream_version(&stream)
        })
        .await?;
        Ok(version)
    }

    /// Up to `limit` dead letters of `handler` (all handlers when `None`) whose id is above
    /// `after` (the last id of the previous page; `None` for the first), oldest first. Reads
    /// off the arbiter, and includes every event a handler gave up on before the call
    /// (what is still queued for the store is written first).
    ///
    /// # Errors
    /// [`Error::UnknownHandler`]; [`Error::Store`] when the store cannot be read.
    pub async fn list_dead_letters(
        &self,
        handler: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        self.check_handler(handler)?;
        Ok(self
            .shared
            .dead_letters
            .page(handler, after.unwrap_or(0), limit)
            .await?)
    }

    /// Stops intake, lets every handler finish what it was given, then stops the actors.
    /// Calling it again waits for the same drain.
    ///
    /// # Errors
    /// [`Error::ShutdownTimeout`] when the mailboxes did not drain within `timeout`; intake
    /// stays closed.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.shared.lifecycle.begin_stop();
        // The supervisor owns the tree: it closes the intake, waits for the drain and the
        // last checkpoints, then stops and joins the writer's and the handlers' threads. A
        // supervisor that is gone has shut down already.
        let supervisor = self.shared.supervisor.clone();
        actix_rt::time::timeout(timeout, async move {
            let _ = supervisor.send(Shutdown).await;
        })
        .await
        .map_err(|_| Error::ShutdownTimeout(timeout))?;
        Ok(())
    }

    /// Whether the bus still accepts events.
    pub fn is_running(&self) -> bool {
        self.shared.lifecycle.check().is_ok()
    }

    /// Whether the bus stores its events (SQLite or PostgreSQL), rather than keeping them
    /// in memory only.
    pub fn is_durable(&self) -> bool {
        self.shared.durable
    }

    /// A snapshot of every counter and latency histogram.
    pub fn stats(&self) -> Stats {
        let handlers = self.shared.handlers.iter().map(|h| &**h);
        self.shared.counters.snapshot(self.shared.durable, handlers)
    }

    /// Copies [`stats`](Self::stats) into the `metrics` recorder the application installed
    /// (see [`telemetry`](crate::telemetry)). A running bus does so every
    /// [`REPORT_EVERY`](crate::telemetry::REPORT_EVERY); a scrape endpoint calls this first,
    /// so what it renders is current.
    pub fn report_metrics(&self) {
        let handlers = self.shared.handlers.iter().map(|h| &**h);
        crate::telemetry::report_bus(&self.shared.counters, self.shared.durable, handlers);
    }

    /// The dead letters of `handler` (all handlers when `None`), oldest first. On a durable
    /// bus they are read from the store, as committed (the writer stores each shortly after
    /// the handler gives up, and always before the checkpoint passes the event). This call
    /// blocks on the store: in async code use [`list_dead_letters`](Self::list_dead_letters),
    /// which pages and includes the letters not yet written.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`] for a name no subscription has; [`Error::Store`] when the
    /// store cannot be read.
    pub fn dead_letters(&self, handler: Option<&str>) -> Result<Vec<DeadLetter>> {
        self.check_handler(handler)?;
        Ok(self.shared.dead_letters.list(handler)?)
    }

    /// Hands the dead letters of `handler` back to it, in their original order, and resumes
    /// it if it was parked (with a fresh restart budget). Returns how many were redriven.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`], or [`Error::Stopped`] after shutdown.
    pub async fn redrive(&self, handler: &str) -> Result<usize> {
        let subscription = self
            .check_handler(Some(handler))?
            .expect("a name was given");
        self.shared.lifecycle.check()?;
        let letters = self.shared.dead_letters.take_for_redrive(handler)?;
        let records: Vec<Record> = letters.into_iter().map(|l| l.record).collect();
        let n = records.len();
        let _ = self
            .shared
            .supervisor
            .send(ResetBudget(Arc::from(handler)))
            .await;
        self.shared
            .router
            .send(Redrive {
                subscription,
                records,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(n)
    }

    /// Deletes the dead letters of `handler` (all when `None`). Returns how many.
    ///
    /// # Errors
    /// [`Error::UnknownHandler`]; on a durable bus [`Error::Store`], and [`Error::Stopped`]
    /// (or [`Error::Halted`]) once the bus and its store's writer are gone.
    pub async fn purge_dead_letters(&self, handler: Option<&str>) -> Result<usize> {
        self.check_handler(handler)?;
        match self.shared.dead_letters.purge(handler).await {
            Ok(purged) => Ok(purged),
            // The store's writer went with the bus: say that, as the bus's other calls do.
            Err(crate::storage::StoreError::WriterStopped) => {
                self.shared.lifecycle.check()?;
                Err(crate::storage::StoreError::WriterStopped.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn check_handler(&self, handler: Option<&str>) -> Result<Option<usize>> {
        match handler {
            None => Ok(None),
            Some(name) => self
                .shared
                .subscription_index
                .get(name)
                .copied()
                .map(Some)
                .ok_or_else(|| Error::UnknownHandler(name.to_owned())),
        }
    }
}

fn receipt(record: &Record) -> Receipt {
    Receipt {
        id: record.meta.id,
        position: record.meta.position,
        stream_version: record.meta.stream_version,
    }
}
