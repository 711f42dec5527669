//! A transactional projection on the SQLite store: the read model (balance per account) is
//! written in the same transaction as the projection's checkpoint, so a crash never applies
//! an event twice or skips one. Run it twice: the second run resumes, it does not recount.
//!
//! `cargo run --example projection`

use std::time::Duration;

use actorbus::{DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions, Projection};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Deposited {
    account: u32,
    cents: i64,
}

impl DomainEvent for Deposited {
    const EVENT_TYPE: &'static str = "account.deposited";
    fn stream_id(&self) -> String {
        format!("account-{}", self.account)
    }
}

struct Balances;

impl Projection<Deposited> for Balances {
    fn apply(
        &mut self,
        e: &Envelope<Deposited>,
        conn: &mut SqliteConnection,
    ) -> Result<(), HandlerError> {
        diesel::sql_query(
            "INSERT INTO balances (account, cents) VALUES (?, ?)
             ON CONFLICT(account) DO UPDATE SET cents = cents + excluded.cents",
        )
        .bind::<Text, _>(e.stream_id())
        .bind::<BigInt, _>(e.cents)
        .execute(conn)?;
        Ok(())
    }
}

#[derive(QueryableByName, Debug)]
struct Balance {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = BigInt)]
    cents: i64,
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join("actorbus-projection-example.db");
    let db = path.to_string_lossy().into_owned();
    // Create the store first (a SQLite file with other tables and no store is refused as
    // another application's), then the read model's table beside it.
    actorbus::Store::create(&path)?;
    SqliteConnection::establish(&db)?.batch_execute(
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL)",
    )?;

    let bus = EventBus::builder()
        .sqlite(&path)
        .projection("balances", HandlerOptions::new().concurrency(2), || {
            Balances
        })
        .build()?;
    for i in 0..10 {
        bus.publish(Deposited {
            account: i % 3,
            cents: 100,
        })
        .await?;
    }
    bus.shutdown(Duration::from_secs(5)).await?;

    let balances: Vec<Balance> =
        diesel::sql_query("SELECT account, cents FROM balances ORDER BY account")
            .load(&mut SqliteConnection::establish(&db)?)?;
    for b in balances {
        println!("{}: {} cents", b.account, b.cents);
    }
    println!(
        "store: {} (run again: each run adds exactly 10 deposits)",
        path.display()
    );
    Ok(())
}
