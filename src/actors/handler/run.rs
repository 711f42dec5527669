//! How a handler actor runs a batch: [`RunsEvents`] (what it runs: one event at a time, or
//! runs of events), and [`run_batch`], which handles a batch in order with retries and
//! backoff, dead-letters what keeps failing, and stops where the handler panics.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use super::HandlerSetup;
use crate::actors::panics::{caught, panic_message};
use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope, Record};
use crate::stats::HandlerCounters;

/// What a handler actor runs: one event at a time, or a run of events at once where that is
/// cheaper (a [`BatchHandler`](crate::BatchHandler); a projection commits a run in one
/// transaction). Internal: users implement [`EventHandler`], `BatchHandler` or `Projection`.
pub(crate) trait RunsEvents<E: DomainEvent>: 'static {
    /// Handles one event (also the retry of an event that failed in a run).
    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>>;

    /// The claim the next batch runs under (see [`Deliver::fence`](super::Deliver::fence)):
    /// what a projection fences its writes with.
    fn fence(&mut self, _fence: Option<i64>) {}

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

/// Events not yet handled when a handler panicked: `batch[at..]`, the first at `attempt`.
pub(super) struct Pending {
    pub(super) batch: Vec<Record>,
    pub(super) at: usize,
    pub(super) attempt: u32,
    /// The delivery's watermark ([`Deliver::through`](super::Deliver::through)).
    pub(super) through: Option<u64>,
    /// Redriven letters of this batch that failed again: they stay.
    pub(super) refailed: Vec<i64>,
    /// The delivery's [`Deliver::load`](super::Deliver::load), released once the batch is done.
    pub(super) load: usize,
}

impl Pending {
    pub(super) fn new(batch: Vec<Record>, through: Option<u64>, load: usize) -> Self {
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
    pub(super) fn reaches(&self) -> Option<u64> {
        self.batch
            .iter()
            .filter(|r| r.letter.is_none())
            .filter_map(|r| r.meta.position)
            .max()
            .max(self.through)
    }
}

/// How a run over a batch ended.
pub(super) enum Outcome<H> {
    /// Every event handled or dead-lettered; the redriven letters that failed again.
    Done(Box<H>, Vec<i64>),
    Panicked {
        pending: Pending,
        message: String,
    },
}

/// Whether a handler's error says its partition moved to another process (a projection's
/// write was fenced off): the batch stops there, with nothing retried or dead-lettered.
fn lost_the_partition(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    error.is::<crate::storage::backend::Fenced>()
}

/// Handles `pending.batch[pending.at..]` in order. Returns the handler when done, or where
/// it panicked (the handler is dropped then: its state may be half-updated).
pub(super) async fn run_batch<E: DomainEvent, H: RunsEvents<E>>(
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
    'batch: while i < batch.len() {
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
                    let span = crate::telemetry::run_span(&setup.name, &batch[i..i + run.len()]);
                    let (applied, failure) = crate::telemetry::within!(span, many);
                    if failure.as_deref().is_some_and(lost_the_partition) {
                        // Nothing of the run was stored: the partition's new owner does it.
                        break;
                    }
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
                                crate::error::chain(&*error),
                                &mut refailed,
                            );
                            i += 1;
                        } else {
                            log::debug!(
                                "handler `{}` failed in a run: {}",
                                setup.name,
                                crate::error::chain(&*error)
                            );
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
            let span = crate::telemetry::handle_span(&setup.name, record, attempt);
            let attempt_at = async {
                match caught(|| {
                    std::panic::catch_unwind(AssertUnwindSafe(move || {
                        let instance = instance; // moved, so the future may keep the borrow
                        instance.handle(event)
                    }))
                }) {
                    Ok(future) => {
                        let mut future = std::pin::pin!(future);
                        std::future::poll_fn(|cx| {
                            caught(|| {
                                std::panic::catch_unwind(AssertUnwindSafe(|| {
                                    future.as_mut().poll(cx)
                                }))
                            })
                            .map_or_else(|panic| std::task::Poll::Ready(Err(panic)), |p| p.map(Ok))
                        })
                        .await
                    }
                    Err(panic) => Err(panic),
                }
            };
            let outcome = crate::telemetry::within!(span, attempt_at);
            match outcome {
                Ok(Ok(())) => {
                    latencies.push(record.published_at.elapsed().as_nanos() as u64);
                    HandlerCounters::add(&counters.handled, 1);
                    break;
                }
                Ok(Err(error)) if lost_the_partition(&*error) => {
                    // Another process owns the partition now: the rest of the batch is its.
                    break 'batch;
                }
                Ok(Err(error)) => {
                    HandlerCounters::add(&counters.failed_attempts, 1);
                    if attempt >= retry.max_attempts() {
                        setup.dead_letter(
                            record.clone(),
                            attempt,
                            crate::error::chain(&*error),
                            &mut refailed,
                        );
                        break;
                    }
                    log::debug!(
                        "handler `{}` failed on {} (attempt {attempt}): {}",
                        setup.name,
                        record.meta.id,
                        crate::error::chain(&*error)
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
