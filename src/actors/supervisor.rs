//! SupervisorActor: starts the router and every handler actor, decides on restarts when a
//! handler panics (backoff within a budget), and escalates when the budget is spent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::router::{AwaitDrained, CloseIntake, RouterActor};
use crate::actors::thread::ActorThread;
use crate::lifecycle::Lifecycle;
use crate::policy::{Escalation, RestartPolicy};

mod tree;
pub(crate) use tree::{SpawnArgs, StorePlan, SubscriptionPlan, TreePlan};

/// Sent by a handler actor whose handler panicked; answered with what to do.
pub(crate) struct HandlerPanicked {
    pub(crate) subscription: Arc<str>,
    pub(crate) partition: usize,
}

/// The supervisor's answer to [`HandlerPanicked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Rebuild the handler after this delay and retry the event.
    Restart(Duration),
    /// Stop calling the handler; keep its events as dead letters.
    Park,
    /// Halt the bus.
    StopBus,
}

impl Message for HandlerPanicked {
    type Result = Decision;
}

/// Shut the tree down: close the intake, wait until the router has drained every handler
/// actor and written the last checkpoints, then stop and join the writer's thread and the
/// handler threads, then the supervisor itself. A second `Shutdown` waits for the same.
pub(crate) struct Shutdown;

impl Message for Shutdown {
    type Result = ();
}

impl Handler<Shutdown> for SupervisorActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.shutdown_waiters.push(done);
        if self.shutdown_waiters.len() == 1 {
            let router = self.router.take();
            let writer = self.writer.take();
            let threads = std::mem::take(&mut self.handler_threads);
            let coordinator = self.coordinator.take();
            let stopped = async move {
                // A router that is gone has nothing left to drain.
                if let Some(router) = router {
                    if router.send(CloseIntake).await.is_ok() {
                        let _ = router.send(AwaitDrained).await;
                    }
                }
                if writer.is_some() || !threads.is_empty() || coordinator.is_some() {
                    // Everything is drained and written: the claims may go (the other
                    // processes resume from these checkpoints), then the threads, which are
                    // waited for, so that none outlives the bus.
                    let _ = actix_rt::task::spawn_blocking(move || {
                        if let Some(stop) = coordinator {
                            stop();
                        }
                        if let Some(writer) = writer {
                            writer.stop_and_join();
                        }
                        for thread in threads {
                            thread.stop_and_join();
                        }
                    })
                    .await;
                }
            };
            // Spawned, not waited for: while the handlers drain, a panicking one still needs
            // the supervisor's decisions.
            ctx.spawn(stopped.into_actor(self).map(|(), act, ctx| {
                for waiter in act.shutdown_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                ctx.stop();
            }));
        }
        Box::pin(async move {
            let _ = finished.await;
        })
    }
}

/// Forget the restart history of a handler (it was fixed and resumed).
pub(crate) struct ResetBudget(pub(crate) Arc<str>);

impl Message for ResetBudget {
    type Result = ();
}

pub(crate) struct SupervisorActor {
    policies: HashMap<Arc<str>, RestartPolicy>,
    /// Restart times per handler actor, pruned to the policy's window.
    history: HashMap<(Arc<str>, usize), VecDeque<Instant>>,
    lifecycle: Arc<Lifecycle>,
    router: Option<Addr<RouterActor>>,
    /// The store's writer thread (durable bus), stopped at shutdown once all is written.
    writer: Option<ActorThread>,
    /// The handler threads (none when handlers run on the caller's arbiter).
    handler_threads: Vec<ActorThread>,
    /// Stops the store's coordination (a store shared by several processes): lets this
    /// process's claims go once the last checkpoints are written.
    coordinator: Option<Box<dyn FnOnce() + Send>>,
    /// Callers of `Shutdown`, answered once the tree is down.
    shutdown_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl SupervisorActor {
    fn new(policies: HashMap<Arc<str>, RestartPolicy>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            policies,
            history: HashMap::new(),
            lifecycle,
            router: None,
            writer: None,
            handler_threads: Vec::new(),
            coordinator: None,
            shutdown_waiters: Vec::new(),
        }
    }

    /// Takes charge of the tree started in its context: the router (and through it the
    /// handler actors), the writer's thread, the handler threads, the store's coordination.
    fn own(
        &mut self,
        router: Addr<RouterActor>,
        writer: Option<ActorThread>,
        handler_threads: Vec<ActorThread>,
        coordinator: Option<Box<dyn FnOnce() + Send>>,
    ) {
        self.router = Some(router);
        self.writer = writer;
        self.handler_threads = handler_threads;
        self.coordinator = coordinator;
    }

    fn decide(
        &mut self,
        subscription: &Arc<str>,
        partition: usize,
        now: Instant,
    ) -> (Decision, u32) {
        let policy = self.policies.get(subscription).copied().unwrap_or_default();
        let history = self
            .history
            .entry((Arc::clone(subscription), partition))
            .or_default();
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.within())
        {
            history.pop_front();
        }
        if history.len() as u32 >= policy.max_restarts() {
            history.clear();
            let decision = match policy.escalation_policy() {
                Escalation::ParkHandler => Decision::Park,
                Escalation::StopBus => Decision::StopBus,
            };
            return (decision, policy.max_restarts());
        }
        history.push_back(now);
        let n = history.len() as u32;
        (Decision::Restart(policy.backoff_policy().delay_for(n)), n)
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;
}

impl Handler<HandlerPanicked> for SupervisorActor {
    type Result = MessageResult<HandlerPanicked>;

    fn handle(&mut self, msg: HandlerPanicked, _ctx: &mut Context<Self>) -> Self::Result {
        let (decision, n) = self.decide(&msg.subscription, msg.partition, Instant::now());
        match decision {
            Decision::Restart(delay) => log::debug!(
                "restarting handler `{}` #{} in {delay:?} (restart {n} in window)",
                msg.subscription,
                msg.partition
            ),
            Decision::Park => log::error!(
                "handler `{}` #{} spent its restart budget ({n}): parking it",
                msg.subscription,
                msg.partition
            ),
            Decision::StopBus => {
                let reason = format!(
                    "handler `{}` #{} spent its restart budget ({n})",
                    msg.subscription, msg.partition
                );
                log::error!("{reason}: stopping the bus");
                self.lifecycle.halt(reason);
                if let Some(router) = &self.router {
                    router.do_send(CloseIntake);
                }
            }
        }
        MessageResult(decision)
    }
}

impl Handler<ResetBudget> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, ResetBudget(subscription): ResetBudget, _ctx: &mut Context<Self>) {
        self.history.retain(|(name, _), _| *name != subscription);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Backoff;

    fn supervisor(policy: RestartPolicy) -> (SupervisorActor, Arc<str>) {
        let name: Arc<str> = Arc::from("h");
        let policies = HashMap::from([(Arc::clone(&name), policy)]);
        (
            SupervisorActor::new(policies, Arc::new(Lifecycle::default())),
            name,
        )
    }

    #[test]
    fn restarts_back_off_then_escalate_when_the_budget_is_spent() {
        let backoff = Backoff::new(Duration::from_millis(10)).jitter(0.0);
        let (mut sup, h) =
            supervisor(RestartPolicy::new(3, Duration::from_secs(60)).backoff(backoff));
        let t = Instant::now();
        let decisions: Vec<_> = (0..4).map(|_| sup.decide(&h, 0, t).0).collect();
        assert_eq!(
            decisions,
            vec![
                Decision::Restart(Duration::from_millis(10)),
                Decision::Restart(Duration::from_millis(20)),
                Decision::Restart(Duration::from_millis(40)),
                Decision::Park,
            ]
        );
        // Another actor of the same subscription has a budget of its own.
        assert!(matches!(sup.decide(&h, 1, t).0, Decision::Restart(_)));
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let (mut sup, h) = supervisor(
            RestartPolicy::new(1, Duration::from_secs(1)).escalation(Escalation::StopBus),
        );
        let t = Instant::now();
        assert!(matches!(sup.decide(&h, 0, t).0, Decision::Restart(_)));
        assert_eq!(sup.decide(&h, 0, t).0, Decision::StopBus);
        let later = t + Duration::from_secs(5);
        assert!(matches!(sup.decide(&h, 0, later).0, Decision::Restart(_)));
        assert!(matches!(
            sup.decide(&h, 0, later + Duration::from_secs(2)).0,
            Decision::Restart(_)
        ));
    }
}
