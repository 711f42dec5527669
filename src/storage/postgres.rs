//! The PostgreSQL implementation of the storage seam: what only PostgreSQL needs to open a
//! store (connecting, migrating one process at a time, joining the processes that share it:
//! [`coordinator`]); the writer and readers are the shared SQL's ([`crate::storage::sql`]),
//! as on SQLite. Appends serialize on a transaction-scoped advisory lock
//! ([`Dialect::append_transaction`](crate::storage::sql::Dialect::append_transaction)), so
//! any number of processes may publish.

use std::path::PathBuf;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::{BigInt, Integer};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::storage::backend::Opened;
use crate::storage::error::{classify, classify_connection};
use crate::storage::pool::SCHEMA_VERSION;
use crate::storage::registry::SubscriptionSpec;
use crate::storage::sql::postgres::queries::meta_number;
use crate::storage::sql::postgres::store::{self, SqlReader, SqlWriter};
use crate::storage::sql::postgres::writer::Writer;
use crate::storage::sql::APPEND_LOCK;
use crate::storage::{PostgresOptions, StoreError};

pub(crate) mod coordinator;

/// The PostgreSQL store's migrations (the same tables and columns as SQLite's).
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// Session advisory lock: one process migrates at a time.
const MIGRATE_LOCK: i64 = APPEND_LOCK + 1;

/// A pool of connections to a PostgreSQL store.
pub(crate) type PgPool = Pool<ConnectionManager<PgConnection>>;

/// Connects to the database and migrates it: the store's name (its URL without the
/// password) and a pool of `options.pool_size` connections.
fn connect(options: &PostgresOptions) -> Result<(PathBuf, PgPool), StoreError> {
    let name = PathBuf::from(options.redacted_url());
    {
        let mut conn =
            PgConnection::establish(&options.url).map_err(|e| classify_connection(&name, e))?;
        migrate(&mut conn, &name)?;
    }
    let pool = Pool::builder()
        .max_size(options.pool_size.max(2))
        .min_idle(Some(0))
        .connection_timeout(options.connect_timeout)
        .build(ConnectionManager::<PgConnection>::new(&options.url))
        .map_err(|e| classify_connection(&name, e))?;
    Ok((name, pool))
}

/// What an operator's [`Store`](crate::Store) reads a PostgreSQL store through.
pub(crate) fn admin_pool(options: &PostgresOptions) -> Result<(PathBuf, PgPool), StoreError> {
    connect(options)
}

/// Connects to the database, migrates it, registers `subscriptions`, and readies its writer,
/// its readers and this bus's membership among the processes on it ([`coordinator`]).
pub(crate) fn open(
    options: &PostgresOptions,
    mut subscriptions: Vec<SubscriptionSpec>,
) -> Result<Opened, StoreError> {
    let (name, pool) = connect(options)?;
    let member = uuid::Uuid::now_v7().to_string();
    let mut writer = Writer::new(pool.clone(), name.clone())?.fenced_by(member.clone());
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    let writer_pid = writer
        .transaction(|c| diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(c))?
        .pid;
    let layouts = subscriptions
        .iter()
        .map(|s| (s.name.clone(), s.partitions))
        .collect();
    let (head, resumes) = store::register(&mut writer, &mut subscriptions)?;
    Ok(Opened {
        writer: Box::new(SqlWriter {
            writer,
            _guards: Vec::new(),
        }),
        reader: Arc::new(SqlReader::new(pool, name.clone())),
        head,
        resumes,
        coordination: Some(coordinator::coordination(coordinator::Plan {
            url: options.url.clone(),
            name: name.display().to_string(),
            member,
            label: format!("process {}", std::process::id()),
            lease: options.lease,
            layouts,
            writer_pid,
        })),
    })
}

/// Runs the embedded migrations, one process at a time, and refuses a store of a newer
/// binary.
fn migrate(conn: &mut PgConnection, name: &std::path::Path) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATE_LOCK)
        .execute(conn)
        .map_err(|e| classify(name, e))?;
    let migrated = conn
        .run_pending_migrations(MIGRATIONS)
        .map(drop)
        .map_err(|e| StoreError::Migration(Arc::from(e)));
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATE_LOCK)
        .execute(conn)
        .map_err(|e| classify(name, e));
    migrated?;
    unlocked?;
    let found = meta_number(conn, "schema_version").map_err(|e| classify(name, e))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: name.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}
