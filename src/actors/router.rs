//! RouterActor: reads published events from the bounded intake, fans each out to the
//! subscriptions of its type, and picks the handler actor of a subscription by a stable
//! hash of the event's stream, so one stream keeps its order while streams run in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::actors::handler::{Control, Deliver};
use crate::event::Record;
use crate::stats::{BusCounters, HandlerCounters};

/// What publishers put into the intake channel.
pub(crate) enum Intake {
    One(Record),
    /// A `publish_all` batch: routed together, in order.
    Many(Vec<Record>),
    /// Shutdown: no more events are accepted after this one; the rest are drained.
    Close,
}

/// One handler actor, as the router sees it.
pub(crate) struct Slot {
    pub(crate) deliver: Recipient<Deliver>,
    pub(crate) control: Recipient<Control>,
}

/// One subscription: its handler actors and its counters.
pub(crate) struct Group {
    pub(crate) event_type: String,
    pub(crate) slots: Vec<Slot>,
    /// Most events in one delivery (so a mailbox never holds more than this waiting).
    pub(crate) capacity: usize,
    pub(crate) counters: Arc<HandlerCounters>,
}

pub(crate) struct RouterActor {
    groups: Vec<Group>,
    by_type: HashMap<String, Vec<usize>>,
    counters: Arc<BusCounters>,
    intake: Option<(mpsc::Receiver<Intake>, usize)>,
    close: Option<mpsc::Sender<Intake>>,
    drained: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl RouterActor {
    /// `chunk` bounds how many intake items the router takes at once.
    pub(crate) fn new(
        groups: Vec<Group>,
        intake: mpsc::Receiver<Intake>,
        close: mpsc::Sender<Intake>,
        chunk: usize,
        counters: Arc<BusCounters>,
    ) -> Self {
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            by_type.entry(g.event_type.clone()).or_default().push(i);
        }
        Self {
            groups,
            by_type,
            counters,
            intake: Some((intake, chunk)),
            close: Some(close),
            drained: false,
            drain_waiters: Vec::new(),
        }
    }

    /// Hands `records` to the handler actors and keeps the router waiting (no further intake)
    /// until every actor has taken its part from its mailbox.
    fn deliver(&mut self, records: impl Iterator<Item = Record>, only: Option<usize>, ctx: &mut Context<Self>) {
        let mut batches: HashMap<(usize, usize), Vec<Record>> = HashMap::new();
        let mut unrouted = 0u64;
        for record in records {
            let Some(groups) = self.by_type.get(record.meta.event_type.as_str()) else {
                unrouted += 1;
                continue;
            };
            for &g in groups.iter().filter(|g| only.is_none_or(|o| o == **g)) {
                let slot = (record.partition % self.groups[g].slots.len() as u64) as usize;
                batches.entry((g, slot)).or_default().push(record.clone());
            }
        }
        if unrouted > 0 {
            HandlerCounters::add(&self.counters.unrouted, unrouted);
        }
        if batches.is_empty() {
            return;
        }
        let sends = batches.into_iter().map(|((g, slot), records)| {
            let group = &self.groups[g];
            HandlerCounters::add(&group.counters.delivered, records.len() as u64);
            let recipient = group.slots[slot].deliver.clone();
            let capacity = group.capacity;
            async move {
                // One slot's chunks go one after another: their order is the stream order.
                let mut records = records;
                while !records.is_empty() {
                    let rest = records.split_off(records.len().min(capacity));
                    if recipient.send(Deliver(records)).await.is_err() {
                        log::error!("a handler actor stopped before the bus was shut down");
                    }
                    records = rest;
                }
            }
        });
        ctx.wait(actix::fut::wrap_future(join_all(sends)).map(|_, _, _| ()));
    }

    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        let drains: Vec<_> = self
            .groups
            .iter()
            .flat_map(|g| g.slots.iter().map(|s| s.control.send(Control::Drain)))
            .collect();
        ctx.wait(
            actix::fut::wrap_future(join_all(drains)).map(|_, act: &mut Self, _| {
                act.drained = true;
                for waiter in act.drain_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }),
        );
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (mut rx, chunk) = self.intake.take().expect("router started once");
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
            let mut items = Vec::new();
            match rx.poll_recv_many(cx, &mut items, chunk) {
                Poll::Ready(0) => Poll::Ready(None),
                Poll::Ready(_) => {
                    if items.iter().any(|i| matches!(i, Intake::Close)) {
                        // From here on senders are refused; what is buffered is still drained.
                        rx.close();
                    }
                    Poll::Ready(Some(items))
                }
                Poll::Pending => Poll::Pending,
            }
        }));
    }
}

impl StreamHandler<Vec<Intake>> for RouterActor {
    fn handle(&mut self, items: Vec<Intake>, ctx: &mut Context<Self>) {
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Intake::One(r) => records.push(r),
                Intake::Many(rs) => records.extend(rs),
                Intake::Close => {}
            }
        }
        self.deliver(records.into_iter(), None, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The intake is closed and empty: wait for every mailbox to run dry.
        self.finish_drain(ctx);
    }
}

/// Close the intake (shutdown or escalation); buffered events are still routed.
pub(crate) struct CloseIntake;

impl Message for CloseIntake {
    type Result = ();
}

impl Handler<CloseIntake> for RouterActor {
    type Result = ();

    fn handle(&mut self, _: CloseIntake, ctx: &mut Context<Self>) {
        if let Some(tx) = self.close.take() {
            // Spawned, not awaited: the intake may be full, and the router is what empties it.
            ctx.spawn(actix::fut::wrap_future(async move {
                let _ = tx.send(Intake::Close).await;
            }));
        }
    }
}

/// Resolves once the intake is closed and every handler mailbox drained.
pub(crate) struct AwaitDrained;

impl Message for AwaitDrained {
    type Result = ();
}

impl Handler<AwaitDrained> for RouterActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: AwaitDrained, _ctx: &mut Context<Self>) -> Self::Result {
        if self.drained {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Hand dead letters back to one subscription (after resuming its actors), in their order.
pub(crate) struct Redrive {
    pub(crate) group: usize,
    pub(crate) records: Vec<Record>,
}

impl Message for Redrive {
    type Result = ();
}

impl Handler<Redrive> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: Redrive, ctx: &mut Context<Self>) {
        let Some(group) = self.groups.get(msg.group) else {
            return;
        };
        let resumes: Vec<_> = group
            .slots
            .iter()
            .map(|s| s.control.send(Control::Resume))
            .collect();
        ctx.wait(actix::fut::wrap_future(join_all(resumes)).map(
            move |_, act: &mut Self, ctx| act.deliver(msg.records.into_iter(), Some(msg.group), ctx),
        ));
    }
}
