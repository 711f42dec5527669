//! HandlerActor: wraps one user handler behind a bounded mailbox. The router sends it
//! [`Deliver`] batches; it retries failures with backoff, dead-letters what keeps failing, and
//! asks the supervisor what to do when the handler panics.

mod delivery;
mod run;

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::letters::DeadLetters;
use crate::actors::storage::CheckpointBoard;
use crate::actors::supervisor::{Decision, HandlerPanicked, SupervisorActor};
use crate::event::{DomainEvent, Record};
use crate::policy::RetryPolicy;
use crate::stats::HandlerCounters;
use crate::storage::registry::{older_covers, Layouts};

use crate::actors::panics::{caught, panic_message};
pub(crate) use delivery::{Control, Deliver, Load};
use run::{run_batch, Outcome, Pending};
pub(crate) use run::{ManyHandled, RunsEvents};

/// Builds handler instances for the actor of a partition; called at start and after every panic.
/// `Send + Sync`, so that an actor on another thread builds its own instance there (the
/// handler itself need not be `Send`).
pub(crate) type Factory<H> = Arc<dyn Fn(usize) -> H + Send + Sync>;

/// What one handler actor shares with its siblings of the same subscription.
pub(crate) struct HandlerSetup<H> {
    pub(crate) name: Arc<str>,
    pub(crate) factory: Factory<H>,
    pub(crate) retry: RetryPolicy,
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) supervisor: Addr<SupervisorActor>,
    /// Where the bus is durable: the checkpoints to advance, and the number of actors.
    pub(crate) checkpoints: Option<Arc<CheckpointBoard>>,
    pub(crate) partitions: usize,
    /// Checkpoints of the subscription's earlier concurrencies: what they passed is handled.
    pub(crate) older: Layouts,
    /// The claim the current batch runs under (a shared store): (partition, token).
    pub(crate) claim: Option<(usize, i64)>,
}

impl<H> Clone for HandlerSetup<H> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            factory: Arc::clone(&self.factory),
            retry: self.retry,
            counters: Arc::clone(&self.counters),
            dead_letters: Arc::clone(&self.dead_letters),
            supervisor: self.supervisor.clone(),
            checkpoints: self.checkpoints.clone(),
            partitions: self.partitions,
            older: Arc::clone(&self.older),
            claim: self.claim,
        }
    }
}

impl<H> HandlerSetup<H> {
    /// Gives up on `record`: it goes to the dead letters, and the counters say so. A redriven
    /// letter that fails again is noted in `refailed`: its stored letter stays (updated).
    fn dead_letter(&self, record: Record, attempts: u32, why: String, refailed: &mut Vec<i64>) {
        refailed.extend(record.letter);
        let claim = self
            .claim
            .map(|(partition, token)| (self.partitions as i32, partition as i32, token));
        self.dead_letters
            .push(&self.name, record, attempts, why, claim);
        HandlerCounters::add(&self.counters.dead_letters, 1);
    }
}

pub(crate) struct HandlerActor<E: DomainEvent, H: RunsEvents<E>> {
    setup: HandlerSetup<H>,
    partition: usize,
    /// What the router gave this actor and it has not finished.
    load: Arc<Load>,
    /// `None` while a batch is being handled (the future owns it) or while parked. Boxed:
    /// actors must be `Unpin`, user handlers need not be.
    handler: Option<Box<H>>,
    parked: bool,
    /// The factory panicked at start; handled like a handler panic once the actor runs.
    start_panic: Option<String>,
    /// Panics caught so far (for the log).
    panics: u64,
    /// Position this actor's checkpoint covers: stored events up to here are not handled again.
    seen: u64,
    /// The claim the current delivery was made under (a PostgreSQL store shared by several
    /// processes): its checkpoints and projection writes are fenced by it.
    fence: Option<i64>,
    _event: PhantomData<fn() -> E>,
}

impl<E: DomainEvent, H: RunsEvents<E>> HandlerActor<E, H> {
    /// Starts the actor with a handler from the factory.
    /// Starts the actor on `arbiter`; its handler is built there, from the factory.
    pub(crate) fn start_on(
        arbiter: &actix_rt::ArbiterHandle,
        setup: HandlerSetup<H>,
        partition: usize,
        seen: u64,
        load: Arc<Load>,
    ) -> Addr<Self> {
        Self::start_in_arbiter(arbiter, move |_| Self::new(setup, partition, seen, load))
    }

    fn new(setup: HandlerSetup<H>, partition: usize, seen: u64, load: Arc<Load>) -> Self {
        let (handler, start_panic) = match build_handler(&setup.factory, partition) {
            Ok(h) => (Some(h), None),
            Err(message) => (None, Some(message)),
        };
        Self {
            setup,
            partition,
            load,
            handler,
            parked: false,
            start_panic,
            panics: 0,
            seen,
            fence: None,
            _event: PhantomData,
        }
    }

    fn run(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        let reaches = pending.reaches();
        let Some(mut handler) = self.handler.take() else {
            let load = pending.load;
            self.dead_letter_rest(pending, "handler is parked");
            self.reached(reaches, load);
            return;
        };
        handler.fence(self.fence);
        let load = pending.load;
        let mut setup = self.setup.clone();
        setup.claim = self.fence.map(|token| (self.partition, token));
        let letters: Vec<i64> = pending.batch.iter().filter_map(|r| r.letter).collect();
        // Publishes from inside the handler never wait for the intake.
        let fut = crate::actors::intake::within_handler(run_batch::<E, H>(handler, pending, setup));
        ctx.wait(
            fut.into_actor(self)
                .map(move |outcome, act, ctx| match outcome {
                    Outcome::Done(h, refailed) => {
                        act.handler = Some(h);
                        act.setup
                            .dead_letters
                            .resolved(letters.into_iter().filter(|id| !refailed.contains(id)));
                        // Only now: a checkpoint must never pass an event that was not handled.
                        act.reached(reaches, load);
                    }
                    Outcome::Panicked { pending, message } => act.on_panic(pending, message, ctx),
                }),
        );
    }

    /// Every event of this actor up to `position` is handled or dead-lettered: move the
    /// checkpoint there (written with the dead letters queued before it), and give the
    /// delivery's `load` back to the router.
    fn reached(&mut self, position: Option<u64>, load: usize) {
        self.load.release(load);
        if let (Some(board), Some(position)) = (&self.setup.checkpoints, position) {
            if position > self.seen {
                self.seen = position;
                self.setup.counters.reach(self.partition, position);
                board.advance(
                    &self.setup.name,
                    self.partition,
                    self.setup.partitions,
                    position,
                    self.fence,
                );
            }
        }
    }

    /// Whether the stored event at `position`, of the stream hashed `hash`, was handled
    /// before this start (by this actor, or by the owner of its stream in an earlier layout).
    fn handled_before(&self, hash: u64, position: u64) -> bool {
        position <= self.seen || older_covers(&self.setup.older, hash, position)
    }

    /// The handler panicked (or its factory did): its instance is gone. Ask the supervisor
    /// whether to rebuild it after a backoff, or to give up.
    fn on_panic(&mut self, pending: Pending, message: String, ctx: &mut Context<Self>) {
        // Reported with a count, not once per panic: a handler panicking on 1% of a busy
        // stream would flood the log (the panic hook stays quiet for caught panics).
        self.panics += 1;
        let level = if self.panics == 1 || self.panics.is_multiple_of(100) {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "handler `{}` #{} panicked ({} time(s) so far; logged at the first and every 100th): {message}",
            self.setup.name,
            self.partition,
            self.panics
        );
        let ask = HandlerPanicked {
            subscription: Arc::clone(&self.setup.name),
            partition: self.partition,
        };
        ctx.wait(self.setup.supervisor.send(ask).into_actor(self).map(
            move |decision, act, ctx| match decision {
                Ok(Decision::Restart(delay)) => {
                    ctx.wait(
                        actix::clock::sleep(delay)
                            .into_actor(act)
                            .map(move |(), act, ctx| act.restart(pending, ctx)),
                    );
                }
                Ok(Decision::Park) => act.park(
                    pending,
                    &format!("restart budget spent; last panic: {message}"),
                ),
                Ok(Decision::StopBus) => act.park(
                    pending,
                    &format!("the bus was halted; last panic: {message}"),
                ),
                // The bus is going away without a shutdown (its system stopped): these events
                // were not given up on, only not handled. Stop here, with neither a dead letter
                // nor a checkpoint past them, so that the next start hands them over again.
                Err(_) => {
                    log::warn!(
                        "handler `{}` #{} panicked with its supervisor gone: stopping; its {} \
                         unhandled event(s) are handled again at the next start",
                        act.setup.name,
                        act.partition,
                        pending.batch.len().saturating_sub(pending.at)
                    );
                    ctx.stop();
                }
            },
        ));
    }

    fn restart(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        match build_handler(&self.setup.factory, self.partition) {
            Ok(handler) => {
                HandlerCounters::add(&self.setup.counters.restarts, 1);
                log::info!(
                    "handler `{}` #{} restarted",
                    self.setup.name,
                    self.partition
                );
                self.handler = Some(handler);
                self.run(pending, ctx);
            }
            Err(message) => self.on_panic(pending, message, ctx),
        }
    }

    fn park(&mut self, pending: Pending, why: &str) {
        let reaches = pending.reaches();
        let load = pending.load;
        log::error!(
            "handler `{}` #{} parked: {why}; its events go to the dead letters",
            self.setup.name,
            self.partition
        );
        self.parked = true;
        self.handler = None;
        self.setup
            .counters
            .parked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.dead_letter_rest(pending, &format!("handler parked: {why}"));
        // Its events are dead letters now: only a redrive hands them over again.
        self.reached(reaches, load);
    }

    fn dead_letter_rest(&self, pending: Pending, why: &str) {
        let Pending {
            batch, at, attempt, ..
        } = pending;
        let mut setup = self.setup.clone();
        setup.claim = self.fence.map(|token| (self.partition, token));
        for (i, record) in batch.into_iter().enumerate().skip(at) {
            let attempts = if i == at {
                attempt.saturating_sub(1)
            } else {
                0
            };
            setup.dead_letter(record, attempts, why.to_owned(), &mut Vec::new());
        }
    }
}

impl<E: DomainEvent, H: RunsEvents<E>> Actor for HandlerActor<E, H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(message) = self.start_panic.take() {
            let nothing = Pending::new(Vec::new(), None, 0);
            self.on_panic(nothing, format!("handler factory panicked: {message}"), ctx);
        }
    }
}

impl<E: DomainEvent, H: RunsEvents<E>> Handler<Deliver> for HandlerActor<E, H> {
    type Result = ();

    fn handle(
        &mut self,
        Deliver {
            mut records,
            through,
            load,
            fence,
        }: Deliver,
        ctx: &mut Context<Self>,
    ) {
        self.fence = fence;
        HandlerCounters::add(&self.setup.counters.taken, records.len() as u64);
        // Replayed events handled before this start (catch-up after a crash or a change of
        // concurrency); redriven dead letters are handed over whatever the checkpoint says.
        let before = records.len();
        records.retain(|r| {
            r.letter.is_some()
                || r.meta
                    .position
                    .is_none_or(|p| !self.handled_before(r.stream_hash, p))
        });
        HandlerCounters::add(
            &self.setup.counters.handled,
            (before - records.len()) as u64,
        );
        if records.is_empty() {
            // Nothing to handle (a watermark, or all replayed): only the checkpoint moves.
            self.reached(through, load);
            return;
        }
        // ctx.wait keeps further deliveries in the mailbox until this batch is done.
        self.run(Pending::new(records, through, load), ctx);
    }
}

impl<E: DomainEvent, H: RunsEvents<E>> Handler<Control> for HandlerActor<E, H> {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) {
        match msg {
            Control::Drain => {}
            Control::Resume if self.parked => {
                let resumed = Pending::new(Vec::new(), None, 0);
                self.parked = false;
                self.setup
                    .counters
                    .parked
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.restart(resumed, ctx);
            }
            Control::Resume => {}
            Control::Claimed { checkpoint } => {
                // Another process may have moved the checkpoint either way meanwhile: it is
                // where this actor's work starts again.
                self.seen = checkpoint;
            }
        }
    }
}

/// Builds a handler instance; a panicking factory is reported, not propagated.
fn build_handler<H>(factory: &Factory<H>, partition: usize) -> Result<Box<H>, String> {
    caught(|| std::panic::catch_unwind(AssertUnwindSafe(|| Box::new(factory(partition)))))
        .map_err(|panic| panic_message(&*panic))
}
