//! Group commits in flight between the router and the storage actor: while the writer
//! commits one chunk, the router acknowledges and delivers the one before and gathers the
//! next, so neither thread waits for the other. At most [`MAX_IN_FLIGHT`] commits are
//! outstanding; their results are handled in the order the chunks were sent, and
//! [`acknowledge`] answers each publisher.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Waker};

use actix::prelude::*;

use crate::actors::router::Ack;
use crate::actors::storage::Append;
use crate::error::Error;
use crate::event::Receipt;
use crate::event::Record;
use crate::storage::backend::UnitOutcome;

/// Commits the router may have sent and not yet handled: one being written, one waiting.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Shared by the router and its intake stream: the stream yields no chunk while
/// [`MAX_IN_FLIGHT`] commits are outstanding, so publishers wait in the bounded intake.
#[derive(Debug, Default)]
pub(crate) struct CommitGate {
    in_flight: Cell<usize>,
    /// Publishes in the outstanding commits.
    units: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl CommitGate {
    /// Whether another chunk may be taken now; if not, `cx` is woken when one may.
    pub(crate) fn is_open(&self, cx: &Context<'_>) -> bool {
        if self.in_flight.get() < MAX_IN_FLIGHT {
            return true;
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        false
    }

    /// How many intake items to take now, with `queued` waiting and at most `chunk`: an even
    /// share of the publishes in flight and waiting, so that two commits of about equal size
    /// alternate (one written while the other is answered, delivered and gathered again)
    /// rather than one commit of everything, with the writer idle in between.
    pub(crate) fn share(&self, queued: usize, chunk: usize) -> usize {
        (self.units.get() + queued)
            .div_ceil(MAX_IN_FLIGHT)
            .clamp(1, chunk.max(1))
    }

    /// A commit of `units` publishes was sent.
    pub(crate) fn enter(&self, units: usize) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.units.set(self.units.get() + units);
    }

    /// A commit of `units` publishes was handled: the intake may go on.
    pub(crate) fn leave(&self, units: usize) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.units.set(self.units.get().saturating_sub(units));
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// No commit outstanding.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.get() == 0
    }
}

/// Hands results back in the order their tickets were issued, whatever order they arrive in.
#[derive(Debug)]
pub(crate) struct InOrder<T> {
    issued: u64,
    next: u64,
    arrived: BTreeMap<u64, T>,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        Self {
            issued: 0,
            next: 0,
            arrived: BTreeMap::new(),
        }
    }
}

impl<T> InOrder<T> {
    /// The ticket of the next result.
    pub(crate) fn ticket(&mut self) -> u64 {
        self.issued += 1;
        self.issued - 1
    }

    /// Records the result of `ticket`; returns every result now due, oldest first.
    pub(crate) fn arrived(&mut self, ticket: u64, value: T) -> Vec<T> {
        self.arrived.insert(ticket, value);
        let mut due = Vec::new();
        while let Some(v) = self.arrived.remove(&self.next) {
            due.push(v);
            self.next += 1;
        }
        due
    }
}

/// What the storage actor answered for one chunk, and whom to tell.
pub(crate) type Committed = (
    std::result::Result<<Append as Message>::Result, MailboxError>,
    Vec<Option<Ack>>,
);

/// Answers each publisher of a committed chunk; returns the records stored, with their
/// positions and versions, to deliver.
pub(crate) fn acknowledge(
    reply: std::result::Result<<Append as Message>::Result, MailboxError>,
    acks: Vec<Option<Ack>>,
) -> Vec<Record> {
    let (units, outcomes) = match reply {
        Ok(reply) => reply,
        Err(_) => {
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(Err(Error::Stopped));
            }
            return Vec::new();
        }
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(e) => {
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(Err(Error::Store(e.clone())));
            }
            return Vec::new();
        }
    };
    let mut stored = Vec::with_capacity(units.iter().map(|u| u.records.len()).sum());
    for ((unit, outcome), ack) in units.into_iter().zip(outcomes).zip(acks) {
        let answer = match outcome {
            UnitOutcome::Stored(places) => {
                let places = places.as_slice();
                let mut receipts = Vec::with_capacity(places.len());
                let places = places.iter().copied();
                for (mut record, (position, version)) in unit.records.into_iter().zip(places) {
                    let meta = Arc::make_mut(&mut record.meta);
                    meta.position = Some(position);
                    meta.stream_version = Some(version);
                    receipts.push(Receipt {
                        id: meta.id,
                        position: Some(position),
                        stream_version: Some(version),
                    });
                    stored.push(record);
                }
                Ok(receipts)
            }
            UnitOutcome::Duplicate(places) => Ok(unit
                .records
                .iter()
                .zip(places)
                .map(|(r, (position, version))| Receipt {
                    id: r.meta.id,
                    position: Some(position),
                    stream_version: Some(version),
                })
                .collect()),
            UnitOutcome::Conflict {
                stream,
                expected,
                actual,
            } => Err(Error::VersionConflict {
                stream,
                expected,
                actual,
            }),
        };
        if let Some(ack) = ack {
            let _ = ack.send(answer);
        }
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[test]
    fn results_come_back_in_ticket_order_whatever_order_they_arrive_in() {
        let mut order = InOrder::default();
        let (a, b, c) = (order.ticket(), order.ticket(), order.ticket());
        assert_eq!(order.arrived(c, "c"), Vec::<&str>::new());
        assert_eq!(order.arrived(b, "b"), Vec::<&str>::new());
        assert_eq!(order.arrived(a, "a"), vec!["a", "b", "c"]);
        let d = order.ticket();
        assert_eq!(order.arrived(d, "d"), vec!["d"]);
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_gate_closes_at_the_limit_and_wakes_the_intake_when_a_commit_is_handled() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&waker);
        let gate = CommitGate::default();
        assert!(gate.is_idle());
        for _ in 0..MAX_IN_FLIGHT {
            assert!(gate.is_open(&cx));
            gate.enter(3);
        }
        assert!(!gate.is_open(&cx), "closed with {MAX_IN_FLIGHT} in flight");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        gate.leave(3);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the intake is woken");
        assert!(gate.is_open(&cx));
        gate.leave(3);
        assert!(gate.is_idle());
    }

    #[test]
    fn the_share_splits_the_publishes_in_flight_and_waiting_between_two_commits() {
        let gate = CommitGate::default();
        assert_eq!(gate.share(0, 1024), 1, "never nothing");
        assert_eq!(gate.share(64, 1024), 32, "64 waiting, none in flight");
        gate.enter(32);
        assert_eq!(gate.share(32, 1024), 32, "32 in flight, 32 waiting");
        assert_eq!(gate.share(5000, 1024), 1024, "at most a chunk");
        assert_eq!(gate.share(1, 8), 8, "at most a chunk");
        gate.leave(32);
        assert_eq!(gate.share(1, 1024), 1);
    }
}
