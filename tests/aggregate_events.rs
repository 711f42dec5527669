//! An aggregate's events as one Rust enum: one subscription receives every variant, in
//! per-stream order across variants, live and when replayed from the store.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actorbus::{handler_fn, DomainEvent, Envelope, EventBus, HandlerError, HandlerOptions};
use common::TempStore;
use serde::{Deserialize, Serialize};

/// The aggregate under test: its events as one enum (so it stays here, not in tests/common).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Account {
    Opened { id: u32 },
    Deposited { id: u32, cents: u64 },
    Closed { id: u32 },
}

impl DomainEvent for Account {
    const EVENT_TYPE: &'static str = "account.opened";
    const EVENT_TYPES: &'static [&'static str] =
        &["account.opened", "account.deposited", "account.closed"];
    fn stream_id(&self) -> String {
        let (Account::Opened { id } | Account::Deposited { id, .. } | Account::Closed { id }) =
            self;
        format!("account-{id}")
    }
    fn event_type(&self) -> &'static str {
        match self {
            Account::Opened { .. } => "account.opened",
            Account::Deposited { .. } => "account.deposited",
            Account::Closed { .. } => "account.closed",
        }
    }
}

fn history(id: u32) -> Vec<Account> {
    vec![
        Account::Opened { id },
        Account::Deposited { id, cents: 5 },
        Account::Deposited { id, cents: 7 },
        Account::Closed { id },
    ]
}

type Seen = Arc<Mutex<Vec<(String, String, Account)>>>;
type Recorder = actorbus::HandlerFn<Box<dyn FnMut(&Envelope<Account>) -> Result<(), HandlerError>>>;

fn recorder(seen: &Seen) -> impl Fn() -> Recorder {
    let seen = Arc::clone(seen);
    move || {
        let seen = Arc::clone(&seen);
        handler_fn(
            Box::new(move |e: &Envelope<Account>| -> Result<(), HandlerError> {
                seen.lock().unwrap().push((
                    e.stream_id().to_owned(),
                    e.event_type().to_owned(),
                    e.event().clone(),
                ));
                Ok(())
            }) as Box<dyn FnMut(&Envelope<Account>) -> Result<(), HandlerError>>,
        )
    }
}

fn per_stream(seen: &Seen, id: u32) -> Vec<Account> {
    let stream = format!("account-{id}");
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == stream)
        .map(|s| s.2.clone())
        .collect()
}

#[actix::test]
async fn one_subscription_sees_every_variant_of_a_stream_in_order() {
    let seen: Seen = Arc::default();
    let bus = EventBus::builder()
        .handler_with(
            "ledger",
            HandlerOptions::new().concurrency(3),
            recorder(&seen),
        )
        .build()
        .unwrap();
    // Interleave the histories of 5 accounts.
    let histories: Vec<_> = (0..5).map(history).collect();
    for step in 0..4 {
        for h in &histories {
            bus.publish(h[step].clone()).await.unwrap();
        }
    }
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    for id in 0..5 {
        assert_eq!(per_stream(&seen, id), history(id));
    }
    let mut types: Vec<_> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        ["account.closed", "account.deposited", "account.opened"]
    );
}

#[actix::test]
async fn variants_are_stored_under_their_own_type_and_replayed_into_the_enum() {
    let tmp = TempStore::new();
    let db = tmp.path();
    let bus = EventBus::builder().sqlite(db).build().unwrap();
    bus.publish_all(history(1)).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();

    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT event_type FROM events ORDER BY position")
        .unwrap();
    let types: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        types,
        [
            "account.opened",
            "account.deposited",
            "account.deposited",
            "account.closed"
        ]
    );

    let seen: Seen = Arc::default();
    let bus = EventBus::builder()
        .sqlite(db)
        .handler("ledger", recorder(&seen))
        .build()
        .unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(per_stream(&seen, 1), history(1));
}
