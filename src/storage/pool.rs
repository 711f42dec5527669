//! Opening a store: refuse what is not ours, set the per-connection PRAGMAs, migrate.

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::storage::error::{classify, classify_connection};
use crate::storage::{Durability, SqliteOptions, StoreError};

pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// The newest `store_meta.schema_version` this binary understands.
pub(crate) const SCHEMA_VERSION: i64 = 4;
/// SQLite's default page size, which the store keeps.
const PAGE_SIZE: u64 = 4096;

pub(crate) type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;

#[derive(Debug, Clone, Copy)]
struct Pragmas {
    durability: Durability,
    busy_timeout: Duration,
    max_pages: Option<u64>,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // busy_timeout first: the journal_mode switch itself may wait for a lock.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000; \
             PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = 67108864;",
            self.busy_timeout.as_millis(),
            self.durability.pragma(),
            WAL_AUTOCHECKPOINT
        ))
        .map_err(diesel::r2d2::Error::QueryError)?;
        if let Some(pages) = self.max_pages {
            conn.batch_execute(&format!("PRAGMA max_page_count = {pages};"))
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// Opens (creating if missing) the store at `path` and brings its schema up to date.
///
/// # Errors
/// [`StoreError::NotADatabase`] for a foreign file (left untouched),
/// [`StoreError::NewerSchema`] for a store of a newer binary, and connection errors.
pub(crate) fn open(options: &SqliteOptions) -> Result<SqlitePool, StoreError> {
    let path = options.path.as_path();
    inspect(options)?;
    let pragmas = Pragmas {
        durability: options.durability,
        busy_timeout: options.busy_timeout,
        max_pages: options.max_bytes.map(|b| (b / PAGE_SIZE).max(1)),
    };
    let url = path.to_string_lossy().into_owned();
    let pool = Pool::builder()
        .max_size(8)
        // Connections are opened when needed, not by background threads at build.
        .min_idle(Some(0))
        // Failures reach the caller as errors; r2d2 would also log every retry.
        .error_handler(Box::new(diesel::r2d2::NopErrorHandler))
        .connection_timeout(options.busy_timeout + Duration::from_secs(1))
        .connection_customizer(Box::new(pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(url))
        .map_err(|e| classify_connection(path, e))?;
    let mut conn = pool.get().map_err(|e| classify_connection(path, e))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Migration(e.into()))?;
    Ok(pool)
}

/// Refuses what must not become a store (see [`open`]), writing nothing.
///
/// # Errors
/// As [`open`].
pub(crate) fn inspect(options: &SqliteOptions) -> Result<(), StoreError> {
    let path = options.path.as_path();
    refuse_foreign_file(path)?;
    if path.exists() {
        inspect_before_use(path, options.busy_timeout)?;
    } else if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        let missing = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("directory {} does not exist", dir.display()),
        );
        return Err(StoreError::io(path, missing));
    }
    Ok(())
}

/// A directory is never a store. Everything else about an existing file is SQLite's to judge:
/// the library never opens a store's files itself, because closing such a handle would drop
/// every POSIX lock SQLite holds on the file in this process (SQLite's "How To Corrupt"
/// page, section 2.2), and another process could then delete a running bus's WAL.
fn refuse_foreign_file(path: &Path) -> Result<(), StoreError> {
    if path.is_dir() {
        return Err(StoreError::NotADatabase {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Looks at an existing file through a plain connection, which writes nothing, before the
/// pool's connections switch it to WAL: pages that are not a database fail here at once, and
/// another application's database (any schema object, `user_version` or `application_id`
/// of its own), or a store of a newer binary, is refused untouched.
fn inspect_before_use(path: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
    #[derive(QueryableByName)]
    struct Object {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    #[derive(QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())
        .map_err(|e| classify_connection(path, e))?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {};",
        busy_timeout.as_millis()
    ))
    .map_err(|e| classify(path, e))?;
    let objects: Vec<Object> = diesel::sql_query("SELECT name FROM sqlite_master")
        .load(&mut conn)
        .map_err(|e| classify(path, e))?;
    let ours = objects.iter().any(|t| t.name == "store_meta");
    if !ours {
        let number = |conn: &mut SqliteConnection, sql: &str| {
            diesel::sql_query(sql)
                .get_result::<Number>(conn)
                .map(|r| r.n)
                .map_err(|e| classify(path, e))
        };
        let own_bookkeeping =
            |t: &Object| t.name.starts_with("sqlite_") || t.name == "__diesel_schema_migrations";
        let marked = number(
            &mut conn,
            "SELECT user_version AS n FROM pragma_user_version",
        )? != 0
            || number(
                &mut conn,
                "SELECT application_id AS n FROM pragma_application_id",
            )? != 0;
        if marked || !objects.iter().all(own_bookkeeping) {
            return Err(StoreError::ForeignDatabase {
                path: path.to_path_buf(),
            });
        }
    }
    check_schema_version(&mut conn, path)
}

fn check_schema_version(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let has_meta = diesel::dsl::sql::<diesel::sql_types::Integer>(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'",
    )
    .get_result::<i32>(conn)
    .map_err(|e| classify(path, e))?;
    if has_meta == 0 {
        return Ok(());
    }
    let found = diesel::sql_query("SELECT value FROM store_meta WHERE key = 'schema_version'")
        .get_result::<Version>(conn)
        .optional()
        .map_err(|e| classify(path, e))?
        .and_then(|v| v.value.parse::<i64>().ok())
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// How often the background checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
/// WAL frames past which the checkpointer asks the writer to start the WAL over.
const WAL_RESTART_FRAMES: i64 = 2048;
/// Passes the checkpointer runs after a long one, each over the frames appended during the
/// one before, before it raises [`WalRestart`]; it stops early once a pass found at most
/// [`CATCH_UP_FRAMES`] new frames.
const CATCH_UP_PASSES: usize = 4;
/// See [`CATCH_UP_PASSES`].
const CATCH_UP_FRAMES: i64 = 32;
/// The size (frames) at which a commit checkpoints by itself, as SQLite does by default. With
/// the checkpointer running it is never reached; it bounds the WAL if the checkpointer stops.
const WAL_AUTOCHECKPOINT: i64 = 16_384;

/// Set by the [`WalCheckpointer`] when the WAL has grown long and it has just copied it back:
/// the writer then checkpoints once itself, between two commits, so that its next commit
/// starts the WAL over from its beginning.
///
/// Only a checkpoint that leaves nothing to copy lets the WAL start over, and one that runs
/// beside a busy writer never does: the writer appends while it copies. SQLite's own
/// automatic checkpoint runs in the committing connection, fsyncs the WAL and the database
/// and copies everything since the last one: 10 to 25 ms of a stalled writer at 8192
/// frames on this project's bench. The checkpointer instead runs passes until one finds few
/// new frames, so the writer's checkpoint copies only those. It cannot sync the database
/// for the writer: the library never opens a store's files itself (see
/// [`refuse_foreign_file`]); only a checkpoint that copies the whole WAL makes SQLite sync
/// it.
///
/// Before that, the checkpointer asks the writer to hold still between two commits for
/// [`HOLD`] ([`WalRestart::hold_if_asked`]) and runs one more pass meanwhile: with no commit
/// landing while it copies, that pass copies the whole WAL, and SQLite then syncs the
/// database at its end, in the checkpointer's thread, while the writer goes on. The
/// writer's checkpoint is then left the pages of the last few milliseconds to sync. If the
/// pass was not done copying when the hold ended, the writer's checkpoint syncs everything,
/// as without the hold. Measured on the bench's defaults: the writer's checkpoint took
/// 1.4-1.7 ms at the median with the hold (p90 5-7 ms), 3.9-4.0 ms without (p90 about
/// 10 ms), plus the 1 ms hold.
#[derive(Debug, Default)]
pub(crate) struct WalRestart {
    due: std::sync::atomic::AtomicBool,
    /// [`NOT_ASKED`], [`ASKED`] or [`HOLDING`].
    hold: std::sync::atomic::AtomicU8,
}

const NOT_ASKED: u8 = 0;
const ASKED: u8 = 1;
const HOLDING: u8 = 2;
/// How long the writer holds still when the checkpointer asks: its pass over the last
/// frames syncs the WAL first and then copies them (a few hundred microseconds here).
const HOLD: Duration = Duration::from_millis(1);
/// How long the checkpointer waits for the writer to hold: one commit, unless it is idle.
const HOLD_WAIT: Duration = Duration::from_millis(5);

impl WalRestart {
    /// Whether the writer should checkpoint now (answers `true` once per request).
    pub(crate) fn due(&self) -> bool {
        self.due.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Called by the writer between two commits: holds still for [`HOLD`] if the
    /// checkpointer asked. Answers whether it held.
    pub(crate) fn hold_if_asked(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        let asked = self.hold.load(Acquire) == ASKED
            && (self.hold)
                .compare_exchange(ASKED, HOLDING, AcqRel, Acquire)
                .is_ok();
        if asked {
            std::thread::sleep(HOLD);
            self.hold.store(NOT_ASKED, Release);
        }
        asked
    }

    /// Called by the checkpointer: asks the writer to hold and waits until it does, at most
    /// [`HOLD_WAIT`] (an idle writer commits nothing meanwhile anyway). Answers whether it
    /// holds; if not, the request is withdrawn, so that it does not hold after the pass.
    fn ask_to_hold(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        self.hold.store(ASKED, Release);
        let asked = std::time::Instant::now();
        while self.hold.load(Acquire) == ASKED && asked.elapsed() < HOLD_WAIT {
            std::thread::sleep(Duration::from_micros(20));
        }
        (self.hold)
            .compare_exchange(ASKED, NOT_ASKED, AcqRel, Acquire)
            .is_err()
    }
}

/// Copies committed WAL frames into the database on a thread of its own (`PASSIVE`: it never
/// blocks the writer), so that the writer's commits do not pay for checkpoints and their
/// fsyncs; when the WAL has grown past [`WAL_RESTART_FRAMES`] it raises [`WalRestart`].
/// Stopped and joined on drop.
pub(crate) struct WalCheckpointer {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WalCheckpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalCheckpointer")
    }
}

/// What `PRAGMA wal_checkpoint` answers.
#[derive(QueryableByName)]
pub(crate) struct Checkpointed {
    /// Frames in the WAL.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
    /// Frames of it now copied into the database.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    checkpointed: i64,
}

/// One `PASSIVE` checkpoint: it copies what it can and never waits for the writer.
pub(crate) fn passive(conn: &mut SqliteConnection) -> QueryResult<Checkpointed> {
    diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(conn)
}

impl WalCheckpointer {
    pub(crate) fn start(pool: SqlitePool, restart: std::sync::Arc<WalRestart>) -> Self {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("actorbus-wal".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    let Ok(mut conn) = pool.get() else { continue };
                    match passive(&mut conn) {
                        Ok(done) if done.log >= WAL_RESTART_FRAMES => {
                            // Each pass copies what the writer appended during the one
                            // before, so the writer's own checkpoint is left a few frames.
                            let mut copied = done.checkpointed;
                            for _ in 0..CATCH_UP_PASSES {
                                match passive(&mut conn) {
                                    Ok(next) if next.log - copied > CATCH_UP_FRAMES => {
                                        copied = next.checkpointed;
                                    }
                                    _ => break,
                                }
                            }
                            // One pass with the writer holding still: it copies all, and
                            // SQLite syncs the database here.
                            let _ = restart.ask_to_hold();
                            let _ = passive(&mut conn);
                            restart
                                .due
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => log::debug!("WAL checkpoint skipped: {e}"),
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    #[test]
    fn the_writer_holds_only_when_the_checkpointer_asks_and_never_after_it_gave_up() {
        let restart = std::sync::Arc::new(WalRestart::default());
        assert!(!restart.hold_if_asked(), "not asked");
        assert!(!restart.ask_to_hold(), "no writer to hold");
        assert!(!restart.hold_if_asked(), "the request was withdrawn");

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (restart, stop) = (
                std::sync::Arc::clone(&restart),
                std::sync::Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut held = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    held += usize::from(restart.hold_if_asked());
                    std::thread::yield_now();
                }
                held
            })
        };
        // A writer between commits takes the request (retried: a loaded machine may not run
        // its thread within one HOLD_WAIT).
        let asks = (0..100).take_while(|_| !restart.ask_to_hold()).count();
        assert!(asks < 100, "the writer never held");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            writer.join().expect("the writer thread"),
            1,
            "it held once per request"
        );
        assert!(!restart.due(), "holding is not the restart");
    }

    /// `.cargo/config.toml` compiles the bundled SQLite for this project's builds: the
    /// benchmark figures assume it, and multi-thread mode assumes what the type system gives
    /// (a connection is used by one thread at a time).
    #[test]
    fn sqlite_is_compiled_as_the_project_configures_it() {
        let mut conn = SqliteConnection::establish(":memory:").expect("an in-memory database");
        let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
            .load::<CompileOption>(&mut conn)
            .expect("compile options")
            .into_iter()
            .map(|o| o.compile_options)
            .collect();
        for wanted in ["THREADSAFE=2", "DEFAULT_MEMSTATUS=0"] {
            assert!(
                options.iter().any(|o| o == wanted),
                "{wanted} not among {options:?}: is LIBSQLITE3_FLAGS of .cargo/config.toml set?"
            );
        }
    }
}
