//! The durable store: SQLite through diesel. The storage actor is its single writer; reads
//! (catch-up, the CLI) go through an r2d2 pool beside it, which WAL mode allows.

pub(crate) mod backend;
pub(crate) mod convert;
pub(crate) mod error;
pub(crate) mod inspect;
pub(crate) mod lock;
pub(crate) mod models;
pub(crate) mod pool;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod prepared;
pub(crate) mod registry;
pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod sql;
pub(crate) mod sqlite;

use std::path::PathBuf;

pub use error::{Source, StoreError};

/// How hard SQLite works to keep a commit through a power loss (`PRAGMA synchronous`).
///
/// With WAL, `Normal` never corrupts the store and never loses a commit when the *process*
/// crashes; a power loss or OS crash may lose the last commits. `Full` syncs every commit to
/// disk before `publish` returns, at a cost in throughput that group commit amortizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: safe against process crashes (the default).
    #[default]
    Normal,
    /// `synchronous=FULL`: safe against power loss.
    Full,
}

impl Durability {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Where a bus keeps its events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreConfig {
    /// Nothing is kept: same API and ordering, no durability.
    #[default]
    Memory,
    /// An embedded SQLite database file.
    Sqlite(SqliteOptions),
    /// A PostgreSQL database (needs the crate's `postgres` feature; without it `build`
    /// answers [`Error::Config`](crate::Error::Config)).
    Postgres(PostgresOptions),
}

/// Settings of a PostgreSQL store.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` (libpq's URL or key=value form).
    pub url: String,
    /// Connections the bus opens: one writer, the rest for catch-up and redrive reads.
    pub pool_size: u32,
    /// How long opening a connection may take.
    pub connect_timeout: std::time::Duration,
    /// How long a process that stops renewing its membership (it died, or stalled) keeps
    /// its partitions; then the other processes take them over. Renewed every fifth of it.
    pub lease: std::time::Duration,
    /// Optional clean-up of events every subscription has processed.
    pub retention: Retention,
}

impl PostgresOptions {
    /// Defaults for the database at `url`: 4 connections, 10 s to connect, a 5 s lease, keep
    /// everything.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 4,
            connect_timeout: std::time::Duration::from_secs(10),
            lease: std::time::Duration::from_secs(5),
            retention: Retention::default(),
        }
    }

    /// The URL without its password, as logs and errors show it.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// Never shows the password.
impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .finish()
    }
}

/// `url` with the password of its `user:password@` part (or a `password=` key) replaced.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}{tail}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Settings of a SQLite store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The database file; created with its schema when missing.
    pub path: PathBuf,
    /// The `synchronous` level.
    pub durability: Durability,
    /// How long a write waits for another process's lock before it fails with
    /// [`StoreError::Locked`].
    pub busy_timeout: std::time::Duration,
    /// A cap on the database size (`max_page_count`); past it commits fail with
    /// [`StoreError::Full`] and nothing committed is lost. `None`: the disk is the limit.
    pub max_bytes: Option<u64>,
    /// Optional clean-up of events every subscription has processed.
    pub retention: Retention,
}

impl SqliteOptions {
    /// Defaults for the file at `path`: `Normal` durability, 5 s busy timeout, no cap, keep everything.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            busy_timeout: std::time::Duration::from_secs(5),
            max_bytes: None,
            retention: Retention::default(),
        }
    }
}

/// Which processed events a SQLite store deletes. Off by default. An event is deleted only
/// when every subscription recorded in the store has checkpointed past it and no dead letter
/// refers to it, and it is older than `max_age` or not among the newest `keep_last`.
/// Positions are never reused: the head stays where it was, whatever was deleted.
///
/// ```
/// use actorbus::Retention;
/// use std::time::Duration;
///
/// let r = Retention::max_age(Duration::from_secs(7 * 24 * 3600)).every(Duration::from_secs(60));
/// assert!(r.is_enabled());
/// assert_eq!(r.interval, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Delete processed events older than this.
    pub max_age: Option<std::time::Duration>,
    /// Keep at least this many newest events; delete processed events before them.
    pub keep_last: Option<u64>,
    /// How often the writer looks for events to delete (default 5 s; each pass deletes at
    /// most 10,000, in one short transaction).
    pub interval: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: None,
            keep_last: None,
            interval: std::time::Duration::from_secs(5),
        }
    }
}

impl Retention {
    /// Keep everything (the default).
    pub fn keep_all() -> Self {
        Self::default()
    }
    /// Delete processed events older than `age`.
    pub fn max_age(age: std::time::Duration) -> Self {
        Self {
            max_age: Some(age),
            ..Self::default()
        }
    }
    /// Delete processed events beyond the newest `n`.
    pub fn keep_last(n: u64) -> Self {
        Self {
            keep_last: Some(n),
            ..Self::default()
        }
    }
    /// Looks for events to delete every `interval` (at least 10 ms).
    pub fn every(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval.max(std::time::Duration::from_millis(10));
        self
    }
    /// Whether anything is ever deleted.
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.keep_last.is_some()
    }
}

impl StoreConfig {
    /// Parses `sqlite://PATH` (also `sqlite:PATH`), `postgres://…` (also `postgresql://…`)
    /// or `memory://`.
    ///
    /// ```
    /// use actorbus::StoreConfig;
    /// assert_eq!(StoreConfig::from_url("memory://").unwrap(), StoreConfig::Memory);
    /// assert!(matches!(StoreConfig::from_url("sqlite://data/bus.db").unwrap(), StoreConfig::Sqlite { .. }));
    /// assert!(matches!(StoreConfig::from_url("postgres://127.0.0.1/app").unwrap(), StoreConfig::Postgres { .. }));
    /// assert!(StoreConfig::from_url("mysql://x").is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for any other scheme or an empty path.
    pub fn from_url(url: &str) -> crate::Result<Self> {
        if url == "memory://" || url == "memory:" {
            return Ok(Self::Memory);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(PostgresOptions::new(url)));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "unsupported store URL `{}`: expected sqlite://PATH, postgres://… or memory://",
                    redact(url)
                ))
            })?;
        if path.is_empty() {
            return Err(crate::Error::Config(format!(
                "store URL `{url}` has no path"
            )));
        }
        Ok(Self::Sqlite(SqliteOptions::new(path)))
    }

    /// Reads `ACTORBUS_DATABASE_URL`; [`StoreConfig::Memory`] when it is not set.
    ///
    /// # Errors
    /// As [`from_url`](Self::from_url).
    pub fn from_env() -> crate::Result<Self> {
        match std::env::var("ACTORBUS_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Self::from_url(url.trim()),
            _ => Ok(Self::Memory),
        }
    }
}
