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
            Change::Released(partitions) => {
                for (subscription, partition) in partitions {
                    if let Some(flat) = self.flat_of(&subscription, partition) {
                        log::debug!("`{subscription}` #{partition} is owned elsewhere now");
                        self.released(flat, ctx);
                    }
                }
            }
            Change::Appended(head) => {
                if head > self.delivered_through {
                    let before = self.delivered_through;
                    self.fall_behind(before, ctx);
                    self.delivered_through = head;
                }
            }
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
