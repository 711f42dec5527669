//! Lanes: on a durable bus the log is the buffer between the router and each handler actor.
//!
//! A live actor gets its part of every commit at once (`do_send`), as long as what it was
//! given and has not finished ([`Load`](crate::actors::handler::Load)) stays within its
//! mailbox capacity. An actor without room falls *behind*: the router stops handing it live
//! events and it reads them back from the store instead, in pages no larger than its free
//! room, until a page reaches the router's live frontier; then it is live again. Its checkpoint
//! bounds where it starts reading, the page that reaches the frontier names the position up
//! to which live events are already covered (`skip_through`), so the switch has no gap and no
//! duplicate. Nothing here waits for a handler: a slow or failing subscription lags, the
//! publishers and the other subscriptions go on at full speed, and memory stays bounded.
//!
//! At start every actor is behind at its checkpoint: catch-up after a restart is the same path.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::RouterActor;
use crate::actors::handler::Deliver;
use crate::event::Record;
use crate::stats::HandlerCounters;
use crate::storage::backend::in_background;

/// How one handler actor of a durable bus gets its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Each commit's part is handed over at once; stored events up to `skip_through` were
    /// already read from the store for it, and are not handed over again.
    Live {
        skip_through: u64,
        sent_through: u64,
    },
    /// Reads from the store every event of its subscription after `after`; `reading` while a
    /// page is on its way.
    Behind { after: u64, reading: bool },
    /// Another process owns this partition (a PostgreSQL store shared by several
    /// processes): nothing is handed to this actor until this process claims it.
    Elsewhere,
}

impl Lane {
    /// A lane that starts by reading the store after `after` (the actor's checkpoint).
    pub(super) fn behind(after: u64) -> Self {
        Lane::Behind {
            after,
            reading: false,
        }
    }

    /// Nothing is on its way to the actor from the store: live, or owned elsewhere.
    pub(super) fn is_settled(&self) -> bool {
        matches!(self, Lane::Live { .. } | Lane::Elsewhere)
    }
}

/// The position up to which a page read after `after`, of at most `limit` events, covers the
/// log: a short page read everything stored up to the head of its snapshot; a full one, up
/// to its last event.
pub(super) fn covered(stored: &[Record], limit: usize, head: u64, after: u64) -> u64 {
    if stored.len() < limit {
        head
    } else {
        stored.last().and_then(|r| r.meta.position).unwrap_or(after)
    }
    .max(after)
}

/// The longest a failed catch-up read waits before it is tried again.
const READ_RETRY: Duration = Duration::from_secs(1);

impl RouterActor {
    /// Every actor of a durable bus begins behind, at its checkpoint.
    pub(super) fn start_lanes(&mut self, ctx: &mut Context<Self>) {
        for flat in 0..self.lanes.len() {
            if let Lane::Behind { after, .. } = self.lanes[flat] {
                let (g, partition) = self.locate(flat);
                self.subscriptions[g].counters.start_at(partition, after);
            }
            self.read_next_page(flat, ctx);
        }
    }

    /// Hands `records` that follow the frontier without a gap (positions up to `through`)
    /// to the live actors with room; an actor without room falls behind. Never waits.
    pub(super) fn route_live(
        &mut self,
        records: Vec<Record>,
        through: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let before = self.delivered_through;
        let Some(through) = through else { return };
        self.routed_through(before.max(through));
        let batches = self.route(records.into_iter(), None);
        for (flat, mut records) in batches.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let Lane::Live {
                skip_through,
                sent_through,
            } = self.lanes[flat]
            else {
                continue; // it reads them from the store
            };
            records.retain(|r| r.meta.position.is_some_and(|p| p > skip_through));
            if records.is_empty() {
                continue;
            }
            let (g, partition) = self.locate(flat);
            let subscription = &self.subscriptions[g];
            let load = &subscription.partitions[partition].load;
            if load.queued() + records.len() > subscription.capacity {
                // No room: everything up to the previous commit was handed over; the rest
                // it reads back from the store, at its own pace.
                let after = before.max(skip_through).max(sent_through);
                log::debug!(
                    "`{}` #{partition} falls behind at position {after}",
                    subscription.name
                );
                self.lanes[flat] = Lane::behind(after);
                self.read_next_page(flat, ctx);
                continue;
            }
            HandlerCounters::add(&subscription.counters.delivered, records.len() as u64);
            let units = records.len();
            load.add(units);
            subscription.partitions[partition].deliver.do_send(Deliver {
                records,
                through: Some(through),
                load: units,
                fence: self.fences[flat],
            });
            self.lanes[flat] = Lane::Live {
                skip_through,
                sent_through: through,
            };
        }
    }

    /// Tells every idle live actor that got nothing since its last watermark how far the log
    /// has been routed, so that its checkpoint keeps up (lag 0 when drained) and retention is
    /// not held back by a subscription whose events stopped coming. One unit of its load
    /// each; `always` (at shutdown) sends it to busy actors too.
    pub(super) fn watermarks(&mut self, always: bool) {
        let through = self.delivered_through;
        for flat in 0..self.lanes.len() {
            let Lane::Live {
                skip_through,
                sent_through,
            } = self.lanes[flat]
            else {
                continue;
            };
            let (g, partition) = self.locate(flat);
            let target = &self.subscriptions[g].partitions[partition];
            if sent_through >= through || (!always && target.load.queued() > 0) {
                continue;
            }
            target.load.add(1);
            target.deliver.do_send(Deliver {
                records: Vec::new(),
                through: Some(through),
                load: 1,
                fence: self.fences[flat],
            });
            self.lanes[flat] = Lane::Live {
                skip_through,
                sent_through: through,
            };
        }
    }

    /// Reads the next page for a lane that is behind, once its actor has room for half a
    /// mailbox: at most as many events as it has room for, and the head, in one snapshot.
    fn read_next_page(&mut self, flat: usize, ctx: &mut Context<Self>) {
        let Lane::Behind {
            after,
            reading: false,
        } = self.lanes[flat]
        else {
            return;
        };
        let Some(durable) = &self.durable else { return };
        self.lanes[flat] = Lane::Behind {
            after,
            reading: true,
        };
        let (g, partition) = self.locate(flat);
        let subscription = &self.subscriptions[g];
        let load = Arc::clone(&subscription.partitions[partition].load);
        let capacity = subscription.capacity;
        let types = subscription.event_types.clone();
        let reader = durable.reader.clone();
        let fence = self.fences[flat];
        let page = async move {
            load.at_most(capacity / 2).await;
            let room = capacity.saturating_sub(load.queued()).max(1);
            let read = in_background(&reader, move |reader| {
                reader.events_of_types_after(&types, after, room)
            });
            (read.await, room)
        };
        ctx.spawn(
            actix::fut::wrap_future(page).map(move |(read, room), act: &mut Self, ctx| {
                let current = act.lanes[flat]
                    == Lane::Behind {
                        after,
                        reading: true,
                    }
                    && act.fences[flat] == fence;
                // Otherwise the partition changed hands while the page was read: drop it.
                if current {
                    act.page_read(flat, after, room, read, ctx);
                }
            }),
        );
    }

    /// A page came back: hand this actor its part, then read on or go live.
    fn page_read(
        &mut self,
        flat: usize,
        after: u64,
        room: usize,
        read: Result<(Vec<Record>, u64), crate::storage::StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let (stored, head) = match read {
            Ok(page) => page,
            Err(e) => {
                let (g, partition) = self.locate(flat);
                log::warn!(
                    "`{}` #{partition}: reading its events after position {after} failed: {}; \
                     retrying in {READ_RETRY:?}",
                    self.subscriptions[g].name,
                    crate::error::chain(&e)
                );
                self.lanes[flat] = Lane::behind(after);
                ctx.run_later(READ_RETRY, move |act, ctx| act.read_next_page(flat, ctx));
                return;
            }
        };
        let covered = covered(&stored, room, head, after);
        let (g, partition) = self.locate(flat);
        let subscription = &self.subscriptions[g];
        let partitions = subscription.partitions.len() as u64;
        let records: Vec<Record> = stored
            .into_iter()
            .filter(|r| (r.stream_hash % partitions) as usize == partition)
            .collect();
        HandlerCounters::add(&subscription.counters.delivered, records.len() as u64);
        let units = records.len().max(1);
        let target = &subscription.partitions[partition];
        target.load.add(units);
        target.deliver.do_send(Deliver {
            records,
            through: Some(covered),
            load: units,
            fence: self.fences[flat],
        });
        if covered >= self.delivered_through {
            // Every commit routed so far is covered: live from here, and what the page read
            // beyond the frontier (commits not yet routed) is not handed over twice.
            self.lanes[flat] = Lane::Live {
                skip_through: covered,
                sent_through: covered,
            };
            self.drain_if_settled(ctx);
        } else {
            self.lanes[flat] = Lane::behind(covered);
            self.read_next_page(flat, ctx);
        }
    }

    /// Every live actor reads what follows `before` from the store (what the tail would
    /// have brought in: see [`tail`](super::tail)).
    pub(super) fn fall_behind(&mut self, before: u64, ctx: &mut Context<Self>) {
        for flat in 0..self.lanes.len() {
            if let Lane::Live {
                skip_through,
                sent_through,
            } = self.lanes[flat]
            {
                self.lanes[flat] = Lane::behind(before.max(skip_through).max(sent_through));
                self.read_next_page(flat, ctx);
            }
        }
    }

    /// This process claimed the partition `flat` under `token`: its actor starts again after
    /// the stored `checkpoint`, reading the store.
    pub(super) fn claimed(
        &mut self,
        flat: usize,
        token: i64,
        checkpoint: u64,
        ctx: &mut Context<Self>,
    ) {
        let (g, partition) = self.locate(flat);
        self.fences[flat] = Some(token);
        self.subscriptions[g]
            .counters
            .start_at(partition, checkpoint);
        self.subscriptions[g].partitions[partition]
            .control
            .do_send(crate::actors::handler::Control::Claimed { checkpoint });
        self.lanes[flat] = Lane::behind(checkpoint);
        self.read_next_page(flat, ctx);
    }

    /// Another process owns the partition `flat` now: nothing more goes to its actor.
    pub(super) fn released(&mut self, flat: usize, ctx: &mut Context<Self>) {
        let (g, partition) = self.locate(flat);
        self.subscriptions[g].counters.gone_elsewhere(partition);
        self.lanes[flat] = Lane::Elsewhere;
        self.fences[flat] = None;
        self.drain_if_settled(ctx);
    }

    /// Nothing is on its way from the store: every lane is settled, and no tail read.
    pub(super) fn is_settled(&self) -> bool {
        self.tail.is_settled() && self.lanes.iter().all(Lane::is_settled)
    }

    /// A shutdown that waited for the lanes drains once none reads the store any more.
    pub(super) fn drain_if_settled(&mut self, ctx: &mut Context<Self>) {
        if self.drain_when_caught_up && self.is_settled() {
            self.drain_when_caught_up = false;
            self.finish_drain(ctx);
        }
    }
}
