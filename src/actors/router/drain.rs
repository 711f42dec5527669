//! Draining the router at shutdown (or escalation): [`CloseIntake`] closes the intake,
//! [`AwaitDrained`] answers once every handler actor handled what it was given and the last
//! checkpoints are written.

use super::*;

impl RouterActor {
    pub(super) fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        if !self.is_settled() {
            // Events are still read from the store: drain once all lanes are live.
            self.drain_when_caught_up = true;
            return;
        }
        // Every actor learns the final watermark first, then drains; the checkpoints and dead
        // letters are written once all of them are done (so not a message earlier).
        self.watermarks(true);
        let barrier = self.drain_barrier();
        let storage = self.durable.as_ref().map(|d| d.storage.clone());
        let done = async move {
            barrier.await;
            if let Some(storage) = storage {
                match storage.send(FlushCheckpoints).await {
                    Ok(Err(e)) => log::error!(
                        "writing checkpoints at shutdown failed: {}",
                        crate::error::chain(&e)
                    ),
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
                // Dropping the partitions lets every handler actor stop and drop its handler.
                ctx.stop();
            }),
        );
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
        self.close_when_quiet(ctx);
    }
}

impl RouterActor {
    /// Closes the intake once nothing is left to do: handlers may publish while they handle
    /// what the shutdown drains (a reaction publishes the next event), and that is drained
    /// too. Quiet: every actor answered a `Control::Drain`, none of this bus's own publishes
    /// was delivered meanwhile, the intake is empty, no commit is outstanding and no lane
    /// reads the store. Publishers outside handlers are refused already (`Lifecycle`).
    /// Events other processes append to a shared store are not waited for.
    fn close_when_quiet(&mut self, ctx: &mut Context<Self>) {
        if self.close.is_none() {
            return;
        }
        let delivered = self.own_deliveries;
        let barrier = self.drain_barrier();
        ctx.spawn(
            actix::fut::wrap_future(barrier).map(move |(), act: &mut Self, ctx| {
                let quiet = act.own_deliveries == delivered
                    && act.close.as_ref().is_some_and(IntakeTx::is_empty)
                    && act.gate.is_idle()
                    && act.is_settled();
                if !quiet {
                    ctx.run_later(QUIET_CHECK, |act, ctx| act.close_when_quiet(ctx));
                } else if let Some(tx) = act.close.take() {
                    // Over the bound if it must: the router is what empties the intake.
                    let _ = tx.send_over(Intake::Close);
                }
            }),
        );
    }
}

impl RouterActor {
    /// Resolves once every handler actor has handled what was delivered to it before this
    /// call (a `Control::Drain` each, answered in mailbox order).
    fn drain_barrier(&self) -> impl std::future::Future<Output = ()> + 'static {
        let controls: Vec<_> = (self.subscriptions.iter())
            .flat_map(|g| g.partitions.iter().map(|s| s.control.clone()))
            .collect();
        async move {
            join_all(controls.iter().map(|c| c.send(Control::Drain))).await;
        }
    }
}

/// How long a shutdown that found work left waits before it looks again.
const QUIET_CHECK: std::time::Duration = std::time::Duration::from_millis(1);

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
