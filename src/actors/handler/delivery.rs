//! What the router and a handler actor share: the [`Deliver`] and [`Control`] messages, and
//! the actor's [`Load`], which bounds what it holds.

use actix::prelude::*;

use crate::event::Record;

/// A batch of events for one handler actor, in per-stream order. In memory it is sent with
/// `send().await`, which resolves once the actor has taken it from its mailbox; on a durable
/// bus with `do_send`, within the room its [`Load`] leaves.
pub(crate) struct Deliver {
    pub(crate) records: Vec<Record>,
    /// On a durable bus: every stored event up to this position that belongs to this actor
    /// has been delivered to it, in this batch or before. Once the batch is handled, its
    /// checkpoint moves here even when the batch holds nothing (an idle actor keeps up).
    pub(crate) through: Option<u64>,
    /// What the router added to the actor's [`Load`] for this message; released once done.
    pub(crate) load: usize,
    /// The claim on this actor's partition the delivery is made under (a PostgreSQL store
    /// shared by several processes; `None` where one bus owns the store).
    pub(crate) fence: Option<i64>,
}

/// How much one handler actor has been given and not yet finished (events, and one unit for
/// a watermark alone), shared by the router, which adds before it sends, and the actor, which
/// releases once a batch is handled or dead-lettered. The router never lets it pass the
/// actor's mailbox capacity: that is the actor's buffer, and what bounds its memory.
#[derive(Debug, Default)]
pub(crate) struct Load {
    queued: std::sync::atomic::AtomicUsize,
    room: tokio::sync::Notify,
}

impl Load {
    /// Units given and not yet finished.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn add(&self, units: usize) {
        self.queued
            .fetch_add(units, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn release(&self, units: usize) {
        if units > 0 {
            self.queued
                .fetch_sub(units, std::sync::atomic::Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }

    /// Resolves once at most `limit` units are queued.
    pub(crate) async fn at_most(&self, limit: usize) {
        loop {
            let notified = self.room.notified();
            if self.queued() <= limit {
                return;
            }
            notified.await;
        }
    }
}

impl Message for Deliver {
    type Result = ();
}

/// Lifecycle requests for a handler actor.
pub(crate) enum Control {
    /// Answered once everything delivered before it has been handled.
    Drain,
    /// Leave the parked state (after a fix, before a redrive) with a fresh handler.
    Resume,
    /// This process claimed the actor's partition (a PostgreSQL store shared by several
    /// processes): its work starts again after `checkpoint`, the stored one.
    Claimed { checkpoint: u64 },
}

impl Message for Control {
    type Result = ();
}
