//! What users implement to handle events ([`EventHandler`], [`handler_fn`], actix actors
//! through [`Handle`]), and [`Plain`], which runs an `EventHandler` in a handler actor.

use std::future::Future;

use actix::prelude::*;

use crate::actors::handler::RunsEvents;
use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope};

/// User code that reacts to events of type `E`. It owns its state (`&mut self`): one
/// handler instance per handler actor, so no locking is needed inside.
///
/// Return `Err` to have the event retried with the subscription's [`RetryPolicy`](crate::RetryPolicy); after the
/// last attempt it becomes a dead letter and the handler moves on. A panic is caught, counts
/// as an attempt, and the handler is rebuilt from its factory after the restart backoff.
///
/// Handler actors run on the bus's handler threads
/// ([`BusBuilder::handler_threads`](crate::BusBuilder::handler_threads), one per core by
/// default); each instance is built on its actor's thread by the factory (which is therefore
/// `Send + Sync`; the handler itself need not be `Send`). Handlers must not block their
/// thread: for blocking work see [`blocking`](crate::blocking). To publish from a handler, spawn the
/// publish (`actix::spawn`) rather than awaiting it inline: the handler's own mailbox is
/// part of the pipeline that `publish` may be waiting on.
///
/// ```
/// use actorbus::{DomainEvent, Envelope, EventHandler, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct OrderPlaced { id: u64 }
/// # impl DomainEvent for OrderPlaced { const EVENT_TYPE: &'static str = "order.placed";
/// #     fn stream_id(&self) -> String { self.id.to_string() } }
///
/// #[derive(Default)]
/// struct OrderCount(u64);
///
/// impl EventHandler<OrderPlaced> for OrderCount {
///     async fn handle(&mut self, _event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
/// ```
pub trait EventHandler<E: DomainEvent>: 'static {
    /// Handles one event.
    ///
    /// # Errors
    /// Any error: the event is retried after backoff, then dead-lettered.
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>>;
}

/// A user's [`EventHandler`], one event at a time.
pub(crate) struct Plain<H>(pub(crate) H);

impl<E: DomainEvent, H: EventHandler<E>> RunsEvents<E> for Plain<H> {
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>> {
        self.0.handle(event)
    }
}

/// A handler made of a synchronous closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct HandlerFn<F>(F);

/// Turns a closure into an [`EventHandler`], for handlers that need no `async`.
///
/// ```
/// use actorbus::{handler_fn, DomainEvent, Envelope, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct Pinged;
/// # impl DomainEvent for Pinged { const EVENT_TYPE: &'static str = "pinged";
/// #     fn stream_id(&self) -> String { "p".into() } }
/// let h = handler_fn(|e: &Envelope<Pinged>| -> Result<(), HandlerError> {
///     println!("{}", e.id());
///     Ok(())
/// });
/// ```
pub fn handler_fn<E, F>(f: F) -> HandlerFn<F>
where
    E: DomainEvent,
    F: FnMut(&Envelope<E>) -> Result<(), HandlerError> + 'static,
{
    HandlerFn(f)
}

impl<E, F> EventHandler<E> for HandlerFn<F>
where
    E: DomainEvent,
    F: FnMut(&Envelope<E>) -> Result<(), HandlerError> + 'static,
{
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>> {
        std::future::ready((self.0)(event))
    }
}

/// The message an existing actix actor receives when it subscribes through a `Recipient`
/// ([`BusBuilder::recipient`](crate::BusBuilder::recipient)). Reply `Err` to have it retried.
#[derive(Debug)]
pub struct Handle<E: DomainEvent>(pub Envelope<E>);

impl<E: DomainEvent> Message for Handle<E> {
    type Result = Result<(), HandlerError>;
}

/// Forwards events to an actix `Recipient`, so that existing actors get retries, dead
/// letters and ordering like any handler.
pub(crate) struct RecipientHandler<E: DomainEvent>(pub(crate) Recipient<Handle<E>>);

impl<E: DomainEvent> EventHandler<E> for RecipientHandler<E> {
    async fn handle(&mut self, event: &Envelope<E>) -> Result<(), HandlerError> {
        self.0.send(Handle(event.clone())).await?
    }
}
