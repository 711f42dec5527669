//! Projections: handlers that write a read model in the store, in the same transaction as
//! their checkpoint, so that a crash never applies an event twice or skips one.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use actix::Addr;
use diesel::SqliteConnection;

use crate::actors::handler::{ManyHandled, RunsEvents};
use crate::actors::storage::{Project, StorageActor};
use crate::error::HandlerError;
use crate::event::{DomainEvent, Envelope};
use crate::storage::backend::{Progress, ProjectError, ProjectionJob, Tx};
use crate::storage::convert::micros;
use crate::storage::models::CheckpointRow;
use crate::storage::StoreError;

/// A read model kept in the bus's SQLite store. `apply` runs on the storage actor's thread,
/// inside the transaction that also moves this projection's checkpoint past the event: the
/// read model and the checkpoint commit together or not at all (exactly-once effects).
///
/// Return `Err` to roll the transaction back; the event is retried with the subscription's
/// retry policy, then dead-lettered. A panic in `apply` is caught and treated as an error.
/// Keep `apply` short: the store's single writer waits for it.
///
/// The recipe: create the read model's tables once the store exists and before the bus
/// starts applying events (`Store::create(path)?.with_connection(|c| c.batch_execute(DDL))`,
/// then `EventBus::builder().sqlite(path).projection(..).build()`); read them with
/// [`Store::with_connection`](crate::Store::with_connection) (off the arbiter: it blocks).
/// The connection type is diesel's, re-exported as [`actorbus::diesel`](crate::diesel). To
/// let `actorbus replay` rebuild the read model, set [`RESETTABLE`](Self::RESETTABLE) and
/// define [`reset`](Self::reset). `examples/actix_web.rs` shows all of it in a web service.
///
/// ```
/// use actorbus::{DomainEvent, Envelope, HandlerError, Projection};
/// use diesel::connection::SimpleConnection;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct OrderPlaced { id: u64 }
/// # impl DomainEvent for OrderPlaced { const EVENT_TYPE: &'static str = "order.placed";
/// #     fn stream_id(&self) -> String { self.id.to_string() } }
///
/// struct OrderCount;
/// impl Projection<OrderPlaced> for OrderCount {
///     fn apply(&mut self, _e: &Envelope<OrderPlaced>, conn: &mut diesel::SqliteConnection) -> Result<(), HandlerError> {
///         conn.batch_execute("CREATE TABLE IF NOT EXISTS order_count (n INTEGER NOT NULL);
///                             INSERT INTO order_count SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM order_count);
///                             UPDATE order_count SET n = n + 1;")?;
///         Ok(())
///     }
/// }
/// ```
pub trait Projection<E: DomainEvent>: Send + 'static {
    /// Applies one event to the read model through `conn`.
    ///
    /// # Errors
    /// Any error: the transaction is rolled back and the event retried.
    fn apply(
        &mut self,
        event: &Envelope<E>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError>;

    /// Whether [`reset`](Self::reset) can clear the read model so that it is rebuilt from
    /// the log. Without it, `actorbus replay` refuses the projection: replaying events into
    /// a read model that already holds them would apply them twice.
    const RESETTABLE: bool = false;

    /// Clears the read model (delete its rows, or drop and recreate its tables). Called when
    /// an operator asked for a replay (`actorbus replay --handler NAME`), at the next start of
    /// the bus, in the transaction that moves the checkpoints back to the beginning; then the
    /// whole log is applied again. Only called when [`RESETTABLE`](Self::RESETTABLE) is true.
    ///
    /// # Errors
    /// Any error: the bus does not start (nothing is changed), and says why.
    fn reset(&mut self, conn: &mut SqliteConnection) -> Result<(), HandlerError> {
        let _ = conn;
        Err("this projection has no reset".into())
    }

    /// Whether [`apply_postgres`](Self::apply_postgres) is defined: a bus on PostgreSQL
    /// refuses to start (`Error::Config`) with a projection that has no PostgreSQL side.
    #[cfg(feature = "postgres")]
    const POSTGRES: bool = false;

    /// [`apply`](Self::apply) on a PostgreSQL store: the same work in PostgreSQL's SQL, in
    /// the transaction that moves the checkpoint (and checks this process still owns it).
    ///
    /// # Errors
    /// Any error: the transaction is rolled back and the event retried.
    #[cfg(feature = "postgres")]
    fn apply_postgres(
        &mut self,
        event: &Envelope<E>,
        conn: &mut diesel::PgConnection,
    ) -> Result<(), HandlerError> {
        let _ = (event, conn);
        Err("this projection has no PostgreSQL side (Projection::POSTGRES)".into())
    }

    /// [`reset`](Self::reset) on a PostgreSQL store.
    ///
    /// # Errors
    /// Any error: the bus does not start (nothing is changed), and says why.
    #[cfg(feature = "postgres")]
    fn reset_postgres(&mut self, conn: &mut diesel::PgConnection) -> Result<(), HandlerError> {
        let _ = conn;
        Err("this projection has no reset on PostgreSQL".into())
    }
}

/// Applies `event` on whichever database the writer runs.
fn apply_on<E: DomainEvent, P: Projection<E>>(
    projection: &mut P,
    event: &Envelope<E>,
    tx: Tx<'_>,
) -> Result<(), HandlerError> {
    match tx {
        Tx::Sqlite(conn) => projection.apply(event, conn),
        #[cfg(feature = "postgres")]
        Tx::Postgres(conn) => projection.apply_postgres(event, conn),
    }
}

/// Resets the read model on whichever database the writer runs.
pub(crate) fn reset_on<E: DomainEvent, P: Projection<E>>(
    projection: &mut P,
    tx: Tx<'_>,
) -> Result<(), HandlerError> {
    match tx {
        Tx::Sqlite(conn) => projection.reset(conn),
        #[cfg(feature = "postgres")]
        Tx::Postgres(conn) => projection.reset_postgres(conn),
    }
}

/// The handler a projection subscription runs: it sends each event's work to the writer.
pub(crate) struct ProjectionHandler<E, P> {
    projection: Arc<Mutex<P>>,
    storage: Addr<StorageActor>,
    name: Arc<str>,
    partition: usize,
    partitions: usize,
    /// The claim the current batch runs under (see `RunsEvents::fence`).
    fence: Option<i64>,
    _event: PhantomData<fn() -> E>,
}

impl<E, P> ProjectionHandler<E, P> {
    pub(crate) fn new(
        projection: P,
        storage: Addr<StorageActor>,
        name: Arc<str>,
        partition: usize,
        partitions: usize,
    ) -> Self {
        Self {
            projection: Arc::new(Mutex::new(projection)),
            storage,
            name,
            partition,
            partitions,
            fence: None,
            _event: PhantomData,
        }
    }
}

impl<E, P> ProjectionHandler<E, P> {
    /// This actor's checkpoint at a position.
    fn checkpoint(&self) -> impl Fn(Option<u64>) -> Progress + Send + 'static {
        let (name, partition, partitions, fence) = (
            self.name.to_string(),
            self.partition,
            self.partitions,
            self.fence,
        );
        move |position| Progress {
            row: CheckpointRow {
                handler: name.clone(),
                partition: partition as i32,
                partitions: partitions as i32,
                position: position.unwrap_or(0) as i64,
                updated_at: micros(std::time::SystemTime::now()),
            },
            fence,
        }
    }
}

/// Runs user code on the writer's thread: a panic becomes an error, not a dead writer.
fn guarded(apply: impl FnOnce() -> Result<(), HandlerError>) -> Result<(), HandlerError> {
    crate::actors::panics::caught(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(apply)))
        .unwrap_or_else(|panic| {
            Err(format!(
                "projection panicked: {}",
                crate::actors::panics::panic_message(&*panic)
            )
            .into())
        })
}

impl<E: DomainEvent, P: Projection<E>> RunsEvents<E> for ProjectionHandler<E, P> {
    fn takes_runs(&self) -> bool {
        true
    }

    fn fence(&mut self, fence: Option<i64>) {
        self.fence = fence;
    }

    /// A run in one transaction: each event in a savepoint of its own, so the run commits
    /// every event up to the first that fails, with the checkpoint of the last one applied.
    fn handle_many<'a>(&'a mut self, events: &'a [Envelope<E>]) -> Option<ManyHandled<'a>> {
        let projection = Arc::clone(&self.projection);
        let events: Vec<Envelope<E>> = events.to_vec();
        let at = self.checkpoint();
        let outcome = Arc::new(Mutex::new((0usize, None::<HandlerError>)));
        let report = Arc::clone(&outcome);
        let job: ProjectionJob = Box::new(move |mut tx: Tx<'_>| {
            let mut projection = projection.lock().unwrap_or_else(|p| p.into_inner());
            // The run in one savepoint (a savepoint per event would cost PostgreSQL two round
            // trips each). When event k fails, the savepoint is rolled back and the events
            // before k are applied again in a new one: the transaction commits every event
            // up to the first that fails, as it would one at a time.
            let mut limit = events.len();
            let mut failure: Option<HandlerError> = None;
            let applied = loop {
                let mut failed = None;
                let saved = tx.savepoint(|mut tx| {
                    for (i, event) in events[..limit].iter().enumerate() {
                        if let Err(e) = guarded(|| apply_on(&mut *projection, event, tx.reborrow()))
                        {
                            failed = Some((i, e));
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                    }
                    Ok(())
                });
                match (saved, failed) {
                    (Ok(()), _) => break limit,
                    // The error reported is that of the first event not applied.
                    (Err(_), Some((i, e))) => {
                        failure = Some(e);
                        limit = i;
                    }
                    // The savepoint itself failed (the store): nothing of the run holds.
                    (Err(e), None) => {
                        failure = Some(Box::new(e));
                        limit = 0;
                    }
                }
                if limit == 0 {
                    break 0;
                }
            };
            let checkpoint = (applied > 0).then(|| at(events[applied - 1].position()));
            *report.lock().unwrap_or_else(|p| p.into_inner()) = (applied, failure);
            Ok(checkpoint)
        });
        let storage = self.storage.clone();
        Some(Box::pin(async move {
            match storage.send(Project(job)).await {
                Ok(Ok(())) => {
                    std::mem::take(&mut *outcome.lock().unwrap_or_else(|p| p.into_inner()))
                }
                Ok(Err(e)) => (0, Some(e.into_handler_error())),
                Err(_) => (0, Some(StoreError::WriterStopped.into())),
            }
        }))
    }

    fn handle(&mut self, event: &Envelope<E>) -> impl Future<Output = Result<(), HandlerError>> {
        let projection = Arc::clone(&self.projection);
        let event = event.clone();
        let checkpoint = self.checkpoint()(event.position());
        let storage = self.storage.clone();
        async move {
            let job: ProjectionJob = Box::new(move |tx: Tx<'_>| {
                let mut projection = projection.lock().unwrap_or_else(|p| p.into_inner());
                guarded(|| apply_on(&mut *projection, &event, tx))
                    .map_err(ProjectError::Handler)?;
                Ok(Some(checkpoint))
            });
            match storage.send(Project(job)).await {
                Ok(result) => result.map_err(ProjectError::into_handler_error),
                Err(_) => Err(StoreError::WriterStopped.into()),
            }
        }
    }
}
