//! HandlerActor: wraps one user handler behind a bounded mailbox. The router sends it
//! [`Deliver`] batches; it retries failures with backoff, dead-letters what keeps failing, and
//! asks the supervisor what to do when the handler panics.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::letters::DeadLetters;
use crate::actors::storage::CheckpointBoard;
use crate::actors::supervisor::{Decision, HandlerPanicked, SupervisorActor};
use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope, Record};
use crate::policy::RetryPolicy;
use crate::stats::HandlerCounters;
use crate::storage::registry::{older_covers, Layouts};

/// What a handler actor runs: one event at a time, or a run of events at once where that is
/// cheaper (a [`BatchHandler`](crate::BatchHandler); a projection commits a run in one
/// transaction). Internal: users implement [`EventHandler`], `BatchHandler` or `Projection`.
pub(crate) trait RunsEvents<E: DomainEvent>: 'static {
    /// Handles one event (also the retry of an event that failed in a run).
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>>;

    /// Whether [`handle_many`](Self::handle_many) is worth calling.
    fn takes_runs(&self) -> bool {
        false
    }

    /// Handles a run of events at once. Returns how many were handled, in order, and the
    /// error of the first one that was not; `None` means one by one.
    fn handle_many<'a>(&'a mut self, _events: &'a [Envelope<E>]) -> Option<ManyHandled<'a>> {
        None
    }
}

/// What [`RunsEvents::handle_many`] resolves to: events handled, and the error that stopped
/// the run.
pub(crate) type ManyHandled<'a> =
    std::pin::Pin<Box<dyn Future<Output = (usize, Option<HandlerError>)> + 'a>>;

/// A batch of events for one handler actor, in per-stream order. In memory it is sent with
/// `send().await`, which resolves once the actor has taken it from its mailbox; on a durable
/// bus with `do_send`, within the room its [`Load`] leaves.
pub(crate) struct Deliver {
    pub(crate) records: Vec<Record>,
    /// On a durable bus: every stored event up to this position that belongs to this actor
    /// has been delivered to it, in this batch or before. Once the batch is handled, its
    /// checkpoint moves here even when the batch holds nothing (an idle actor keeps up).
    pub(crate) through: Option<u64>,
    /// What the router added to the actor's [`Load`] for this message; released once done.
    pub(crate) load: usize,
}

/// How much one handler actor has been given and not yet finished (events, and one unit for
/// a watermark alone), shared by the router, which adds before it sends, and the actor, which
/// releases once a batch is handled or dead-lettered. The router never lets it pass the
/// actor's mailbox capacity: that is the actor's buffer, and what bounds its memory.
#[derive(Debug, Default)]
pub(crate) struct Load {
    queued: std::sync::atomic::AtomicUsize,
    room: tokio::sync::Notify,
}

impl Load {
    /// Units given and not yet finished.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn add(&self, units: usize) {
        self.queued
            .fetch_add(units, std::sync::atomic::Ordering::AcqRel);
    }

    fn release(&self, units: usize) {
        if units > 0 {
            self.queued
                .fetch_sub(units, std::sync::atomic::Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }

    /// Resolves once at most `limit` units are queued.
    pub(crate) async fn at_most(&self, limit: usize) {
        loop {
            let notified = self.room.notified();
            if self.queued() <= limit {
                return;
            }
            notified.await;
        }
    }
}

impl Message for Deliver {
    type Result = ();
}

/// Lifecycle requests for a handler actor.
pub(crate) enum Control {
    /// Answered once everything delivered before it has been handled.
    Drain,
    /// Leave the parked state (after a fix, before a redrive) with a fresh handler.
    Resume,
}

impl Message for Control {
    type Result = ();
}

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
        }
    }
}

impl<H> HandlerSetup<H> {
    /// Gives up on `record`: it goes to the dead letters, and the counters say so. A redriven
    /// letter that fails again is noted in `refailed`: its stored letter stays (updated).
    fn dead_letter(&self, record: Record, attempts: u32, why: String, refailed: &mut Vec<i64>) {
        refailed.extend(record.letter);
        self.dead_letters.push(&self.name, record, attempts, why);
        HandlerCounters::add(&self.counters.dead_letters, 1);
    }
}

/// Events not yet handled when a handler panicked: `batch[at..]`, the first at `attempt`.
struct Pending {
    batch: Vec<Record>,
    at: usize,
    attempt: u32,
    /// The delivery's watermark ([`Deliver::through`]).
    through: Option<u64>,
    /// Redriven letters of this batch that failed again: they stay.
    refailed: Vec<i64>,
    /// The delivery's [`Deliver::load`], released once the batch is done.
    load: usize,
}

impl Pending {
    fn new(batch: Vec<Record>, through: Option<u64>, load: usize) -> Self {
        Self {
            batch,
            at: 0,
            attempt: 1,
            through,
            refailed: Vec::new(),
            load,
        }
    }

    /// The position the actor's checkpoint reaches once the batch is done: its last event,
    /// or the watermark past it. Redriven letters lie behind the checkpoint and do not count.
    fn reaches(&self) -> Option<u64> {
        self.batch
            .iter()
            .filter(|r| r.letter.is_none())
            .filter_map(|r| r.meta.position)
            .max()
            .max(self.through)
    }
}

/// How a run over a batch ended.
enum Outcome<H> {
    /// Every event handled or dead-lettered; the redriven letters that failed again.
    Done(Box<H>, Vec<i64>),
    Panicked {
        pending: Pending,
        message: String,
    },
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
            _event: PhantomData,
        }
    }

    fn run(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        let reaches = pending.reaches();
        let Some(handler) = self.handler.take() else {
            let load = pending.load;
            self.dead_letter_rest(pending, "handler is parked");
            self.reached(reaches, load);
            return;
        };
        let load = pending.load;
        let setup = self.setup.clone();
        let letters: Vec<i64> = pending.batch.iter().filter_map(|r| r.letter).collect();
        let fut = run_batch::<E, H>(handler, pending, setup);
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
                board.advance(
                    &self.setup.name,
                    self.partition,
                    self.setup.partitions,
                    position,
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
        for (i, record) in batch.into_iter().enumerate().skip(at) {
            let attempts = if i == at {
                attempt.saturating_sub(1)
            } else {
                0
            };
            self.setup
                .dead_letter(record, attempts, why.to_owned(), &mut Vec::new());
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
        }: Deliver,
        ctx: &mut Context<Self>,
    ) {
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
        }
    }
}

/// Handles `pending.batch[pending.at..]` in order. Returns the handler when done, or where
/// it panicked (the handler is dropped then: its state may be half-updated).
async fn run_batch<E: DomainEvent, H: RunsEvents<E>>(
    mut handler: Box<H>,
    pending: Pending,
    setup: HandlerSetup<H>,
) -> Outcome<H> {
    let Pending {
        batch,
        at,
        attempt,
        through,
        mut refailed,
        load,
    } = pending;
    let counters = &*setup.counters;
    let retry = setup.retry;
    let mut latencies = Vec::with_capacity(batch.len() - at.min(batch.len()));
    let mut first_attempt = attempt;
    let mut takes_runs = handler.takes_runs();
    let mut i = at;
    while i < batch.len() {
        let record = &batch[i];
        let mut attempt = std::mem::replace(&mut first_attempt, 1);
        if attempt == 1 && takes_runs && batch.len() - i > 1 {
            // A handler that takes runs of events at once (a projection: one transaction).
            let run: Vec<Envelope<E>> = batch[i..]
                .iter()
                .map_while(|r| r.envelope::<E>().ok())
                .collect();
            if run.len() > 1 {
                let many = handler.handle_many(&run);
                takes_runs = many.is_some();
                if let Some(many) = many {
                    let (applied, failure) = many.await;
                    let applied = applied.min(run.len());
                    for r in &batch[i..i + applied] {
                        latencies.push(r.published_at.elapsed().as_nanos() as u64);
                    }
                    HandlerCounters::add(&counters.handled, applied as u64);
                    i += applied;
                    if let (Some(error), true) = (failure, i < batch.len()) {
                        // The first attempt at batch[i] failed: on to the one-by-one path,
                        // which retries it with backoff.
                        HandlerCounters::add(&counters.failed_attempts, 1);
                        if retry.max_attempts() <= 1 {
                            setup.dead_letter(
                                batch[i].clone(),
                                1,
                                error.to_string(),
                                &mut refailed,
                            );
                            i += 1;
                        } else {
                            log::debug!("handler `{}` failed in a run: {error}", setup.name);
                            actix::clock::sleep(retry.backoff_policy().delay_for(1)).await;
                            first_attempt = 2;
                        }
                    }
                    continue;
                }
            }
        }
        i += 1;
        let envelope = match record.envelope::<E>() {
            Ok(envelope) => envelope,
            Err(why) => {
                // Retrying cannot make a payload decode: straight to the dead letters.
                setup.dead_letter(record.clone(), 0, why, &mut refailed);
                continue;
            }
        };
        loop {
            if attempt > 1 {
                HandlerCounters::add(&counters.retries, 1);
            }
            // A handler may panic while *creating* its future (a synchronous body), not only
            // while it runs: both are caught.
            let instance = &mut *handler;
            let event = &envelope;
            let outcome = match caught(|| {
                std::panic::catch_unwind(AssertUnwindSafe(move || {
                    let instance = instance; // moved, so the future may keep the borrow
                    instance.handle(event)
                }))
            }) {
                Ok(future) => {
                    let mut future = std::pin::pin!(future);
                    std::future::poll_fn(|cx| {
                        caught(|| {
                            std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
                        })
                        .map_or_else(|panic| std::task::Poll::Ready(Err(panic)), |p| p.map(Ok))
                    })
                    .await
                }
                Err(panic) => Err(panic),
            };
            match outcome {
                Ok(Ok(())) => {
                    latencies.push(record.published_at.elapsed().as_nanos() as u64);
                    HandlerCounters::add(&counters.handled, 1);
                    break;
                }
                Ok(Err(error)) => {
                    HandlerCounters::add(&counters.failed_attempts, 1);
                    if attempt >= retry.max_attempts() {
                        setup.dead_letter(
                            record.clone(),
                            attempt,
                            error.to_string(),
                            &mut refailed,
                        );
                        break;
                    }
                    log::debug!(
                        "handler `{}` failed on {} (attempt {attempt}): {error}",
                        setup.name,
                        record.meta.id
                    );
                    actix::clock::sleep(retry.backoff_policy().delay_for(attempt)).await;
                    attempt += 1;
                }
                Err(panic) => {
                    HandlerCounters::add(&counters.failed_attempts, 1);
                    counters.record_latencies(&latencies);
                    let message = panic_message(&*panic);
                    // The panic counts as an attempt; give up on this event once they are spent.
                    let pending = if attempt >= retry.max_attempts() {
                        setup.dead_letter(
                            record.clone(),
                            attempt,
                            format!("handler panicked: {message}"),
                            &mut refailed,
                        );
                        Pending {
                            batch,
                            at: i,
                            attempt: 1,
                            through,
                            refailed,
                            load,
                        }
                    } else {
                        Pending {
                            batch,
                            at: i - 1,
                            attempt: attempt + 1,
                            through,
                            refailed,
                            load,
                        }
                    };
                    return Outcome::Panicked { pending, message };
                }
            }
        }
    }
    counters.record_latencies(&latencies);
    Outcome::Done(handler, refailed)
}

/// Builds a handler instance; a panicking factory is reported, not propagated.
fn build_handler<H>(factory: &Factory<H>, partition: usize) -> Result<Box<H>, String> {
    caught(|| std::panic::catch_unwind(AssertUnwindSafe(|| Box::new(factory(partition)))))
        .map_err(|panic| panic_message(&*panic))
}

thread_local! {
    /// Set while user code runs whose panics the bus catches and reports itself.
    static CAUGHT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Once per process: the panic hook (whatever the application installed) stays quiet for
/// panics the bus catches in handlers, factories and projections; it reports those through
/// `log`, counted. Every other panic is printed as before.
pub(crate) fn quiet_caught_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAUGHT.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f` (which catches the panics of the user code it calls) with the panic hook quiet.
pub(crate) fn caught<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAUGHT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAUGHT.with(|c| c.replace(true)));
    f()
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
