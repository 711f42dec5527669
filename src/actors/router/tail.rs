//! The tail: events other processes appended past the router's frontier (a store shared by
//! several processes), read from the store once for every live lane.
//!
//! The router hands live actors each commit in position order. When a commit of this process
//! starts past the frontier, or another process's append is announced
//! ([`Change::Appended`](crate::storage::backend::Change)), the events in between are in the
//! store only. One read of every subscribed type from the frontier brings them in; they are
//! routed like a commit of this process, and the commits that came back meanwhile wait in
//! order behind it ([`Tail::held`]), so no live actor leaves its lane and no lane reads the
//! store on its own. Only when the held commits outgrow [`HOLD_AT_MOST`] (the store is read
//! more slowly than it is appended to), or the read fails, do the live lanes fall behind and
//! read for themselves, as on any full mailbox.

use std::collections::VecDeque;

use super::*;

/// Most events one tail read brings in.
const TAIL_PAGE: usize = 4096;

/// Most events of this process's own commits held back behind a tail read; past it, the live
/// lanes read from the store instead.
const HOLD_AT_MOST: usize = 16 * 1024;

/// Commits waiting behind a tail read, and the read.
#[derive(Default)]
pub(super) struct Tail {
    /// A read is on its way; `generation` tells a stale answer (after a fall-back) apart.
    reading: bool,
    generation: u64,
    /// The newest head announced by another process.
    announced: u64,
    /// This process's commits not yet routed (records, newest position), in commit order.
    held: VecDeque<(Vec<Record>, Option<u64>)>,
    held_events: usize,
    /// The held commits are routed once the arbiter has run what this turn woke.
    routing_soon: bool,
}

impl Tail {
    /// Nothing is read or held back.
    pub(super) fn is_settled(&self) -> bool {
        !self.reading && self.held.is_empty()
    }
}

impl RouterActor {
    /// Routes a commit of this process (positions up to `through`) to the live lanes, after
    /// whatever other processes stored before it, and after the tasks this turn of the
    /// arbiter woke: the publishers just answered publish again first, so that the next
    /// commit is gathered and on its way to the writer before handler actors on this arbiter
    /// take its share of time (with `FULL`, where one commit takes every waiting publish, the
    /// writer was idle meanwhile). Commits stay in order: they wait in `held`.
    pub(super) fn deliver_live(
        &mut self,
        records: Vec<Record>,
        through: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        self.tail.held_events += records.len();
        self.tail.held.push_back((records, through));
        if self.tail.reading && self.tail.held_events > HOLD_AT_MOST {
            self.tail_falls_back(ctx);
        }
        if !self.tail.routing_soon {
            self.tail.routing_soon = true;
            ctx.spawn(actix::fut::wrap_future(tokio::task::yield_now()).map(
                |(), act: &mut Self, ctx| {
                    act.tail.routing_soon = false;
                    act.route_held(ctx);
                },
            ));
        }
    }

    /// Another process stored events up to `head`.
    pub(super) fn appended_elsewhere(&mut self, head: u64, ctx: &mut Context<Self>) {
        self.tail.announced = self.tail.announced.max(head);
        if !self.tail.is_settled() || head <= self.delivered_through {
            return;
        }
        if self.any_live() {
            self.read_tail(ctx);
        } else {
            // No actor takes live events: those that read the store read up to here.
            self.routed_through(head);
        }
    }

    /// Routes the held commits in order, until one starts past the frontier (then the tail
    /// is read first).
    fn route_held(&mut self, ctx: &mut Context<Self>) {
        while !self.tail.reading {
            let Some((mut records, through)) = self.tail.held.pop_front() else {
                break;
            };
            self.tail.held_events -= records.len();
            let before = self.delivered_through;
            // A tail read may have brought some of them in already.
            records.retain(|r| r.meta.position.is_some_and(|p| p > before));
            let first = records.iter().filter_map(|r| r.meta.position).min();
            if first.is_some_and(|first| first > before + 1) && self.any_live() {
                self.tail.held_events += records.len();
                self.tail.held.push_front((records, through));
                self.read_tail(ctx);
                break;
            }
            self.route_live(records, through, ctx);
        }
        if self.tail.is_settled() {
            let announced = self.tail.announced;
            self.appended_elsewhere(announced, ctx);
        }
        self.drain_if_settled(ctx);
    }

    /// Some actor takes live events.
    fn any_live(&self) -> bool {
        self.lanes.iter().any(|l| matches!(l, Lane::Live { .. }))
    }

    /// Reads the events of every subscribed type after the frontier, in one snapshot.
    fn read_tail(&mut self, ctx: &mut Context<Self>) {
        let Some(durable) = &self.durable else { return };
        self.tail.reading = true;
        self.tail.generation += 1;
        let generation = self.tail.generation;
        let after = self.delivered_through;
        let types: Vec<String> = self.by_type.keys().cloned().collect();
        let read = in_background(&durable.reader, move |reader| {
            reader.events_of_types_after(&types, after, TAIL_PAGE)
        });
        ctx.spawn(
            actix::fut::wrap_future(read).map(move |read, act: &mut Self, ctx| {
                if act.tail.generation != generation || !act.tail.reading {
                    return; // the lanes fell back meanwhile and read for themselves
                }
                act.tail.reading = false;
                match read {
                    Ok((stored, head)) => {
                        let covered = super::lanes::covered(&stored, TAIL_PAGE, head, after);
                        act.route_live(stored, Some(covered), ctx);
                    }
                    Err(e) => {
                        log::warn!(
                            "reading what other processes stored after position {after} \
                             failed: {}; the live handler actors read it themselves",
                            crate::error::chain(&e)
                        );
                        act.tail_falls_back(ctx);
                    }
                }
                act.route_held(ctx);
            }),
        );
    }

    /// Gives up on the tail read under way: every live lane reads from the frontier on its
    /// own, so what is held back (already stored) is covered, and is dropped.
    fn tail_falls_back(&mut self, ctx: &mut Context<Self>) {
        let before = self.delivered_through;
        let newest = self
            .tail
            .held
            .iter()
            .filter_map(|(_, through)| *through)
            .max();
        self.tail.held.clear();
        self.tail.held_events = 0;
        self.tail.reading = false;
        self.fall_behind(before, ctx);
        self.routed_through(before.max(newest.unwrap_or(0)).max(self.tail.announced));
    }
}
