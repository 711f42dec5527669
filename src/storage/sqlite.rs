//! The SQLite implementation of the storage seam: what only SQLite needs to open a store
//! (the lock file that makes it one bus per store, the WAL checkpointer); the writer and
//! readers themselves are the shared SQL's ([`crate::storage::sql`]), as on PostgreSQL.

use std::sync::Arc;

use crate::storage::backend::Opened;
use crate::storage::lock::BusLock;
use crate::storage::pool::{self, WalCheckpointer, WalRestart};
use crate::storage::registry::SubscriptionSpec;
use crate::storage::sql::sqlite::store::{self, SqlReader, SqlWriter};
use crate::storage::sql::sqlite::writer::Writer;
use crate::storage::{SqliteOptions, StoreError};

/// Claims the store (one bus per store), opens it, registers `subscriptions` (rebuilding
/// the projections an operator asked to), and readies its writer and readers.
pub(crate) fn open(
    options: &SqliteOptions,
    mut subscriptions: Vec<SubscriptionSpec>,
) -> Result<Opened, StoreError> {
    let path = options.path.as_path();
    // A path that is refused gets no lock file beside it; a second bus must not even
    // migrate the file, so the lock comes before the pool.
    pool::inspect(options)?;
    let lock = BusLock::acquire(path)?;
    let pool = pool::open(options)?;
    let restart = Arc::new(WalRestart::default());
    let mut writer =
        Writer::new(pool.clone(), path.to_path_buf())?.restarting_wal(Arc::clone(&restart));
    let (head, resumes) = store::register(&mut writer, &mut subscriptions)?;
    Ok(Opened {
        writer: Box::new(SqlWriter {
            writer,
            _guards: vec![
                Box::new(WalCheckpointer::start(pool.clone(), restart)),
                Box::new(lock),
            ],
        }),
        reader: Arc::new(SqlReader::new(pool, path.to_path_buf())),
        head,
        resumes,
        coordination: None,
    })
}
