//! The router's group commit: each intake chunk goes to the storage actor as one
//! [`Append`](crate::actors::storage::Append) (two in flight, answered in order); each
//! publisher is answered once its chunk committed, and only then are its events delivered.

use super::*;

impl RouterActor {
    /// Stores one intake chunk (group commit), answers each publisher, then delivers what was
    /// stored. A failed commit fails every publisher of the chunk and delivers nothing.
    pub(super) fn commit_and_deliver(
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
        let committed = storage.send(Append::new(units));
        // Spawned, not waited for: the router gathers the next chunk meanwhile (the gate
        // bounds how many are outstanding), and handles results in the order sent.
        ctx.spawn(
            actix::fut::wrap_future(committed).map(move |reply, act: &mut Self, ctx| {
                act.commit_done(ticket, (reply, acks), ctx);
            }),
        );
    }

    /// A chunk's commit came back: answer the publishers and deliver, in the order the
    /// chunks were sent. Nothing here waits for a handler: a live actor with room gets its
    /// part at once, one without room falls behind and reads it from the store later.
    fn commit_done(&mut self, ticket: u64, result: Committed, ctx: &mut Context<Self>) {
        for (reply, acks) in self.committed.arrived(ticket, result) {
            self.gate.leave(acks.len());
            if matches!(reply, Ok((_, Ok(_)))) {
                (self.counters.commits).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let stored = acknowledge(reply, acks);
            self.own_deliveries += 1;
            let ack_seconds = &self.counters.metrics.ack_seconds;
            for record in &stored {
                ack_seconds.record(record.published_at.elapsed().as_secs_f64());
            }
            // Positions grow with every commit: the newest of this one covers all before.
            let through = stored.iter().filter_map(|r| r.meta.position).max();
            self.deliver_live(stored, through, ctx);
        }
        if self.drain_when_committed && self.gate.is_idle() {
            self.drain_when_committed = false;
            self.finish_drain(ctx);
        }
    }
}
