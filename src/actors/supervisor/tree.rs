//! How the supervisor starts its tree: the storage actor on the writer's thread, the handler
//! threads, every handler actor (spread over those threads in turn), then the router. The
//! builder prepares the plan ([`TreePlan`]); nothing else starts an actor of the bus.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::intake::{IntakeRx, IntakeTx};
use crate::actors::letters::DeadLetters;
use crate::actors::router::{Durable, Partition, RouterActor, Shared, Subscription};
use crate::actors::storage::{CheckpointBoard, StorageActor};
use crate::actors::supervisor::SupervisorActor;
use crate::actors::thread::ActorThread;
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::policy::RestartPolicy;
use crate::stats::{BusCounters, HandlerCounters};
use crate::storage::backend::{Opened, Reader};
use crate::storage::registry::Resume;
use crate::storage::{Retention, StoreError};

/// Everything the supervisor starts, prepared by the builder.
pub(crate) struct TreePlan {
    pub(crate) policies: HashMap<Arc<str>, RestartPolicy>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) counters: Arc<BusCounters>,
    /// The intake: the router reads `rx`; `tx` lets it close the channel behind the last item.
    pub(crate) intake: (IntakeTx, IntakeRx),
    /// Most intake items the router takes at once: no delivery is larger than the smallest
    /// mailbox (a `Many` item may still be split per actor).
    pub(crate) chunk: usize,
    /// Threads for handler actors; with 1, they run on the caller's arbiter.
    pub(crate) handler_threads: usize,
    pub(crate) store: Option<StorePlan>,
    pub(crate) subscriptions: Vec<SubscriptionPlan>,
}

/// An opened store, its writer not started yet.
pub(crate) struct StorePlan {
    pub(crate) opened: Opened,
    /// (subscription, partitions) of this bus.
    pub(crate) layouts: Vec<(String, usize)>,
    pub(crate) retention: Retention,
    /// Whether a commit may be split so that publishers are answered sooner.
    pub(crate) split_commits: bool,
}

/// One subscription: what the router needs to know, and how to start its handler actors.
pub(crate) struct SubscriptionPlan {
    pub(crate) name: Arc<str>,
    pub(crate) event_types: Vec<String>,
    pub(crate) mailbox_capacity: usize,
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) spawn: Box<dyn FnOnce(SpawnArgs) -> Vec<Partition>>,
}

/// What the handler actors of one subscription are started with.
pub(crate) struct SpawnArgs {
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) supervisor: Addr<SupervisorActor>,
    pub(crate) checkpoints: Option<Arc<CheckpointBoard>>,
    pub(crate) storage: Option<Addr<StorageActor>>,
    /// Where each handler actor resumes (durable bus).
    pub(crate) resume: Resume,
    /// The threads handler actors run on.
    pub(crate) threads: Rc<HandlerThreads>,
}

/// The arbiters handler actors are spread over, in turn: one stream still maps to one actor,
/// so per-stream order holds on any number of threads.
pub(crate) struct HandlerThreads {
    arbiters: Vec<actix_rt::ArbiterHandle>,
    next: std::cell::Cell<usize>,
}

impl HandlerThreads {
    /// The arbiter for the next handler actor.
    pub(crate) fn next(&self) -> &actix_rt::ArbiterHandle {
        let i = self.next.get();
        self.next.set(i + 1);
        &self.arbiters[i % self.arbiters.len()]
    }
}

/// The started tree, as the bus handle needs it.
pub(crate) struct StartedTree {
    pub(crate) supervisor: Addr<SupervisorActor>,
    pub(crate) router: Addr<RouterActor>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) reader: Option<Reader>,
}

impl SupervisorActor {
    /// Starts the tree of `plan` under a new supervisor on the current arbiter: the storage
    /// actor, the handler threads and actors, then the router; the supervisor owns them all.
    ///
    /// # Errors
    /// A thread that cannot be started ([`StoreError::Io`] for the writer's,
    /// [`Error::Config`] for a handler thread's).
    pub(crate) fn start_tree(plan: TreePlan) -> Result<StartedTree> {
        let TreePlan {
            policies,
            lifecycle,
            counters,
            intake: (tx, rx),
            chunk,
            handler_threads,
            store,
            subscriptions,
        } = plan;
        let mut resumes = Vec::new();
        let mut writer = None;
        let mut durable = None;
        let mut coordination = None;
        // The storage actor and its board, which handler actors write their progress to.
        let mut started_store = None;
        if let Some(store) = store {
            let (storage, thread, board) = StorageActor::start_writer(
                store.opened.writer,
                store.layouts,
                &store.opened.resumes,
                store.retention,
            )
            .map_err(|e| StoreError::io("actorbus-writer", e))?;
            resumes = store.opened.resumes;
            coordination = store.opened.coordination;
            writer = Some(thread);
            started_store = Some((storage.clone(), board));
            durable = Some(Durable {
                storage,
                reader: store.opened.reader,
                head: store.opened.head,
                retention_every: store
                    .retention
                    .is_enabled()
                    .then_some(store.retention.interval),
                split_commits: store.split_commits,
                shared: coordination.is_some(),
            });
        }
        let reader = durable.as_ref().map(|d| d.reader.clone());
        let dead_letters = Arc::new(match (&started_store, &reader) {
            (Some((storage, board)), Some(reader)) => {
                DeadLetters::stored(Arc::clone(board), storage.clone(), reader.clone())
            }
            _ => DeadLetters::default(),
        });
        let (threads, placement) = start_handler_threads(handler_threads)?;
        let mut resumes = resumes.into_iter();
        let mut router = None;
        let mut failed = None;
        let shared_letters = Arc::clone(&dead_letters);
        let supervisor = SupervisorActor::create(|ctx| {
            let mut supervisor = SupervisorActor::new(policies, lifecycle);
            let subscriptions: Vec<Subscription> = subscriptions
                .into_iter()
                .map(|s| {
                    let partitions = (s.spawn)(SpawnArgs {
                        counters: Arc::clone(&s.counters),
                        dead_letters: Arc::clone(&shared_letters),
                        supervisor: ctx.address(),
                        checkpoints: started_store.as_ref().map(|(_, b)| Arc::clone(b)),
                        storage: started_store.as_ref().map(|(s, _)| s.clone()),
                        resume: resumes.next().unwrap_or_default(),
                        threads: Rc::clone(&placement),
                    });
                    Subscription {
                        name: s.name,
                        event_types: s.event_types,
                        partitions,
                        capacity: s.mailbox_capacity,
                        counters: s.counters,
                    }
                })
                .collect();
            let started = RouterActor::new(subscriptions, rx, tx, chunk, counters, durable).start();
            // A shared store: this process's claims and the others' appends reach the router.
            let coordinator = coordination.and_then(|start| {
                let to = started.clone();
                start(Box::new(move |change| to.do_send(Shared(change))))
                    .map_err(|e| failed = Some(StoreError::io("actorbus-coordinator", e)))
                    .ok()
            });
            supervisor.own(started.clone(), writer, threads, coordinator);
            router = Some(started);
            supervisor
        });
        if let Some(e) = failed {
            supervisor.do_send(super::Shutdown);
            return Err(e.into());
        }
        let router = router.expect("the router starts with the supervisor");
        Ok(StartedTree {
            supervisor,
            router,
            dead_letters,
            reader,
        })
    }
}

/// Starts `n` handler threads, each with an actix system of its own, which the
/// application's system stopping does not stop (a web server's signal handling would kill
/// the handlers before `shutdown` drains them). With one, handlers run on the caller's
/// arbiter.
fn start_handler_threads(n: usize) -> Result<(Vec<ActorThread>, Rc<HandlerThreads>)> {
    let mut threads = Vec::new();
    let mut arbiters = Vec::new();
    if n > 1 {
        for i in 0..n {
            let (arbiter, thread) = ActorThread::spawn(&format!("actorbus-handlers-{i}"))
                .map_err(|e| Error::Config(format!("cannot start a handler thread: {e}")))?;
            arbiters.push(arbiter);
            threads.push(thread);
        }
    } else {
        arbiters.push(actix_rt::Arbiter::current());
    }
    let placement = Rc::new(HandlerThreads {
        arbiters,
        next: std::cell::Cell::new(0),
    });
    Ok((threads, placement))
}
