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
use diesel::Connection as _;
use futures_util::future::{join_all, LocalBoxFuture};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::actors::handler::{Control, Deliver};
use crate::actors::pipeline::{acknowledge, CommitGate, Committed, InOrder};
use crate::actors::storage::{Append, FlushCheckpoints, StorageActor};
use crate::bus::Receipt;
use crate::error::Result;
use crate::event::Record;
use crate::stats::{BusCounters, HandlerCounters};
use crate::storage::log::{self as store_log, Unit};
use crate::storage::pool::SqlitePool;

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

/// The durable side of the router: the writer, the readers, and where catch-up starts.
pub(crate) struct Durable {
    pub(crate) storage: Addr<StorageActor>,
    pub(crate) pool: SqlitePool,
    /// Catch-up replays events after this position before live intake starts.
    pub(crate) replay_after: i64,
    /// Take an even share of the waiting publishes per commit ([`CommitGate::share`]), so
    /// that two commits alternate; otherwise all of them. Splitting pays when a commit costs
    /// little beyond its rows (`synchronous=NORMAL`: the arbiter's work overlaps the
    /// writer's), not when each commit waits for an fsync (`FULL`: fewer, larger commits).
    pub(crate) split_commits: bool,
}

/// Events read per catch-up page.
const CATCH_UP_PAGE: i64 = 1000;
/// How often advanced checkpoints are written when no appends carry them.
pub(crate) const CHECKPOINT_FLUSH: Duration = Duration::from_millis(200);

/// One handler actor, as the router sees it.
pub(crate) struct Slot {
    pub(crate) deliver: Recipient<Deliver>,
    pub(crate) control: Recipient<Control>,
}

/// One subscription: its handler actors and its counters.
pub(crate) struct Group {
    pub(crate) name: Arc<str>,
    pub(crate) event_types: Vec<String>,
    pub(crate) slots: Vec<Slot>,
    /// Most events in one delivery (so a mailbox never holds more than this waiting).
    pub(crate) capacity: usize,
    pub(crate) counters: Arc<HandlerCounters>,
}

pub(crate) struct RouterActor {
    groups: Vec<Group>,
    by_type: HashMap<String, Vec<usize>>,
    /// Index of each group's first slot in a flat list of all slots (plus the total at the end).
    slot_base: Vec<usize>,
    counters: Arc<BusCounters>,
    intake: Option<(mpsc::Receiver<Intake>, usize)>,
    close: Option<mpsc::Sender<Intake>>,
    durable: Option<Durable>,
    /// Group commits sent and not yet handled (durable bus).
    gate: Rc<CommitGate>,
    /// Their results, handled in the order the chunks were sent.
    committed: InOrder<Committed>,
    /// The intake ended while commits were outstanding: drain once they are handled.
    drain_when_committed: bool,
    /// Durable bus: every stored event up to here has been delivered (or was of no
    /// subscribed type). Idle handler actors learn it from watermarks ([`Self::watermarks`]).
    delivered_through: u64,
    /// Per slot (flat index): the last watermark sent with a delivery or alone.
    sent_through: Vec<u64>,
    /// Per slot: a watermark alone is on its way (at most one, so mailboxes stay bounded).
    watermark_in_flight: Vec<bool>,
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
        durable: Option<Durable>,
    ) -> Self {
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for t in &g.event_types {
                by_type.entry(t.clone()).or_default().push(i);
            }
        }
        let mut slot_base = vec![0];
        for g in &groups {
            slot_base.push(slot_base.last().copied().unwrap_or(0) + g.slots.len());
        }
        let slots = slot_base.last().copied().unwrap_or(0);
        let delivered_through = durable.as_ref().map_or(0, |d| d.replay_after.max(0) as u64);
        Self {
            groups,
            by_type,
            slot_base,
            counters,
            intake: Some((intake, chunk)),
            close: Some(close),
            durable,
            gate: Rc::default(),
            committed: InOrder::default(),
            drain_when_committed: false,
            delivered_through,
            sent_through: vec![0; slots],
            watermark_in_flight: vec![false; slots],
            drained: false,
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
        let delivery = self.delivery(records, only, None);
        ctx.wait(actix::fut::wrap_future(delivery));
    }

    /// The future that hands `records` to the handler actors; done once each took its part.
    /// `through` (durable bus): every stored event up to it is in this delivery or an
    /// earlier one; each actor that gets records learns it with them.
    fn delivery(
        &mut self,
        records: impl Iterator<Item = Record>,
        only: Option<usize>,
        through: Option<u64>,
    ) -> LocalBoxFuture<'static, ()> {
        if let Some(through) = through {
            self.delivered_through = self.delivered_through.max(through);
        }
        let mut batches: Vec<Vec<Record>> =
            vec![Vec::new(); self.slot_base.last().copied().unwrap_or(0)];
        let mut unrouted = 0u64;
        // Events mostly come in runs of one type: skip the map lookup for a repeat.
        let mut last: Option<(Cow<'static, str>, &[usize])> = None;
        for record in records {
            let groups = match &last {
                Some((t, groups)) if *t == record.meta.event_type => *groups,
                _ => match self.by_type.get(&*record.meta.event_type) {
                    Some(groups) => {
                        last = Some((record.meta.event_type.clone(), groups.as_slice()));
                        groups.as_slice()
                    }
                    None => {
                        unrouted += 1;
                        continue;
                    }
                },
            };
            for &g in groups.iter().filter(|g| only.is_none_or(|o| o == **g)) {
                let slots = self.groups[g].slots.len() as u64;
                let slot = self.slot_base[g] + (record.partition % slots) as usize;
                batches[slot].push(record.clone());
            }
        }
        if unrouted > 0 {
            HandlerCounters::add(&self.counters.unrouted, unrouted);
        }
        let targets: Vec<_> = batches
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .collect();
        if targets.is_empty() {
            return async {}.boxed_local();
        }
        let sends = targets.into_iter().map(|(flat, records)| {
            if let Some(through) = through {
                self.sent_through[flat] = self.sent_through[flat].max(through);
            }
            let g = self.slot_base.partition_point(|&base| base <= flat) - 1;
            let slot = flat - self.slot_base[g];
            let group = &self.groups[g];
            HandlerCounters::add(&group.counters.delivered, records.len() as u64);
            let recipient = group.slots[slot].deliver.clone();
            let capacity = group.capacity;
            async move {
                // One slot's chunks go one after another: their order is the stream order.
                let mut records = records;
                while !records.is_empty() {
                    let rest = records.split_off(records.len().min(capacity));
                    // The watermark goes with the last part: it covers the parts before.
                    let through = if rest.is_empty() { through } else { None };
                    let deliver = Deliver { records, through };
                    if recipient.send(deliver).await.is_err() {
                        log::error!("a handler actor stopped before the bus was shut down");
                    }
                    records = rest;
                }
            }
        });
        join_all(sends).map(|_| ()).boxed_local()
    }

    /// Stores one intake chunk (group commit), answers each publisher, then delivers what was
    /// stored. A failed commit fails every publisher of the chunk and delivers nothing.
    fn commit_and_deliver(
        &mut self,
        items: Vec<Intake>,
        storage: Addr<StorageActor>,
        ctx: &mut Context<Self>,
    ) {
        let mut units = Vec::with_capacity(items.len());
        let mut acks = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Intake::One(record, ack) => {
                    units.push(Unit {
                        records: vec![record],
                        expected_version: None,
                        check_ids: false,
                    });
                    acks.push(ack);
                }
                Intake::Many {
                    records,
                    expected_version,
                    check_ids,
                    ack,
                } => {
                    units.push(Unit {
                        records,
                        expected_version,
                        check_ids,
                    });
                    acks.push(ack);
                }
                Intake::Close => {}
            }
        }
        if units.is_empty() {
            return;
        }
        log::trace!("group commit of {} publish(es)", units.len());
        let ticket = self.committed.ticket();
        self.gate.enter(acks.len());
        let committed = storage.send(Append(units));
        // Spawned, not waited for: the router gathers the next chunk meanwhile (the gate
        // bounds how many are outstanding), and handles results in the order sent.
        ctx.spawn(
            actix::fut::wrap_future(committed).map(move |reply, act: &mut Self, ctx| {
                act.commit_done(ticket, (reply, acks), ctx);
            }),
        );
    }

    /// A chunk's commit came back: answer the publishers and deliver, in the order the
    /// chunks were sent; the deliveries keep the router waiting until handlers took them.
    fn commit_done(&mut self, ticket: u64, result: Committed, ctx: &mut Context<Self>) {
        let due = self.committed.arrived(ticket, result);
        if due.is_empty() {
            return;
        }
        let deliveries: Vec<_> = due
            .into_iter()
            .map(|(reply, acks)| {
                self.gate.leave(acks.len());
                let stored = acknowledge(reply, acks);
                // Positions grow with every commit: the newest of this one covers all before.
                let through = stored.iter().filter_map(|r| r.meta.position).max();
                self.delivery(stored.into_iter(), None, through)
            })
            .collect();
        // One waited future: actix polls the newest wait first, so two would run out of order.
        let delivered = async move {
            for delivery in deliveries {
                delivery.await;
            }
        };
        ctx.wait(
            actix::fut::wrap_future(delivered).map(|(), act: &mut Self, ctx| {
                if act.drain_when_committed && act.gate.is_idle() {
                    act.drain_when_committed = false;
                    act.finish_drain(ctx);
                }
            }),
        );
    }

    /// Hands back the dead letters an operator asked to redrive while no bus ran (`actorbus
    /// dlq redrive`), before anything else; then catches up.
    fn redrive_requested(&mut self, ctx: &mut Context<Self>) {
        let Some(durable) = &self.durable else {
            return;
        };
        let pool = durable.pool.clone();
        let after = durable.replay_after;
        let read = read_in_background(pool, store_log::load_requested_redrives);
        ctx.wait(
            actix::fut::wrap_future(read).map(move |rows, act: &mut Self, ctx| {
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => {
                        log::error!(
                            "reading requested redrives failed: {e}; they wait for the next start"
                        );
                        Vec::new()
                    }
                };
                let mut deliveries = Vec::new();
                for (g, group) in act.groups.iter().enumerate() {
                    let records: Vec<Record> = rows
                        .iter()
                        .filter(|(letter, _)| *letter.handler == *group.name)
                        .map(|(letter, event)| {
                            let mut record = event.clone().into_record();
                            record.letter = Some(letter.id);
                            record
                        })
                        .collect();
                    if !records.is_empty() {
                        log::info!(
                            "redriving {} dead letter(s) of `{}`",
                            records.len(),
                            group.name
                        );
                        deliveries.push((g, records));
                    }
                }
                let mut futures = Vec::new();
                for (g, records) in deliveries {
                    futures.push(act.delivery(records.into_iter(), Some(g), None));
                }
                ctx.wait(
                    actix::fut::wrap_future(join_all(futures))
                        .map(move |_, act: &mut Self, ctx| act.catch_up(after, ctx)),
                );
            }),
        );
    }

    /// Replays stored events after `after` page by page, then starts live intake: no gap
    /// (intake waits until the log is read to its end) and no duplicate (handler actors skip
    /// what their checkpoint already covers).
    fn catch_up(&mut self, after: i64, ctx: &mut Context<Self>) {
        let Some(durable) = &self.durable else {
            self.start_intake(ctx);
            return;
        };
        let pool = durable.pool.clone();
        let types: Vec<String> = self.by_type.keys().cloned().collect();
        let read = read_in_background(pool, move |conn| {
            // In one read transaction: the head is that of the log the page was read from.
            conn.transaction(|conn| {
                let rows = store_log::read_types_after(conn, &types, after, CATCH_UP_PAGE)?;
                Ok((rows, store_log::head(conn)?))
            })
        });
        ctx.wait(
            actix::fut::wrap_future(read).map(move |rows, act: &mut Self, ctx| match rows {
                Ok((rows, head)) if rows.is_empty() => {
                    // Nothing of a subscribed type up to the head: all of it is delivered.
                    // This bus is the store's only writer, and intake has not started.
                    act.delivered_through = act.delivered_through.max(head.max(0) as u64);
                    act.start_intake(ctx)
                }
                Ok((rows, _)) => {
                    let last = rows.last().map_or(after, |r| r.position);
                    let records: Vec<Record> = rows.into_iter().map(|r| r.into_record()).collect();
                    let delivery =
                        act.delivery(records.into_iter(), None, Some(last.max(0) as u64));
                    ctx.wait(
                        actix::fut::wrap_future(delivery)
                            .map(move |(), act: &mut Self, ctx| act.catch_up(last, ctx)),
                    );
                }
                Err(e) => {
                    log::error!(
                        "catch-up read after position {after} failed: {e}; retrying in 1 s"
                    );
                    ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                        act.catch_up(after, ctx)
                    });
                }
            }),
        );
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
            let mut items = Vec::new();
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

    /// Tells every handler actor that got nothing since its last watermark how far the log
    /// has been delivered, so that its checkpoint keeps up (lag 0 when drained) and
    /// retention is not held back by a subscription whose events stopped coming. Sent alone,
    /// not waited for; one at a time per actor.
    fn watermarks(&mut self, ctx: &mut Context<Self>) {
        if self.durable.is_none() {
            return;
        }
        let through = self.delivered_through;
        for (g, group) in self.groups.iter().enumerate() {
            for (i, slot) in group.slots.iter().enumerate() {
                let flat = self.slot_base[g] + i;
                if self.sent_through[flat] >= through || self.watermark_in_flight[flat] {
                    continue;
                }
                self.sent_through[flat] = through;
                self.watermark_in_flight[flat] = true;
                let sent = slot.deliver.send(Deliver {
                    records: Vec::new(),
                    through: Some(through),
                });
                ctx.spawn(
                    actix::fut::wrap_future(sent).map(move |_, act: &mut Self, _| {
                        act.watermark_in_flight[flat] = false;
                    }),
                );
            }
        }
    }

    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        // Every actor learns the final watermark first, then drains; the checkpoints and dead
        // letters are written once all of them are done (so not a message earlier).
        let through = self.delivered_through;
        let mut finals = Vec::new();
        if self.durable.is_some() {
            for (g, group) in self.groups.iter().enumerate() {
                for (i, slot) in group.slots.iter().enumerate() {
                    if self.sent_through[self.slot_base[g] + i] < through {
                        finals.push(slot.deliver.send(Deliver {
                            records: Vec::new(),
                            through: Some(through),
                        }));
                    }
                }
            }
        }
        let controls: Vec<_> = self
            .groups
            .iter()
            .flat_map(|g| g.slots.iter().map(|s| s.control.clone()))
            .collect();
        let storage = self.durable.as_ref().map(|d| d.storage.clone());
        let done = async move {
            join_all(finals).await;
            join_all(controls.iter().map(|c| c.send(Control::Drain))).await;
            if let Some(storage) = storage {
                match storage.send(FlushCheckpoints).await {
                    Ok(Err(e)) => log::error!("writing checkpoints at shutdown failed: {e}"),
                    Err(_) => log::error!("the storage actor stopped before shutdown"),
                    Ok(Ok(())) => {}
                }
            }
        };
        ctx.wait(
            actix::fut::wrap_future(done).map(|(), act: &mut Self, ctx| {
                act.drained = true;
                for waiter in act.drain_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                // Dropping the slots lets every handler actor stop and drop its handler.
                ctx.stop();
            }),
        );
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match &self.durable {
            Some(durable) => {
                let storage = durable.storage.clone();
                ctx.run_interval(CHECKPOINT_FLUSH, move |act, ctx| {
                    act.watermarks(ctx);
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

/// Runs a read on the blocking pool with a pooled connection, so the arbiter never waits for
/// SQLite; any failure comes back as its message.
async fn read_in_background<T: Send + 'static>(
    pool: SqlitePool,
    read: impl FnOnce(&mut diesel::SqliteConnection) -> diesel::QueryResult<T> + Send + 'static,
) -> std::result::Result<T, String> {
    let joined = actix_rt::task::spawn_blocking(move || {
        let mut conn = pool.get().map_err(|e| e.to_string())?;
        read(&mut conn).map_err(|e| e.to_string())
    })
    .await;
    joined.map_err(|e| e.to_string())?
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
        ctx.wait(
            actix::fut::wrap_future(join_all(resumes)).map(move |_, act: &mut Self, ctx| {
                act.deliver(msg.records.into_iter(), Some(msg.group), ctx)
            }),
        );
    }
}
