//! The intake: the one FIFO channel between publishers and the router, bounded by permits.
//!
//! A publisher takes a permit before it hands an item over, and waits while none is left;
//! the router gives one back for each item it takes. A publish made while a handler of this
//! process runs (inside its `handle`) never waits for a permit: in memory the router waits
//! for a full handler mailbox, so a handler that waited for the router would wait for itself.
//! Such a publish takes a permit if one is free and otherwise goes over the bound, as a debt
//! the router pays back before it gives permits out again. What goes over is bounded by what
//! the handlers hold: each publishes while handling an event already delivered to it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Semaphore, TryAcquireError};

use crate::actors::router::Intake;

tokio::task_local! {
    /// Set while a handler's `handle` runs (see [`within_handler`]).
    static IN_HANDLER: ();
}

/// Runs `handling` as a handler's work: publishes from inside it never wait for the intake.
pub(crate) async fn within_handler<F: std::future::Future>(handling: F) -> F::Output {
    IN_HANDLER.scope((), handling).await
}

/// Whether the caller runs inside a handler's batch.
pub(crate) fn in_handler() -> bool {
    IN_HANDLER.try_with(|_| ()).is_ok()
}

struct Bound {
    permits: Semaphore,
    /// Items handed over without a permit and not yet paid back.
    debt: AtomicUsize,
    /// Items handed over and not yet taken.
    queued: AtomicUsize,
}

/// The intake is closed: the bus is shutting down or stopped.
#[derive(Debug)]
pub(crate) struct Closed;

/// Why [`IntakeTx::try_send`] handed nothing over.
#[derive(Debug)]
pub(crate) enum TrySendError {
    /// No permit is free.
    Full,
    /// The intake is closed.
    Closed,
}

/// The publishers' side.
#[derive(Clone)]
pub(crate) struct IntakeTx {
    tx: mpsc::UnboundedSender<Intake>,
    bound: Arc<Bound>,
}

/// The router's side. Dropping it closes the intake.
pub(crate) struct IntakeRx {
    rx: mpsc::UnboundedReceiver<Intake>,
    bound: Arc<Bound>,
}

/// An intake of `capacity` items.
pub(crate) fn channel(capacity: usize) -> (IntakeTx, IntakeRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bound = Arc::new(Bound {
        permits: Semaphore::new(capacity),
        debt: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
    });
    let rx = IntakeRx {
        rx,
        bound: Arc::clone(&bound),
    };
    (IntakeTx { tx, bound }, rx)
}

impl IntakeTx {
    /// Hands `item` over, waiting for a permit (not inside a handler).
    pub(crate) async fn send(&self, item: Intake) -> Result<(), Closed> {
        if in_handler() {
            return self.send_over(item);
        }
        self.bound
            .permits
            .acquire()
            .await
            .map_err(|_| Closed)?
            .forget();
        self.hand_over(item)
    }

    fn hand_over(&self, item: Intake) -> Result<(), Closed> {
        self.bound.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|_| {
            self.bound.queued.fetch_sub(1, Ordering::AcqRel);
            Closed
        })
    }

    /// Whether every item handed over has been taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.bound.queued.load(Ordering::Acquire) == 0
    }

    /// Hands `item` over if a permit is free (always inside a handler).
    pub(crate) fn try_send(&self, item: Intake) -> Result<(), TrySendError> {
        if in_handler() {
            return self.send_over(item).map_err(|Closed| TrySendError::Closed);
        }
        match self.bound.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.hand_over(item).map_err(|_| TrySendError::Closed)
    }

    /// Hands `item` over at once: with a permit if one is free, otherwise over the bound.
    /// Only a closed channel refuses it.
    pub(crate) fn send_over(&self, item: Intake) -> Result<(), Closed> {
        match self.bound.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => {
                self.bound.debt.fetch_add(1, Ordering::AcqRel);
            }
            Err(TryAcquireError::Closed) => {}
        }
        self.hand_over(item)
    }
}

impl IntakeRx {
    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Takes up to `limit` items into `buf` (as [`mpsc::UnboundedReceiver::poll_recv_many`]),
    /// and gives their permits back, less what went over the bound.
    pub(crate) fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<Intake>,
        limit: usize,
    ) -> Poll<usize> {
        let polled = self.rx.poll_recv_many(cx, buf, limit);
        if let Poll::Ready(n) = polled {
            self.bound.queued.fetch_sub(n, Ordering::AcqRel);
            let debt = &self.bound.debt;
            let mut owed = debt.load(Ordering::Acquire);
            let paid = loop {
                let paid = owed.min(n);
                match debt.compare_exchange_weak(
                    owed,
                    owed - paid,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break paid,
                    Err(now) => owed = now,
                }
            };
            self.bound.permits.add_permits(n - paid);
        }
        polled
    }

    /// Refuses every later item (and every publisher waiting for a permit); what is buffered
    /// can still be taken.
    pub(crate) fn close(&mut self) {
        self.rx.close();
        self.bound.permits.close();
    }
}

impl Drop for IntakeRx {
    fn drop(&mut self) {
        self.bound.permits.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Intake {
        Intake::Close
    }

    fn take(rx: &mut IntakeRx, limit: usize) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = Vec::new();
        match rx.poll_recv_many(&mut cx, &mut buf, limit) {
            Poll::Ready(n) => n,
            Poll::Pending => 0,
        }
    }

    /// The bound holds for publishers, a handler goes over it, and the router's takes pay the
    /// debt back before permits are free again: the bound is the same afterwards.
    #[test]
    fn a_handler_goes_over_the_bound_and_the_router_pays_it_back() {
        let (tx, mut rx) = channel(2);
        tx.try_send(item()).unwrap();
        tx.try_send(item()).unwrap();
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Full)));
        tx.send_over(item()).unwrap();
        tx.send_over(item()).unwrap();
        assert_eq!(rx.len(), 4);
        // Two taken: both pay the debt, no permit is free yet.
        assert_eq!(take(&mut rx, 2), 2);
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Full)));
        assert_eq!(take(&mut rx, 10), 2);
        tx.try_send(item()).unwrap();
        tx.try_send(item()).unwrap();
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Full)));
    }

    #[test]
    fn a_closed_intake_refuses_every_publisher() {
        let (tx, mut rx) = channel(1);
        tx.try_send(item()).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(item()), Err(TrySendError::Closed)));
        assert!(tx.send_over(item()).is_err());
        assert_eq!(take(&mut rx, 10), 1, "what was buffered is still taken");
        let waiting = futures_util::FutureExt::now_or_never(tx.send(item()));
        assert!(matches!(waiting, Some(Err(Closed))));
    }
}
