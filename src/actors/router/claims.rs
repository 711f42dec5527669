//! A store shared by several processes (PostgreSQL): which partitions this process claimed
//! or let go, and what other processes appended. Both come from the store's coordination
//! ([`Change`]), through [`Shared`].

use super::*;
use crate::storage::backend::Change;

/// A change in this process's share of the store.
pub(crate) struct Shared(pub(crate) Change);

impl Message for Shared {
    type Result = ();
}

impl Handler<Shared> for RouterActor {
    type Result = ();

    fn handle(&mut self, Shared(change): Shared, ctx: &mut Context<Self>) {
        if self.drained {
            return;
        }
        match change {
            Change::Claimed(claims) => {
                for claim in claims {
                    if let Some(flat) = self.flat_of(&claim.subscription, claim.partition) {
                        log::debug!(
                            "claimed `{}` #{} (token {}) at checkpoint {}",
                            claim.subscription,
                            claim.partition,
                            claim.token,
                            claim.checkpoint
                        );
                        self.claimed(flat, claim.token, claim.checkpoint, ctx);
                    }
                }
            }
            Change::Release(partitions, handoff) => {
                let mut draining = Vec::new();
                for (subscription, partition) in partitions {
                    if let Some(flat) = self.flat_of(&subscription, partition) {
                        self.released(flat, ctx);
                        let (g, p) = self.locate(flat);
                        let load = Arc::clone(&self.subscriptions[g].partitions[p].load);
                        draining.push((subscription, partition, load));
                    }
                }
                let storage = self.durable.as_ref().map(|d| d.storage.clone());
                // The actors finish what they hold (under the claim, still valid), their
                // checkpoints are written, then the claims may go.
                ctx.spawn(actix::fut::wrap_future(async move {
                    for (_, _, load) in &draining {
                        load.at_most(0).await;
                    }
                    if let Some(storage) = storage {
                        let _ = storage.send(FlushCheckpoints).await;
                    }
                    for (subscription, partition, _) in draining {
                        log::debug!("`{subscription}` #{partition} drained: handing it over");
                        (handoff.0)(subscription, partition);
                    }
                }));
            }
            Change::Released(partitions) => {
                for (subscription, partition) in partitions {
                    if let Some(flat) = self.flat_of(&subscription, partition) {
                        log::debug!("`{subscription}` #{partition} is owned elsewhere now");
                        self.released(flat, ctx);
                    }
                }
            }
            Change::Appended(head) => self.appended_elsewhere(head, ctx),
        }
    }
}

impl RouterActor {
    /// The flat index of a subscription's partition, if this bus has it.
    fn flat_of(&self, subscription: &str, partition: usize) -> Option<usize> {
        let g = self
            .subscriptions
            .iter()
            .position(|s| &*s.name == subscription)?;
        (partition < self.subscriptions[g].partitions.len())
            .then(|| self.partition_base[g] + partition)
    }
}
