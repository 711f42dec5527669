//! Consumer-side batching: a handler that takes a run of events at once (to bulk-insert, to
//! call an API once per batch), with the same ordering, retries and dead letters as any other.

use std::future::Future;
use std::marker::PhantomData;

use crate::actors::handler::{ManyHandled, RunsEvents};
use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope};

/// Why a batch stopped: how many of its events were handled, and the error of the next one.
#[derive(Debug)]
pub struct BatchError {
    /// Events at the start of the batch that were handled (their effects stay).
    pub handled: usize,
    /// The error of the event at index `handled`.
    pub error: HandlerError,
}

impl BatchError {
    /// The batch failed at the event at index `handled`; the ones before it are done.
    pub fn at(handled: usize, error: impl Into<HandlerError>) -> Self {
        Self {
            handled,
            error: error.into(),
        }
    }
}

/// A handler that takes runs of events of type `E` at once. Register it with
/// [`BusBuilder::batch_handler_with`](crate::BusBuilder::batch_handler_with).
///
/// A batch is what one handler actor has waiting: consecutive events of the streams it owns,
/// in stream order, at most the subscription's mailbox capacity. On `Err(BatchError)` the
/// events before `handled` count as handled; the failing one is retried alone, with the
/// subscription's [`RetryPolicy`](crate::RetryPolicy) and backoff, then dead-lettered; the
/// rest come again as a batch. A panic is caught as for any handler (the instance is rebuilt
/// from the factory). Checkpoints move once a batch is done, so after a crash a batch may
/// come again: make the effect idempotent (the event id is a key) or use a
/// [`Projection`](crate::Projection).
///
/// ```
/// use actorbus::{BatchError, BatchHandler, DomainEvent, Envelope};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct OrderPlaced { id: u64 }
/// # impl DomainEvent for OrderPlaced { const EVENT_TYPE: &'static str = "order.placed";
/// #     fn stream_id(&self) -> String { self.id.to_string() } }
///
/// #[derive(Default)]
/// struct BulkIndex { rows: Vec<u64> }
///
/// impl BatchHandler<OrderPlaced> for BulkIndex {
///     async fn handle_batch(&mut self, events: &[Envelope<OrderPlaced>]) -> Result<(), BatchError> {
///         // One round trip for the whole run.
///         self.rows.extend(events.iter().map(|e| e.id));
///         Ok(())
///     }
/// }
/// ```
pub trait BatchHandler<E: DomainEvent>: 'static {
    /// Handles `events` (never empty), in order.
    ///
    /// # Errors
    /// [`BatchError`]: how many were handled, and why the next one was not.
    fn handle_batch(
        &mut self,
        events: &[Envelope<E>],
    ) -> impl Future<Output = Result<(), BatchError>>;
}

/// Runs a [`BatchHandler`] in a handler actor: whole runs where it can, one event at a time
/// for a retry.
pub(crate) struct Batched<E, B> {
    inner: B,
    _event: PhantomData<fn() -> E>,
}

impl<E, B> Batched<E, B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            _event: PhantomData,
        }
    }
}

impl<E: DomainEvent, B: BatchHandler<E>> RunsEvents<E> for Batched<E, B> {
    async fn handle(&mut self, event: &Envelope<E>) -> Result<(), HandlerError> {
        self.inner
            .handle_batch(std::slice::from_ref(event))
            .await
            .map_err(|e| e.error)
    }

    fn takes_runs(&self) -> bool {
        true
    }

    fn handle_many<'a>(&'a mut self, events: &'a [Envelope<E>]) -> Option<ManyHandled<'a>> {
        Some(Box::pin(async move {
            match self.inner.handle_batch(events).await {
                Ok(()) => (events.len(), None),
                Err(e) => (e.handled.min(events.len()), Some(e.error)),
            }
        }))
    }
}
