//! Model-based test of the guarantees: random sequences of what an application and its
//! operators do to a SQLite store (publish and publish_all on random streams, publishes with
//! chosen ids sent three times at once and again later, restart with the same or another
//! concurrency, retention, a kill, replay, redrive, operator commands from another process,
//! a second bus trying to start), checked after every step against a simple
//! model: positions only grow over the store's life; every acknowledged event is handled by
//! every subscription, in stream order within a run; projection effects exactly once; one dead
//! letter per (handler, event); lag 0 when drained; `check` consistent.
//!
//! `PROPTEST_CASES` sets how many sequences run (CI: the default below).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::{
    Envelope, Error, EventBus, EventHandler, HandlerError, HandlerOptions, PublishOptions, Receipt,
    Replay, Retention, Store, StoreError,
};
use common::{
    applications, create_with_read_model, fast_restart, fast_retry, Applied, OrderPlaced, TempStore,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// `count` single publishes on one stream.
    Publish { stream: u8, count: u8 },
    /// One publish_all over several streams (all or nothing).
    PublishAll { streams: Vec<u8> },
    /// Shut down cleanly and start again (retention deletes what everyone processed).
    Restart { concurrency: u8, retention: bool },
    /// Stop the process's actors abruptly (nothing of the bus's in-memory state survives),
    /// then start with this concurrency: a re-layout from checkpoints that differ.
    Kill { concurrency: u8 },
    /// With the bus stopped: replay the plain handler from a position, or rebuild the projection.
    Replay {
        projection: bool,
        from_per_mille: u16,
    },
    /// Hand the flaky handler's dead letters back (it succeeds on a redrive).
    Redrive,
    /// `actorbus stats` and `check` from another process while the bus publishes.
    OperatorReads,
    /// A second bus on the same store: refused while this one runs.
    SecondBus,
    /// `count` publishes with chosen ids on one stream, each sent three times at once
    /// (retries before the first was answered); with `retry_old`, an id acknowledged before
    /// (in this run or an earlier one) is published again.
    Idempotent {
        stream: u8,
        count: u8,
        retry_old: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..6, 1u8..12).prop_map(|(stream, count)| Op::Publish { stream, count }),
        3 => proptest::collection::vec(0u8..6, 1..8).prop_map(|streams| Op::PublishAll { streams }),
        2 => (1u8..=4, any::<bool>()).prop_map(|(concurrency, retention)| Op::Restart { concurrency, retention }),
        2 => (1u8..=4).prop_map(|concurrency| Op::Kill { concurrency }),
        1 => (any::<bool>(), 0u16..=1000).prop_map(|(projection, from_per_mille)| Op::Replay { projection, from_per_mille }),
        1 => Just(Op::Redrive),
        1 => Just(Op::OperatorReads),
        1 => Just(Op::SecondBus),
        2 => (0u8..6, 1u8..6, any::<bool>())
            .prop_map(|(stream, count, retry_old)| Op::Idempotent { stream, count, retry_old }),
    ]
}

/// What the handlers saw, by run: (run, stream, version, position).
type Seen = Arc<Mutex<Vec<(usize, String, u64, u64)>>>;

struct Recorder {
    run: usize,
    seen: Seen,
}

impl EventHandler<OrderPlaced> for Recorder {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((
            self.run,
            e.stream_id().to_owned(),
            e.stream_version().unwrap_or(0),
            e.position().unwrap_or(0),
        ));
        Ok(())
    }
}

/// Fails every attempt at the events whose seq is 3 mod 7 until it is fixed (for a redrive);
/// panics at the first attempt of those 5 mod 11 (once per event over the whole sequence).
struct Flaky {
    panicked: Arc<Mutex<HashSet<u64>>>,
    fixed: Arc<AtomicBool>,
}

impl EventHandler<OrderPlaced> for Flaky {
    async fn handle(&mut self, e: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        if e.seq % 11 == 5 && self.panicked.lock().unwrap().insert(e.seq) {
            panic!("flaky panics on seq {}", e.seq);
        }
        if e.seq % 7 == 3 && !self.fixed.load(Ordering::SeqCst) {
            return Err(format!("seq {} always fails", e.seq).into());
        }
        Ok(())
    }
}

/// The simple model: what was acknowledged, and what must hold of it.
#[derive(Default)]
struct Model {
    /// seq -> (stream, position) of every acknowledged event.
    acked: BTreeMap<u64, (String, u64)>,
    last_position: u64,
    next_seq: u64,
    /// Events the flaky handler gives up on (until redriven).
    letters_expected: BTreeSet<u64>,
    /// Retention may have deleted events: a projection rebuild is refused then.
    pruned: bool,
    /// Retention was on in some run: an old id may be forgotten with its event.
    retention_ever: bool,
    /// (id, position) of every event published with a chosen id.
    ids: Vec<(uuid::Uuid, u64)>,
}

struct World {
    path: PathBuf,
    run: usize,
    concurrency: usize,
    retention: bool,
    seen: Seen,
    panicked: Arc<Mutex<HashSet<u64>>>,
    fixed: Arc<AtomicBool>,
    model: Model,
    system: Option<actix::SystemRunner>,
    bus: Option<EventBus>,
}

impl World {
    fn new(path: PathBuf) -> Self {
        create_with_read_model(&path);
        Self {
            path,
            run: 0,
            concurrency: 2,
            retention: false,
            seen: Arc::default(),
            panicked: Arc::default(),
            fixed: Arc::default(),
            model: Model::default(),
            system: None,
            bus: None,
        }
    }

    fn builder(&self) -> actorbus::BusBuilder {
        let (run, seen) = (self.run, Arc::clone(&self.seen));
        let (panicked, fixed) = (Arc::clone(&self.panicked), Arc::clone(&self.fixed));
        let mut builder = EventBus::builder()
            .sqlite(&self.path)
            .handler_with(
                "recorder",
                HandlerOptions::new().concurrency(self.concurrency),
                move || Recorder {
                    run,
                    seen: Arc::clone(&seen),
                },
            )
            .handler_with(
                "flaky",
                HandlerOptions::new()
                    .concurrency(self.concurrency.max(2) - 1)
                    .retry(fast_retry(2))
                    .restart(fast_restart(10_000)),
                move || Flaky {
                    panicked: Arc::clone(&panicked),
                    fixed: Arc::clone(&fixed),
                },
            )
            .projection(
                "effects",
                HandlerOptions::new().concurrency(self.concurrency),
                || Applied,
            );
        if self.retention {
            builder = builder.retention(Retention::keep_last(3).every(Duration::from_millis(10)));
        }
        builder
    }

    /// Starts a bus (a new run). A killed run's writer thread may still be letting go of
    /// the store: a bounded retry on `InUse`.
    fn start(&mut self) {
        self.run += 1;
        let system = actix::System::new();
        let mut last = None;
        for _ in 0..500 {
            match system.block_on(async { self.builder().build() }) {
                Ok(bus) => {
                    self.bus = Some(bus);
                    self.system = Some(system);
                    return;
                }
                Err(e @ Error::Store(StoreError::InUse { .. })) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the bus does not start: {e}"),
            }
        }
        panic!("the store stayed in use: {last:?}");
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.system.as_ref().expect("a bus runs").block_on(f)
    }

    fn publish(&mut self, streams: &[u8], all: bool) {
        let bus = self.bus.clone().expect("a bus runs");
        let events: Vec<OrderPlaced> = streams
            .iter()
            .map(|&s| {
                self.model.next_seq += 1;
                OrderPlaced {
                    order: u64::from(s),
                    seq: self.model.next_seq,
                }
            })
            .collect();
        let receipts = self.block_on(async {
            if all {
                bus.publish_all(events.clone()).await.unwrap()
            } else {
                let mut receipts = Vec::new();
                for e in events.clone() {
                    receipts.push(bus.publish(e).await.unwrap());
                }
                receipts
            }
        });
        for (e, r) in events.iter().zip(receipts) {
            self.acknowledged(e, &r);
        }
    }

    /// Records an acknowledged event in the model; answers its position.
    fn acknowledged(&mut self, e: &OrderPlaced, r: &Receipt) -> u64 {
        let position = r.position.expect("durable");
        assert!(
            position > self.model.last_position,
            "position {position} after {}: positions only grow",
            self.model.last_position
        );
        self.model.last_position = position;
        self.model
            .acked
            .insert(e.seq, (format!("order-{}", e.order), position));
        if e.seq % 7 == 3 {
            self.model.letters_expected.insert(e.seq);
        }
        position
    }

    /// Each event published three times at once with one chosen id: one event, each
    /// publish answered with it. Then, unless retention may have forgotten it, an old id again: its event.
    fn publish_idempotent(&mut self, stream: u8, count: u8, retry_old: bool) {
        let bus = self.bus.clone().expect("a bus runs");
        for _ in 0..count {
            self.model.next_seq += 1;
            let e = OrderPlaced {
                order: u64::from(stream),
                seq: self.model.next_seq,
            };
            let id = uuid::Uuid::now_v7();
            let options = PublishOptions::new().event_id(id);
            // Three at once: the router splits what waits into two commits, so two of them
            // share one.
            let (x, y, z) = self.block_on(async {
                tokio::join!(
                    bus.publish_with(e.clone(), options.clone()),
                    bus.publish_with(e.clone(), options.clone()),
                    bus.publish_with(e.clone(), options)
                )
            });
            let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
            assert!(x == y && y == z, "one id, one event: {x:?} {y:?} {z:?}");
            let position = self.acknowledged(&e, &x);
            self.model.ids.push((id, position));
        }
        if retry_old && !self.model.retention_ever {
            let (id, position) =
                self.model.ids[self.model.next_seq as usize % self.model.ids.len()];
            let again = OrderPlaced {
                order: u64::from(stream),
                seq: u64::MAX,
            };
            let receipt = self.block_on(async {
                bus.publish_with(again, PublishOptions::new().event_id(id))
                    .await
                    .unwrap()
            });
            assert_eq!(receipt.position, Some(position), "an old id again");
        }
    }

    /// Clean shutdown, then every check of a drained store.
    fn stop(&mut self) {
        let Some(bus) = self.bus.take() else { return };
        let system = self.system.take().unwrap();
        system.block_on(async { bus.shutdown(Duration::from_secs(20)).await.unwrap() });
        drop(bus);
        drop(system);
        self.check_drained();
    }

    /// Abrupt stop: the actix system goes with everything in memory (unwritten checkpoints,
    /// queued dead letters, mailboxes), as in a crash; what was committed stays.
    fn kill(&mut self) {
        let Some(bus) = self.bus.take() else { return };
        let system = self.system.take().unwrap();
        system.block_on(async { actix::System::current().stop() });
        // The system's stop reaches every arbiter (the writer's too) and drops its actors
        // with whatever they held in memory; the OS would release the store's lock likewise.
        system.run().expect("the system stops");
        drop(bus);
    }

    fn check_drained(&mut self) {
        let store = Store::open(&self.path).unwrap();
        assert_eq!(store.check().unwrap(), Vec::<String>::new(), "check");
        let summary = store.summary().unwrap();
        assert_eq!(summary.head, self.model.last_position, "head");
        for h in &summary.handlers {
            assert_eq!(h.lag, 0, "lag of `{}` when drained", h.name);
        }
        if summary.events < self.model.acked.len() as u64 {
            self.model.pruned = true;
        }
        // Every acknowledged event handled by the recorder, and per stream in order in a run.
        let seen = self.seen.lock().unwrap().clone();
        let handled: HashSet<u64> = seen.iter().map(|s| s.3).collect();
        for (seq, (_, position)) in &self.model.acked {
            assert!(
                handled.contains(position),
                "event {seq} at {position} never handled"
            );
        }
        let mut last: HashMap<(usize, &str), u64> = HashMap::new();
        for (run, stream, version, _) in &seen {
            if let Some(before) = last.insert((*run, stream), *version) {
                assert!(
                    *version > before,
                    "run {run}: `{stream}` version {version} after {before}"
                );
            }
        }
        // Effects exactly once.
        let (rows, events) = applications(&self.path);
        assert_eq!(rows, events, "a projection effect applied twice");
        assert_eq!(
            events as usize,
            self.model.acked.len(),
            "projection effects"
        );
        // One dead letter per event the flaky handler gives up on.
        // One each; letters of different streams come from different actors, in any order.
        let mut letters: Vec<u64> = store
            .dead_letters(Some("flaky"))
            .unwrap()
            .iter()
            .map(|l| l.event.position)
            .collect();
        letters.sort_unstable();
        let expected: Vec<u64> = self
            .model
            .letters_expected
            .iter()
            .map(|seq| self.model.acked[seq].1)
            .collect();
        assert_eq!(letters, expected, "flaky's dead letters");
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish { stream, count } => {
                self.publish(&vec![*stream; usize::from(*count)], false)
            }
            Op::PublishAll { streams } => self.publish(streams, true),
            Op::Restart {
                concurrency,
                retention,
            } => {
                self.stop();
                self.concurrency = usize::from(*concurrency);
                self.retention = *retention;
                self.model.retention_ever |= *retention;
                self.start();
            }
            Op::Kill { concurrency } => {
                self.kill();
                self.concurrency = usize::from(*concurrency);
                self.start();
            }
            Op::Replay {
                projection,
                from_per_mille,
            } => {
                self.stop();
                let store = Store::open(&self.path).unwrap();
                if *projection {
                    match store.replay("effects", 0) {
                        Ok(Replay::Rebuild) => assert!(!self.model.pruned),
                        Err(Error::NotReplayable { .. }) => assert!(self.model.pruned),
                        other => panic!("replay of the projection: {other:?}"),
                    }
                } else {
                    let from = self.model.last_position * u64::from(*from_per_mille) / 1000;
                    match store.replay("recorder", from) {
                        Ok(Replay::Moved(_)) => {}
                        other => panic!("replay of the recorder: {other:?}"),
                    }
                }
                drop(store);
                self.start();
            }
            Op::Redrive => {
                // What is in flight ends as dead letters first (a drained stop); then the
                // fixed handler takes every one of them back.
                self.stop();
                self.start();
                self.fixed.store(true, Ordering::SeqCst);
                let bus = self.bus.clone().unwrap();
                let n = self.block_on(async { bus.redrive("flaky").await.unwrap() });
                assert_eq!(n, self.model.letters_expected.len(), "letters redriven");
                self.model.letters_expected.clear();
                self.stop();
                self.fixed.store(false, Ordering::SeqCst);
                self.start();
            }
            Op::OperatorReads => {
                let children: Vec<_> = ["stats", "check"]
                    .iter()
                    .map(|cmd| {
                        Command::new(env!("CARGO_BIN_EXE_actorbus"))
                            .args([cmd, "--db"])
                            .arg(&self.path)
                            .stdout(std::process::Stdio::null())
                            .spawn()
                            .unwrap()
                    })
                    .collect();
                self.publish(&[0, 1, 2, 3, 4, 5], true);
                for mut child in children {
                    // `check` may report a lag-free store as consistent only: any exit is fine
                    // here; what matters is that the running bus keeps its locks and WAL.
                    child.wait().unwrap();
                }
                let wal = PathBuf::from(format!("{}-wal", self.path.display()));
                assert!(
                    wal.exists(),
                    "another process removed the running bus's WAL"
                );
                self.publish(&[5, 4, 3], false);
            }
            Op::Idempotent {
                stream,
                count,
                retry_old,
            } => self.publish_idempotent(*stream, *count, *retry_old),
            Op::SecondBus => {
                let second = self.block_on(async { self.builder().build() });
                assert!(
                    matches!(second, Err(Error::Store(StoreError::InUse { .. }))),
                    "a second bus started: {:?}",
                    second.map(|_| ())
                );
            }
        }
    }
}

fn run_sequence(path: &Path, ops: &[Op]) {
    let mut world = World::new(path.to_path_buf());
    world.start();
    for op in ops {
        world.apply(op);
    }
    world.stop();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_guarantees_hold_over_random_sequences(ops in proptest::collection::vec(op(), 1..12)) {
        run_sequence(TempStore::new().path(), &ops);
    }
}

#[test]
fn a_fixed_sequence_of_every_operation() {
    run_sequence(
        TempStore::new().path(),
        &[
            Op::Publish {
                stream: 1,
                count: 10,
            },
            Op::PublishAll {
                streams: vec![0, 1, 2, 3, 4, 5, 0],
            },
            Op::Restart {
                concurrency: 4,
                retention: false,
            },
            Op::Publish {
                stream: 2,
                count: 9,
            },
            Op::Kill { concurrency: 2 },
            Op::PublishAll {
                streams: vec![3, 3, 3],
            },
            Op::OperatorReads,
            Op::SecondBus,
            Op::Redrive,
            Op::Replay {
                projection: true,
                from_per_mille: 0,
            },
            Op::Replay {
                projection: false,
                from_per_mille: 500,
            },
            Op::Restart {
                concurrency: 1,
                retention: true,
            },
            Op::Publish {
                stream: 4,
                count: 11,
            },
            Op::Restart {
                concurrency: 3,
                retention: true,
            },
            Op::Replay {
                projection: true,
                from_per_mille: 0,
            },
        ],
    );
}
