//! RouterActor: reads published events from the bounded intake, fans each out to the
//! subscriptions of its type, and picks the handler actor of a subscription by a stable
//! hash of the event's stream, so one stream keeps its order while streams run in parallel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{join_all, LocalBoxFuture};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::actors::handler::{Control, Deliver, Load};
use crate::actors::intake::{IntakeRx, IntakeTx};
use crate::actors::pipeline::{acknowledge, CommitGate, Committed, InOrder};
use crate::actors::storage::{Append, FlushCheckpoints, Prune, StorageActor};
use crate::error::Result;
use crate::event::Receipt;
use crate::event::Record;
use crate::stats::{BusCounters, HandlerCounters};
use crate::storage::backend::Unit;
use crate::storage::backend::{in_background, Reader};

mod claims;
mod commit;
mod drain;
mod lanes;
mod redrive;
mod tail;
pub(crate) use claims::Shared;
pub(crate) use drain::{AwaitDrained, CloseIntake};
use lanes::Lane;
pub(crate) use redrive::Redrive;
use tail::Tail;

/// Where a durable publish learns its fate: receipts once committed, or the error.
pub(crate) type Ack = oneshot::Sender<Result<Vec<Receipt>>>;

/// What publishers put into the intake channel.
pub(crate) enum Intake {
    /// One event; `Some` ack where the bus is durable.
    One(Record, Option<Ack>),
    /// A `publish_all` batch (or a publish with options the store must check): stored all
    /// or nothing, routed together, in order.
    Many {
        records: Vec<Record>,
        expected_version: Option<u64>,
        check_ids: bool,
        ack: Option<Ack>,
    },
    /// Shutdown: no more events are accepted after this one; the rest are drained.
    Close,
}

/// The durable side of the router: the writer, and the readers that catch handler actors up.
pub(crate) struct Durable {
    pub(crate) storage: Addr<StorageActor>,
    pub(crate) reader: Reader,
    /// The last position stored when the bus started.
    pub(crate) head: u64,
    /// How often the writer is asked to delete what retention allows (`None`: off).
    pub(crate) retention_every: Option<Duration>,
    /// Take an even share of the waiting publishes per commit ([`CommitGate::share`]), so
    /// that two commits alternate; otherwise all of them. Splitting pays when a commit costs
    /// little beyond its rows (`synchronous=NORMAL`: the arbiter's work overlaps the
    /// writer's), not when each commit waits for an fsync (`FULL`: fewer, larger commits).
    pub(crate) split_commits: bool,
    /// Other processes share the store (PostgreSQL): every actor waits for this process
    /// to claim its partition ([`Shared`]).
    pub(crate) shared: bool,
}

/// How often advanced checkpoints are written when no appends carry them.
pub(crate) const CHECKPOINT_FLUSH: Duration = Duration::from_millis(200);

/// One handler actor, as the router sees it.
pub(crate) struct Partition {
    pub(crate) deliver: Recipient<Deliver>,
    pub(crate) control: Recipient<Control>,
    /// What it was given and has not finished (durable bus: at most its mailbox capacity).
    pub(crate) load: Arc<Load>,
    /// Durable bus: its checkpoint at start, where it begins to read the store.
    pub(crate) resume_after: u64,
}

/// One subscription: its handler actors and its counters.
pub(crate) struct Subscription {
    pub(crate) name: Arc<str>,
    pub(crate) event_types: Vec<String>,
    pub(crate) partitions: Vec<Partition>,
    /// Most events in one delivery (so a mailbox never holds more than this waiting).
    pub(crate) capacity: usize,
    pub(crate) counters: Arc<HandlerCounters>,
}

pub(crate) struct RouterActor {
    subscriptions: Vec<Subscription>,
    by_type: HashMap<String, Vec<usize>>,
    /// Index of each subscription's first partition in a flat list of all partitions (plus the total at the end).
    partition_base: Vec<usize>,
    counters: Arc<BusCounters>,
    intake: Option<(IntakeRx, usize)>,
    close: Option<IntakeTx>,
    durable: Option<Durable>,
    /// Group commits sent and not yet handled (durable bus).
    gate: Rc<CommitGate>,
    /// Their results, handled in the order the chunks were sent.
    committed: InOrder<Committed>,
    /// The intake ended while commits were outstanding: drain once they are handled.
    drain_when_committed: bool,
    /// Durable bus: every stored event up to here has been routed (to the live actors, or
    /// left in the store for those behind). Idle actors learn it from watermarks.
    delivered_through: u64,
    /// Durable bus, per partition (flat index): live, or behind and reading the store.
    lanes: Vec<Lane>,
    /// Per partition (flat index): the claim this process holds on it, where other processes
    /// share the store; what its deliveries are fenced by.
    fences: Vec<Option<i64>>,
    /// Durable bus: other processes' events past the frontier, read once for all live lanes,
    /// and this process's commits held back behind them.
    tail: Tail,
    /// Shutdown waits for every lane to be live again before it drains.
    drain_when_caught_up: bool,
    drained: bool,
    /// Deliveries of this bus's own publishes (intake chunks in memory, commits on a durable
    /// bus): a shutdown closes the intake only once none happened during its last barrier.
    own_deliveries: u64,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl RouterActor {
    /// `chunk` bounds how many intake items the router takes at once.
    pub(crate) fn new(
        subscriptions: Vec<Subscription>,
        intake: IntakeRx,
        close: IntakeTx,
        chunk: usize,
        counters: Arc<BusCounters>,
        durable: Option<Durable>,
    ) -> Self {
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, g) in subscriptions.iter().enumerate() {
            for t in &g.event_types {
                by_type.entry(t.clone()).or_default().push(i);
            }
        }
        let mut partition_base = vec![0];
        for g in &subscriptions {
            partition_base.push(partition_base.last().copied().unwrap_or(0) + g.partitions.len());
        }
        let delivered_through = durable.as_ref().map_or(0, |d| d.head);
        counters
            .head
            .store(delivered_through, std::sync::atomic::Ordering::Relaxed);
        let lanes: Vec<Lane> = match &durable {
            Some(d) if d.shared => subscriptions
                .iter()
                .flat_map(|g| g.partitions.iter().map(|_| Lane::Elsewhere))
                .collect(),
            Some(_) => subscriptions
                .iter()
                .flat_map(|g| g.partitions.iter().map(|s| Lane::behind(s.resume_after)))
                .collect(),
            None => Vec::new(),
        };
        let fences = vec![None; lanes.len()];
        Self {
            subscriptions,
            by_type,
            partition_base,
            counters,
            intake: Some((intake, chunk)),
            close: Some(close),
            durable,
            gate: Rc::default(),
            committed: InOrder::default(),
            drain_when_committed: false,
            delivered_through,
            lanes,
            fences,
            tail: Tail::default(),
            drain_when_caught_up: false,
            drained: false,
            own_deliveries: 0,
            drain_waiters: Vec::new(),
        }
    }

    /// Hands `records` to the handler actors and keeps the router waiting (no further intake)
    /// until every actor has taken its part from its mailbox.
    fn deliver(
        &mut self,
        records: impl Iterator<Item = Record>,
        only: Option<usize>,
        ctx: &mut Context<Self>,
    ) {
        let delivery = self.delivery(records, only);
        ctx.wait(actix::fut::wrap_future(delivery));
    }

    /// Splits `records` by handler actor (flat partition index), in order, for the subscriptions
    /// of their types (`only` one of them, if given).
    fn route(
        &mut self,
        records: impl Iterator<Item = Record>,
        only: Option<usize>,
    ) -> Vec<Vec<Record>> {
        let mut batches: Vec<Vec<Record>> =
            vec![Vec::new(); self.partition_base.last().copied().unwrap_or(0)];
        let expected = records.size_hint().0;
        let mut unrouted = 0u64;
        // Events mostly come in runs of one type: skip the map lookup for a repeat.
        let mut last: Option<(Cow<'static, str>, &[usize])> = None;
        for record in records {
            let subscriptions = match &last {
                Some((t, subscriptions)) if *t == record.meta.event_type => *subscriptions,
                _ => match self.by_type.get(&*record.meta.event_type) {
                    Some(subscriptions) => {
                        last = Some((record.meta.event_type.clone(), subscriptions.as_slice()));
                        subscriptions.as_slice()
                    }
                    None => {
                        unrouted += 1;
                        continue;
                    }
                },
            };
            for &g in subscriptions
                .iter()
                .filter(|g| only.is_none_or(|o| o == **g))
            {
                let partitions = self.subscriptions[g].partitions.len() as u64;
                let partition = self.partition_base[g] + (record.stream_hash % partitions) as usize;
                let batch = &mut batches[partition];
                if batch.capacity() == 0 {
                    // Its share of the records at once, rather than growing push by push.
                    batch.reserve(expected.div_ceil(partitions as usize));
                }
                batch.push(record.clone());
            }
        }
        if unrouted > 0 {
            HandlerCounters::add(&self.counters.unrouted, unrouted);
        }
        batches
    }

    /// Every stored event up to `through` has been routed.
    fn routed_through(&mut self, through: u64) {
        self.delivered_through = through;
        (self.counters.head).store(through, std::sync::atomic::Ordering::Relaxed);
    }

    /// The flat partition index's (subscription, partition within it).
    fn locate(&self, flat: usize) -> (usize, usize) {
        let g = self.partition_base.partition_point(|&base| base <= flat) - 1;
        (g, flat - self.partition_base[g])
    }

    /// The future that hands `records` to the handler actors with `send().await`; done once
    /// each took its part (in memory; and redriven letters).
    fn delivery(
        &mut self,
        records: impl Iterator<Item = Record>,
        only: Option<usize>,
    ) -> LocalBoxFuture<'static, ()> {
        let batches = self.route(records, only);
        let targets: Vec<_> = batches
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .collect();
        if targets.is_empty() {
            return async {}.boxed_local();
        }
        let sends = targets.into_iter().map(|(flat, records)| {
            let (g, partition) = self.locate(flat);
            let subscription = &self.subscriptions[g];
            HandlerCounters::add(&subscription.counters.delivered, records.len() as u64);
            let recipient = subscription.partitions[partition].deliver.clone();
            let capacity = subscription.capacity;
            async move {
                // One partition's chunks go one after another: their order is the stream order.
                let mut records = records;
                while !records.is_empty() {
                    let rest = records.split_off(records.len().min(capacity));
                    let deliver = Deliver {
                        records,
                        through: None,
                        load: 0,
                        fence: None,
                    };
                    if recipient.send(deliver).await.is_err() {
                        log::error!("a handler actor stopped before the bus was shut down");
                    }
                    records = rest;
                }
            }
        });
        join_all(sends).map(|_| ()).boxed_local()
    }

    fn start_intake(&mut self, ctx: &mut Context<Self>) {
        let Some((mut rx, chunk)) = self.intake.take() else {
            return;
        };
        let gate = self.durable.as_ref().map(|_| Rc::clone(&self.gate));
        let split = self.durable.as_ref().is_some_and(|d| d.split_commits);
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
            let limit = match &gate {
                Some(gate) if !gate.is_open(cx) => return Poll::Pending,
                Some(gate) if split => gate.share(rx.len(), chunk),
                Some(_) => chunk,
                None => chunk,
            };
            // Room for what is queued now (none: nothing allocated before it is needed).
            let mut items = Vec::with_capacity(rx.len().min(limit));
            match rx.poll_recv_many(cx, &mut items, limit) {
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

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            // The system is being dropped before the router ever ran (the application failed
            // right after building the bus): there is nothing to start, and no timer could.
            return;
        }
        ctx.run_interval(crate::telemetry::REPORT_EVERY, |act, _| {
            let handlers = act.subscriptions.iter().map(|s| &*s.counters);
            crate::telemetry::report_bus(&act.counters, act.durable.is_some(), handlers);
        });
        match &self.durable {
            Some(durable) => {
                let storage = durable.storage.clone();
                if let Some(every) = durable.retention_every {
                    let storage = storage.clone();
                    ctx.run_interval(every, move |_, _| storage.do_send(Prune));
                }
                ctx.run_interval(CHECKPOINT_FLUSH, move |act, ctx| {
                    act.watermarks(false);
                    let flush = storage.send(FlushCheckpoints);
                    ctx.spawn(actix::fut::wrap_future(flush).map(|_, _, _| ()));
                });
                self.redrive_requested(ctx);
            }
            None => self.start_intake(ctx),
        }
    }
}

impl StreamHandler<Vec<Intake>> for RouterActor {
    fn handle(&mut self, items: Vec<Intake>, ctx: &mut Context<Self>) {
        if let Some(durable) = &self.durable {
            let storage = durable.storage.clone();
            self.commit_and_deliver(items, storage, ctx);
            return;
        }
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Intake::One(r, _) => records.push(r),
                Intake::Many { records: rs, .. } => records.extend(rs),
                Intake::Close => {}
            }
        }
        self.own_deliveries += 1;
        self.deliver(records.into_iter(), None, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The intake is closed and empty: once the outstanding commits are answered and
        // delivered, wait for every mailbox to run dry.
        if self.gate.is_idle() {
            self.finish_drain(ctx);
        } else {
            self.drain_when_committed = true;
        }
    }
}
