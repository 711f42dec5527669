//! A fresh PostgreSQL database per test, on the server at 127.0.0.1:5432 (or
//! `ACTORBUS_TEST_POSTGRES`, a URL of its maintenance database). When the server cannot be
//! reached the test says SKIPPED and passes, except under `CI=true`, where it fails.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::prelude::*;

/// The maintenance database the test databases are created from.
fn admin_url() -> String {
    std::env::var("ACTORBUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own, dropped (with every session still on it) when the test ends.
pub struct PgDatabase {
    name: String,
    /// The URL a bus opens.
    pub url: String,
}

impl PgDatabase {
    /// A new, empty database; `None` (SKIPPED) when PostgreSQL is not reachable outside CI.
    pub fn fresh() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let mut conn = match PgConnection::establish(&admin) {
            Ok(conn) => conn,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL is required in CI and is not reachable at {admin}: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: PostgreSQL is not reachable at {admin}: {e}");
                return None;
            }
        };
        let name = format!(
            "actorbus_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .unwrap();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(Self { name, url })
    }

    /// A connection of the test's own (to look at the store as another program would).
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).unwrap()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}
