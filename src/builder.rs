//! The bus builder: the store, the intake, the threads and the subscriptions; `build` wires
//! the actors together (the one place that does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

mod subscribe;

use crate::actors::router::Partition;
use crate::actors::supervisor::{
    SpawnArgs, StorePlan, SubscriptionPlan, SupervisorActor, TreePlan,
};
use crate::bus::{BusShared, EventBus};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::options::{
    HandlerOptions, StartFrom, DEFAULT_INTAKE_CAPACITY, DEFAULT_MAILBOX_CAPACITY,
    MAX_INTAKE_CAPACITY,
};
use crate::stats::{BusCounters, HandlerCounters};
use crate::storage::backend;
use crate::storage::registry::{Kind, ResetHook, SubscriptionSpec};
use crate::storage::{Durability, PostgresOptions, Retention, SqliteOptions, StoreConfig};

struct Registration {
    name: Arc<str>,
    event_types: &'static [&'static str],
    options: HandlerOptions,
    /// A projection (only possible on a durable bus) or any other handler.
    kind: Kind,
    /// A projection's read-model reset, where it has one.
    reset: Option<ResetHook>,
    /// It can run on PostgreSQL (every handler; a projection with a PostgreSQL side).
    on_postgres: bool,
    spawn: Box<dyn FnOnce(SpawnArgs) -> Vec<Partition>>,
}

/// Builds an [`EventBus`]: `EventBus::builder()`, then one call per subscription, then
/// [`build`](Self::build) inside a running actix system.
///
/// ```
/// use actorbus::{handler_fn, DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] struct OrderPlaced { id: u64 }
/// # impl DomainEvent for OrderPlaced { const EVENT_TYPE: &'static str = "order.placed";
/// #     fn stream_id(&self) -> String { self.id.to_string() } }
///
/// # actix::System::new().block_on(async {
/// let bus = EventBus::builder()
///     .intake_capacity(1024)
///     .handler_with("audit", HandlerOptions::new().concurrency(2), || {
///         handler_fn(|e: &Envelope<OrderPlaced>| -> Result<(), HandlerError> { Ok(()) })
///     })
///     .build()?;
/// # bus.shutdown(std::time::Duration::from_secs(1)).await?;
/// # Ok::<_, actorbus::Error>(())
/// # }).unwrap();
/// ```
pub struct BusBuilder {
    intake_capacity: usize,
    /// Threads for handler actors (`None`: the number of cores).
    handler_threads: Option<usize>,
    store: StoreConfig,
    /// SQLite settings given on the builder, applied to the store at `build` whatever the
    /// order of the calls (`.durability(..)` before or after `.sqlite(..)`).
    sqlite: SqliteSettings,
    subscriptions: Vec<Registration>,
}

/// The SQLite settings of [`BusBuilder`]'s own methods; `None`: the store's.
#[derive(Debug, Clone, Copy, Default)]
struct SqliteSettings {
    durability: Option<Durability>,
    busy_timeout: Option<std::time::Duration>,
    max_bytes: Option<u64>,
    retention: Option<Retention>,
}

impl SqliteSettings {
    fn apply(&self, options: &mut SqliteOptions) {
        if let Some(d) = self.durability {
            options.durability = d;
        }
        if let Some(t) = self.busy_timeout {
            options.busy_timeout = t;
        }
        if let Some(b) = self.max_bytes {
            options.max_bytes = Some(b);
        }
        if let Some(r) = self.retention {
            options.retention = r;
        }
    }
}

impl std::fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBuilder")
            .field("intake_capacity", &self.intake_capacity)
            .field("store", &self.store)
            .field(
                "subscriptions",
                &self
                    .subscriptions
                    .iter()
                    .map(|s| &*s.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for BusBuilder {
    fn default() -> Self {
        Self {
            intake_capacity: DEFAULT_INTAKE_CAPACITY,
            handler_threads: None,
            store: StoreConfig::Memory,
            sqlite: SqliteSettings::default(),
            subscriptions: Vec::new(),
        }
    }
}

impl BusBuilder {
    /// Events `publish` may have handed over before the router takes them; when full,
    /// `publish` waits and `try_publish` answers [`Error::Full`].
    pub fn intake_capacity(mut self, n: usize) -> Self {
        self.intake_capacity = n;
        self
    }

    /// How many threads the handler actors run on (default: the number of cores; on SQLite
    /// one fewer, at least 1, since the store's writer thread takes a core under load).
    /// Actors are spread over them in turn; one stream always goes to one actor, so
    /// per-stream order holds. `1` runs every handler on the arbiter that calls `build` (then
    /// handlers share one core with the router). The threads are joined at `shutdown`.
    pub fn handler_threads(mut self, n: usize) -> Self {
        self.handler_threads = Some(n);
        self
    }

    /// Keeps events in the SQLite database at `path` (created when missing), with the default
    /// [`Durability::Normal`]. `publish` then returns once the event is committed.
    pub fn sqlite(self, path: impl Into<std::path::PathBuf>) -> Self {
        self.store(StoreConfig::Sqlite(SqliteOptions::new(path)))
    }

    /// Keeps events in the PostgreSQL database at `url` (`postgres://user@host/db`), migrated
    /// when needed. Needs the crate's `postgres` feature: without it `build` answers
    /// [`Error::Config`]. `publish` returns once the event is committed.
    pub fn postgres(self, url: &str) -> Self {
        self.store(StoreConfig::Postgres(PostgresOptions::new(url)))
    }

    /// Sets the durability of a SQLite store (no effect in memory). Like the other store
    /// settings below, it may come before or after `.sqlite(..)`, `.url(..)` or
    /// `.from_env()`, and wins over the store's own settings.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.sqlite.durability = Some(durability);
        self
    }

    /// How long a SQLite write waits for another process's lock (default 5 s).
    pub fn busy_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.sqlite.busy_timeout = Some(timeout);
        self
    }

    /// Caps the SQLite file size; past it publishes fail with `StoreError::Full`.
    pub fn max_store_bytes(mut self, bytes: u64) -> Self {
        self.sqlite.max_bytes = Some(bytes);
        self
    }

    /// Deletes processed events by age or count (off by default; SQLite and PostgreSQL).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.sqlite.retention = Some(retention);
        self
    }

    /// Keeps nothing: same API and ordering, no durability (the default).
    pub fn in_memory(self) -> Self {
        self.store(StoreConfig::Memory)
    }

    /// Sets the store.
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// The store from a URL: `sqlite://PATH`, `postgres://…` or `memory://`.
    ///
    /// # Errors
    /// [`Error::Config`] for another scheme.
    pub fn url(self, url: &str) -> Result<Self> {
        Ok(self.store(StoreConfig::from_url(url)?))
    }

    /// The store from `ACTORBUS_DATABASE_URL` (memory when unset).
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported URL.
    pub fn from_env(self) -> Result<Self> {
        Ok(self.store(StoreConfig::from_env()?))
    }
}

impl BusBuilder {
    /// Starts the supervisor and the router on the current arbiter, and every handler actor
    /// on the handler threads ([`handler_threads`](Self::handler_threads)).
    ///
    /// # Errors
    /// [`Error::NoSystem`] outside a running actix system, [`Error::DuplicateHandler`] for a
    /// repeated name, [`Error::Config`] for a zero capacity, concurrency or attempt count.
    pub fn build(mut self) -> Result<EventBus> {
        // Actors need a running arbiter: a System that exists but is not running has none.
        if actix_rt::Arbiter::try_current().is_none()
            || tokio::runtime::Handle::try_current().is_err()
        {
            return Err(Error::NoSystem);
        }
        crate::actors::panics::quiet_caught_panics();
        if self.intake_capacity == 0 || self.intake_capacity > MAX_INTAKE_CAPACITY {
            return Err(Error::Config(format!(
                "intake capacity must be between 1 and {MAX_INTAKE_CAPACITY}"
            )));
        }
        let mut names = HashSet::new();
        for s in &self.subscriptions {
            s.options.validate(&s.name)?;
            if s.kind == Kind::Projection && matches!(self.store, StoreConfig::Memory) {
                return Err(Error::Config(format!(
                    "projection `{}` needs a durable store (sqlite:// or postgres://)",
                    s.name
                )));
            }
            if s.kind == Kind::Projection
                && matches!(self.store, StoreConfig::Postgres(_))
                && !s.on_postgres
            {
                return Err(Error::Config(format!(
                    "projection `{}` has no PostgreSQL side: implement \
                     Projection::apply_postgres and set Projection::POSTGRES",
                    s.name
                )));
            }
            if !names.insert(Arc::clone(&s.name)) {
                return Err(Error::DuplicateHandler(s.name.to_string()));
            }
        }

        #[cfg(not(feature = "postgres"))]
        if matches!(self.store, StoreConfig::Postgres(_)) {
            return Err(Error::Config(backend::NO_POSTGRES.into()));
        }
        match &mut self.store {
            StoreConfig::Sqlite(options) => self.sqlite.apply(options),
            StoreConfig::Postgres(options) => {
                if let Some(r) = self.sqlite.retention {
                    options.retention = r;
                }
            }
            StoreConfig::Memory => {}
        }
        let threads = match self.handler_threads {
            Some(0) => return Err(Error::Config("handler_threads must be at least 1".into())),
            Some(n) => n,
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                match self.store {
                    // The writer's thread takes a core of its own under load: one handler
                    // thread fewer (bench --mode sqlite on 2 cores: +10% events/s with the
                    // handlers on the arbiter, where memory mode loses 14%).
                    StoreConfig::Sqlite(_) => cores.saturating_sub(1).max(1),
                    _ => cores,
                }
            }
        };
        let store = match &self.store {
            StoreConfig::Memory => None,
            durable => {
                let specs: Vec<SubscriptionSpec> = self
                    .subscriptions
                    .iter_mut()
                    .map(|s| SubscriptionSpec {
                        name: s.name.to_string(),
                        kind: s.kind,
                        event_types: s.event_types.iter().map(|t| (*t).to_owned()).collect(),
                        partitions: s.options.concurrency,
                        start_at_head: s.options.start_from == StartFrom::Now,
                        reset: s.reset.take(),
                    })
                    .collect();
                let layouts = specs
                    .iter()
                    .map(|s| (s.name.clone(), s.partitions))
                    .collect();
                let (retention, split_commits) = match durable {
                    StoreConfig::Sqlite(o) => (o.retention, o.durability == Durability::Normal),
                    StoreConfig::Postgres(o) => (o.retention, false),
                    StoreConfig::Memory => (Retention::default(), false),
                };
                backend::open(durable, specs)?.map(|opened| StorePlan {
                    opened,
                    layouts,
                    retention,
                    split_commits,
                })
            }
        };
        let lifecycle = Arc::new(Lifecycle::default());
        let bus_counters = Arc::new(BusCounters::default());
        let policies = self
            .subscriptions
            .iter()
            .map(|s| (Arc::clone(&s.name), s.options.restart))
            .collect();
        // The router takes at most this many intake items at once, so that no delivery is
        // larger than the smallest mailbox.
        let chunk = self
            .subscriptions
            .iter()
            .map(|s| s.options.mailbox_capacity)
            .min()
            .unwrap_or(DEFAULT_MAILBOX_CAPACITY)
            .min(self.intake_capacity);
        let mut handler_counters = Vec::new();
        let mut subscription_index = HashMap::new();
        let subscriptions = self
            .subscriptions
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let counters =
                    HandlerCounters::new(&s.name, &s.event_types.join(","), s.options.concurrency);
                handler_counters.push(Arc::clone(&counters));
                subscription_index.insert(s.name.to_string(), i);
                SubscriptionPlan {
                    name: s.name,
                    event_types: s.event_types.iter().map(|t| (*t).to_owned()).collect(),
                    mailbox_capacity: s.options.mailbox_capacity,
                    counters,
                    spawn: s.spawn,
                }
            })
            .collect();
        let durable = store.is_some();
        let (tx, rx) = crate::actors::intake::channel(self.intake_capacity);
        let tree = SupervisorActor::start_tree(TreePlan {
            policies,
            lifecycle: Arc::clone(&lifecycle),
            counters: Arc::clone(&bus_counters),
            intake: (tx.clone(), rx),
            chunk,
            handler_threads: threads,
            store,
            subscriptions,
        })?;
        Ok(EventBus::from_shared(BusShared {
            durable,
            reader: tree.reader,
            intake: tx,
            intake_capacity: self.intake_capacity,
            lifecycle,
            counters: bus_counters,
            handlers: handler_counters,
            subscription_index,
            dead_letters: tree.dead_letters,
            router: tree.router,
            supervisor: tree.supervisor,
        }))
    }
}
