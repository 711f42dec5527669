//! The durable store: SQLite through diesel. The storage actor is its single writer; reads
//! (catch-up, the CLI) go through an r2d2 pool beside it, which WAL mode allows.

pub(crate) mod log;
pub(crate) mod models;
pub(crate) mod pool;
pub(crate) mod schema;

use std::path::PathBuf;

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
    fn pragma(self) -> &'static str {
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
    Sqlite {
        /// The database file; created with its schema when missing.
        path: PathBuf,
        /// The `synchronous` level.
        durability: Durability,
    },
}

impl StoreConfig {
    /// Parses `sqlite://PATH` (also `sqlite:PATH`) or `memory://`.
    ///
    /// ```
    /// use actorbus::StoreConfig;
    /// assert_eq!(StoreConfig::from_url("memory://").unwrap(), StoreConfig::Memory);
    /// assert!(matches!(StoreConfig::from_url("sqlite://data/bus.db").unwrap(), StoreConfig::Sqlite { .. }));
    /// assert!(StoreConfig::from_url("mysql://x").is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for any other scheme or an empty path.
    pub fn from_url(url: &str) -> crate::Result<Self> {
        if url == "memory://" || url == "memory:" {
            return Ok(Self::Memory);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "unsupported store URL `{url}`: expected sqlite://PATH or memory://"
                ))
            })?;
        if path.is_empty() {
            return Err(crate::Error::Config(format!(
                "store URL `{url}` has no path"
            )));
        }
        Ok(Self::Sqlite {
            path: PathBuf::from(path),
            durability: Durability::default(),
        })
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

/// Errors of the SQLite store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not a SQLite database; it was left untouched.
    #[error("{path} is not a SQLite database")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The store was written by a newer actorbus. Upgrade the binary; nothing was changed.
    #[error("{path} has schema version {found}, newer than this binary supports ({supported})")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The store's schema version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// Another process held the write lock longer than `busy_timeout`. Retry later.
    #[error("the database is locked by another process (waited {waited_ms} ms)")]
    Locked {
        /// How long the writer waited.
        waited_ms: u64,
    },
    /// A database error (disk full, I/O error ...). Nothing of the failed write was kept;
    /// retry once the cause is gone.
    #[error("database error: {0}")]
    Database(String),
    /// Opening a connection failed.
    #[error("cannot open the database: {0}")]
    Connection(String),
    /// Running the embedded migrations failed.
    #[error("migrating the database failed: {0}")]
    Migration(String),
    /// Reading a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}
