//! Redrives: the dead letters an operator asked for while no bus ran, handed back before
//! anything else at start, and [`Redrive`], a running bus's hand-back of one subscription's
//! letters.

use super::*;

impl RouterActor {
    /// Hands back the dead letters an operator asked to redrive while no bus ran (`actorbus
    /// dlq redrive`), before anything else; then every actor catches up from the store on
    /// its own, and intake starts at once.
    pub(super) fn redrive_requested(&mut self, ctx: &mut Context<Self>) {
        let Some(durable) = &self.durable else {
            return;
        };
        let read = in_background(&durable.reader, |reader| reader.requested_redrives());
        ctx.wait(
            actix::fut::wrap_future(read).map(move |letters, act: &mut Self, ctx| {
                let letters = match letters {
                    Ok(letters) => letters,
                    Err(e) => {
                        log::error!(
                            "reading requested redrives failed: {}; they wait for the next start",
                            crate::error::chain(&e)
                        );
                        Vec::new()
                    }
                };
                let mut deliveries = Vec::new();
                for (g, subscription) in act.subscriptions.iter().enumerate() {
                    let records: Vec<Record> = letters
                        .iter()
                        .filter(|letter| letter.handler_name() == &*subscription.name)
                        .map(|letter| letter.record.clone())
                        .collect();
                    if !records.is_empty() {
                        log::info!(
                            "redriving {} dead letter(s) of `{}`",
                            records.len(),
                            subscription.name
                        );
                        deliveries.push((g, records));
                    }
                }
                let mut futures = Vec::new();
                for (g, records) in deliveries {
                    futures.push(act.delivery(records.into_iter(), Some(g)));
                }
                ctx.wait(actix::fut::wrap_future(join_all(futures)).map(
                    |_, act: &mut Self, ctx| {
                        act.start_lanes(ctx);
                        act.start_intake(ctx);
                    },
                ));
            }),
        );
    }
}

/// Hand dead letters back to one subscription (after resuming its actors), in their order.
pub(crate) struct Redrive {
    pub(crate) subscription: usize,
    pub(crate) records: Vec<Record>,
}

impl Message for Redrive {
    type Result = ();
}

impl Handler<Redrive> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: Redrive, ctx: &mut Context<Self>) {
        let Some(subscription) = self.subscriptions.get(msg.subscription) else {
            return;
        };
        let resumes: Vec<_> = subscription
            .partitions
            .iter()
            .map(|s| s.control.send(Control::Resume))
            .collect();
        ctx.wait(
            actix::fut::wrap_future(join_all(resumes)).map(move |_, act: &mut Self, ctx| {
                act.deliver(msg.records.into_iter(), Some(msg.subscription), ctx)
            }),
        );
    }
}
