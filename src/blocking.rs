//! Handlers that must block (synchronous I/O, CPU-heavy work): each call runs on the
//! blocking thread pool, so the actors on the arbiter keep running meanwhile.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope};
use crate::handler::EventHandler;

/// A handler whose every call runs on actix's blocking thread pool; see [`blocking`].
pub struct Blocking<F> {
    f: Arc<Mutex<F>>,
}

impl<F> std::fmt::Debug for Blocking<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

/// Wraps a blocking closure into an [`EventHandler`]. Each event is handled on the blocking
/// pool (`actix_rt::task::spawn_blocking`); the handler actor waits for it, so per-stream
/// order and retries work as for any handler, while other handlers keep running.
///
/// For a long-lived blocking resource (a synchronous client, a database connection) an
/// actix `SyncArbiter` actor subscribed through [`BusBuilder::recipient`] is the other way.
///
/// ```
/// use actorbus::{blocking, DomainEvent, Envelope, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct Exported { id: u64 }
/// # impl DomainEvent for Exported { const EVENT_TYPE: &'static str = "exported";
/// #     fn stream_id(&self) -> String { self.id.to_string() } }
/// let h = blocking(|e: &Envelope<Exported>| -> Result<(), HandlerError> {
///     std::thread::sleep(std::time::Duration::from_millis(1)); // a synchronous call
///     Ok(())
/// });
/// ```
///
/// [`BusBuilder::recipient`]: crate::BusBuilder::recipient
pub fn blocking<E, F>(f: F) -> Blocking<F>
where
    E: DomainEvent,
    F: FnMut(&Envelope<E>) -> Result<(), HandlerError> + Send + 'static,
{
    Blocking {
        f: Arc::new(Mutex::new(f)),
    }
}

impl<E, F> EventHandler<E> for Blocking<F>
where
    E: DomainEvent,
    F: FnMut(&Envelope<E>) -> Result<(), HandlerError> + Send + 'static,
{
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>> {
        let f = Arc::clone(&self.f);
        let event = event.clone();
        async move {
            let joined = actix_rt::task::spawn_blocking(move || {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                (f)(&event)
            })
            .await;
            match joined {
                Ok(result) => result,
                // Re-raise the panic here so that the supervisor sees it like any other.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(e.into()),
            }
        }
    }
}
