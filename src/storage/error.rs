//! `StoreError`, what the store can fail with, and the one place where the database's
//! errors are told apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// The error underneath a [`StoreError`]: diesel's, r2d2's, the migration harness's or the
/// operating system's. Shared, so that one failed commit can fail every publisher in it.
/// Downcast it (`source.downcast_ref::<diesel::result::Error>()`) to read the details.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the store. The variants a caller can act on are told apart; every other failure
/// keeps the database's own error as its [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not a SQLite database; it was left untouched.
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is a SQLite database of another application (it has tables, none of ours);
    /// it was left untouched. Check the path.
    ForeignDatabase {
        /// The file.
        path: PathBuf,
    },
    /// The store was written by a newer actorbus. Upgrade the binary; nothing was changed.
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The store's schema version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// The disk (or the configured `max_bytes`) is full. Nothing of the failed write was
    /// kept; publishing works again once there is room.
    Full,
    /// Another bus is running on this store (one bus per store: its subscriptions' checkpoints
    /// and the order of its deliveries belong to it). Stop it first, or use another store.
    InUse {
        /// The store.
        path: PathBuf,
        /// Who holds it, e.g. `process 4242`.
        holder: String,
    },
    /// Another process held the lock longer than `busy_timeout`. Retry later.
    Locked,
    /// The store holds what only another program could have written (a stream version
    /// stored twice). Nothing of the failed write was kept; `actorbus check` lists the rows.
    Inconsistent {
        /// The store.
        path: PathBuf,
        /// The database's error.
        source: Source,
    },
    /// A database error (an I/O error, a damaged file ...). Nothing of the failed write was
    /// kept; retry once the cause is gone.
    Database(Source),
    /// Opening a connection failed.
    Connection(Source),
    /// Running the embedded migrations failed.
    Migration(Source),
    /// Reading or creating a file beside the store failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Source,
    },
    /// Rebuilding a projection (its `reset`, asked for by `actorbus replay`) failed; the
    /// store is as it was, and the rebuild is still asked for.
    Rebuild {
        /// The projection's subscription.
        subscription: String,
        /// What `reset` returned.
        source: Source,
    },
    /// The store's writer is gone: the bus was shut down (or its actix system stopped).
    WriterStopped,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotADatabase { path } => write!(f, "{} is not a SQLite database", path.display()),
            Self::ForeignDatabase { path } => write!(
                f,
                "{} is a SQLite database of another application, not an actorbus store",
                path.display()
            ),
            Self::NewerSchema {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has schema version {found}, newer than this binary supports ({supported})",
                path.display()
            ),
            Self::Full => f.write_str("the database or disk is full"),
            Self::InUse { path, holder } => write!(
                f,
                "another bus is running on {} ({holder}); stop it first, or use another store",
                path.display()
            ),
            Self::Locked => {
                f.write_str("the database is locked by another process (busy_timeout expired)")
            }
            Self::Inconsistent { path, .. } => write!(
                f,
                "{} is inconsistent: a stream version is stored twice (written by another \
                 program?); `actorbus check` lists it",
                path.display()
            ),
            Self::Database(_) => f.write_str("database error"),
            Self::Connection(_) => f.write_str("cannot open the database"),
            Self::Migration(_) => f.write_str("migrating the database failed"),
            Self::Io { path, .. } => write!(f, "{}", path.display()),
            Self::Rebuild { subscription, .. } => {
                write!(f, "rebuilding the projection `{subscription}` failed")
            }
            Self::WriterStopped => f.write_str("the store's writer is stopped"),
        }
    }
}

/// The source is the database's own error (not a wrapper), so that it can be downcast.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inconsistent { source, .. }
            | Self::Database(source)
            | Self::Connection(source)
            | Self::Migration(source)
            | Self::Io { source, .. }
            | Self::Rebuild { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl StoreError {
    /// A database error, with `e` as its source.
    pub(crate) fn database(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Database(Arc::new(e))
    }

    /// A connection error, with `e` as its source.
    pub(crate) fn connection(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Connection(Arc::new(e))
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source: Arc::new(e),
        }
    }
}

/// Tells apart the failures of the store at `path` a caller can act on.
///
/// diesel 2.3 carries SQLite's result code only for constraint violations (as
/// [`DatabaseErrorKind`]). For `SQLITE_BUSY`, `SQLITE_FULL` and `SQLITE_NOTADB` it carries
/// `sqlite3_errmsg`, which for these codes is the fixed text of `sqlite3_errstr`: those three
/// texts are recognized here, and nowhere else.
pub(crate) fn classify(path: &Path, e: DieselError) -> StoreError {
    if let DieselError::DatabaseError(kind, info) = &e {
        if matches!(kind, DatabaseErrorKind::UniqueViolation)
            && info.message().contains("stream_events")
        {
            // Only a writer that bypassed this one can store a stream version twice.
            return StoreError::Inconsistent {
                path: path.to_path_buf(),
                source: Arc::new(e),
            };
        }
    }
    known_code(path, &e.to_string()).unwrap_or_else(|| StoreError::database(e))
}

/// As [`classify`], for a failure to get a connection at all (r2d2 and diesel report those
/// as text only).
pub(crate) fn classify_connection(
    path: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    known_code(path, &e.to_string()).unwrap_or_else(|| StoreError::connection(e))
}

/// The error for SQLite's fixed texts of `SQLITE_NOTADB`, `SQLITE_BUSY` and `SQLITE_FULL`.
fn known_code(path: &Path, text: &str) -> Option<StoreError> {
    if text.contains("file is not a database") {
        Some(StoreError::NotADatabase {
            path: path.to_path_buf(),
        })
    } else if text.contains("database is locked") || text.contains("database is busy") {
        Some(StoreError::Locked)
    } else if text.contains("database or disk is full") {
        Some(StoreError::Full)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;
    use diesel::RunQueryDsl;

    #[test]
    fn a_unique_violation_of_the_stream_index_is_inconsistent_and_keeps_its_source() {
        let path = Path::new("bus.db");
        let mut conn = <diesel::SqliteConnection as diesel::Connection>::establish(":memory:")
            .expect("in-memory database");
        use diesel::connection::SimpleConnection;
        conn.batch_execute("CREATE TABLE stream_events (s TEXT, v INT, UNIQUE (s, v));")
            .unwrap();
        let insert = "INSERT INTO stream_events VALUES ('a', 1);";
        conn.batch_execute(insert).unwrap();
        let e = diesel::sql_query(insert)
            .execute(&mut conn)
            .expect_err("a duplicate");
        let classified = classify(path, e);
        assert!(
            matches!(&classified, StoreError::Inconsistent { .. }),
            "{classified:?}"
        );
        let source = std::error::Error::source(&classified).expect("a source");
        assert!(
            source.downcast_ref::<DieselError>().is_some(),
            "the source is diesel's error: {source:?}"
        );
        assert!(chain(&classified).contains("UNIQUE constraint failed"));
    }

    #[test]
    fn other_failures_keep_diesels_error_as_their_source() {
        let mut conn = <diesel::SqliteConnection as diesel::Connection>::establish(":memory:")
            .expect("in-memory database");
        let e = diesel::sql_query("SELECT * FROM nowhere")
            .execute(&mut conn)
            .expect_err("no such table");
        let classified = classify(Path::new("bus.db"), e);
        assert!(matches!(classified, StoreError::Database(_)));
        assert_eq!(chain(&classified), "database error: no such table: nowhere");
    }

    #[test]
    fn sqlites_fixed_texts_of_busy_full_and_notadb_are_told_apart() {
        let path = Path::new("bus.db");
        let busy = std::io::Error::other("database is locked");
        assert!(matches!(
            classify_connection(path, busy),
            StoreError::Locked
        ));
        let full = std::io::Error::other("database or disk is full");
        assert!(matches!(classify_connection(path, full), StoreError::Full));
        let notadb = std::io::Error::other("file is not a database");
        assert!(matches!(
            classify_connection(path, notadb),
            StoreError::NotADatabase { .. }
        ));
    }
}
