//! The PostgreSQL implementation of the storage seam: what only PostgreSQL needs to open a
//! store (connecting, migrating one process at a time, the claim that makes it one bus per
//! database for now); the writer and readers are the shared SQL's ([`crate::storage::sql`]),
//! as on SQLite. Appends serialize on a transaction-scoped advisory lock
//! ([`Dialect::append_transaction`](crate::storage::sql::Dialect::append_transaction)).

use std::path::PathBuf;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::{BigInt, Bool, Integer};
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

/// The PostgreSQL store's migrations (the same tables and columns as SQLite's).
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// Session advisory lock: one process migrates at a time.
const MIGRATE_LOCK: i64 = APPEND_LOCK + 1;
/// Session advisory lock: the bus that runs on the database.
const BUS_LOCK: i64 = APPEND_LOCK + 2;

/// Connects to the database, migrates it, claims it (one bus per database), registers
/// `subscriptions`, and readies its writer and readers.
pub(crate) fn open(
    options: &PostgresOptions,
    mut subscriptions: Vec<SubscriptionSpec>,
) -> Result<Opened, StoreError> {
    let name = PathBuf::from(options.redacted_url());
    let claim = Claim::take(options, &name)?;
    let pool = Pool::builder()
        .max_size(options.pool_size.max(2))
        .min_idle(Some(1))
        .connection_timeout(options.connect_timeout)
        .build(ConnectionManager::<PgConnection>::new(&options.url))
        .map_err(|e| classify_connection(&name, e))?;
    let conn = pool.get().map_err(|e| classify_connection(&name, e))?;
    let mut writer = Writer::new(conn, name.clone());
    let (head, resumes) = store::register(&mut writer, &mut subscriptions)?;
    Ok(Opened {
        writer: Box::new(SqlWriter {
            writer,
            _guards: vec![Box::new(claim)],
        }),
        reader: Arc::new(SqlReader::new(pool, name)),
        head,
        resumes,
    })
}

/// A bus's claim on a database: a session of its own holding [`BUS_LOCK`]. Dropping it (or
/// the process dying, which ends the session) releases the database for the next bus.
struct Claim {
    _session: PgConnection,
}

impl Claim {
    /// Connects, migrates, and takes the claim.
    fn take(options: &PostgresOptions, name: &std::path::Path) -> Result<Self, StoreError> {
        let mut conn =
            PgConnection::establish(&options.url).map_err(|e| classify_connection(name, e))?;
        migrate(&mut conn, name)?;
        #[derive(QueryableByName)]
        struct Taken {
            #[diesel(sql_type = Bool)]
            taken: bool,
        }
        let taken = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS taken")
            .bind::<BigInt, _>(BUS_LOCK)
            .get_result::<Taken>(&mut conn)
            .map_err(|e| classify(name, e))?;
        if !taken.taken {
            return Err(StoreError::InUse {
                path: name.to_path_buf(),
                holder: holder(&mut conn),
            });
        }
        Ok(Self { _session: conn })
    }
}

/// Who holds [`BUS_LOCK`], as far as PostgreSQL says.
fn holder(conn: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct Holder {
        #[diesel(sql_type = Integer)]
        pid: i32,
        #[diesel(sql_type = diesel::sql_types::Text)]
        client: String,
    }
    // A bigint key is split over classid (high half) and objid (low half).
    diesel::sql_query(
        "SELECT l.pid, coalesce(host(a.client_addr), 'local') AS client FROM pg_locks l \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
    )
    .bind::<BigInt, _>(BUS_LOCK)
    .get_result::<Holder>(conn)
    .map_or_else(
        |_| "another connection".to_owned(),
        |h| format!("server process {} of a client at {}", h.pid, h.client),
    )
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
