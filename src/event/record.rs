//! [`Record`]: an event on its way through the bus, type-erased, with its payload live or as
//! JSON read back from a store, and the ids the bus gives events.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use uuid::Uuid;

use super::{stable_hash, DomainEvent, Envelope, Metadata, PublishOptions};

/// A live event value, type-erased.
pub(crate) type AnyEvent = Arc<dyn Any + Send + Sync>;

/// The payload of a record: the live Rust value, or JSON read back from a store.
#[derive(Clone)]
pub(crate) enum Payload {
    /// The value as published, with the way to its JSON: a handler of another Rust type for
    /// the same event type name decodes it from that, as it would from the store.
    Typed(
        AnyEvent,
        fn(&AnyEvent) -> serde_json::Result<serde_json::Value>,
    ),
    Json(Arc<serde_json::Value>),
    /// A stored payload that cannot be read at all, and why: its handlers dead-letter it.
    Invalid(Arc<str>),
}

/// A type-erased event on its way through the router: what handler mailboxes hold.
#[derive(Clone)]
pub(crate) struct Record {
    pub(crate) meta: Arc<Metadata>,
    pub(crate) payload: Payload,
    /// The payload as JSON, where the bus is durable (encoded by the publisher, stored by the writer).
    pub(crate) encoded: Option<Arc<str>>,
    /// When `publish` accepted it: the start of the publish -> handled latency.
    pub(crate) published_at: Instant,
    /// Stable hash of the stream id: `stream_hash % partitions` is the partition (handler
    /// actor) of a subscription that receives it.
    pub(crate) stream_hash: u64,
    /// The stored dead letter this record is a redrive of: delivered even where the
    /// checkpoint covers it, and the letter is deleted once handled.
    pub(crate) letter: Option<i64>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// Wraps a freshly published event, with its JSON when it is to be stored.
    ///
    /// # Errors
    /// The event's `Serialize` impl failed.
    pub(crate) fn encoded<E: DomainEvent>(
        event: E,
        opts: PublishOptions,
    ) -> serde_json::Result<Self> {
        let json = serde_json::to_string(&event)?;
        let mut record = Self::new(event, opts);
        record.encoded = Some(Arc::from(json));
        Ok(record)
    }

    /// Wraps a freshly published event.
    pub(crate) fn new<E: DomainEvent>(event: E, opts: PublishOptions) -> Self {
        let stream_id = event.stream_id();
        let event_type = event.event_type();
        let stream_hash = stable_hash(stream_id.as_bytes());
        let occurred_at = SystemTime::now();
        let meta = Metadata {
            id: opts.event_id.unwrap_or_else(|| new_event_id(occurred_at)),
            stream_id,
            stream_version: None,
            position: None,
            event_type: Cow::Borrowed(event_type),
            schema_version: E::SCHEMA_VERSION,
            occurred_at,
            correlation_id: opts.correlation_id,
            causation_id: opts.causation_id,
            headers: opts.headers,
        };
        Self {
            meta: Arc::new(meta),
            payload: Payload::Typed(Arc::new(event), to_json::<E>),
            encoded: None,
            published_at: Instant::now(),
            stream_hash,
            letter: None,
        }
    }

    /// The typed envelope a handler of `E` receives.
    ///
    /// # Errors
    /// A JSON payload that does not decode into `E`, or a live value of another type.
    pub(crate) fn envelope<E: DomainEvent>(&self) -> Result<Envelope<E>, String> {
        let event = match &self.payload {
            Payload::Typed(any, json) => match Arc::clone(any).downcast::<E>() {
                Ok(event) => event,
                // Another Rust type for the same event type name: through JSON, as from the store.
                Err(_) => {
                    let value = match &self.encoded {
                        Some(text) => serde_json::from_str(text),
                        None => json(any),
                    }
                    .map_err(|e| format!("payload does not encode: {e}"))?;
                    Arc::new(E::deserialize(value).map_err(|e| {
                        format!("payload does not decode as `{}`: {e}", E::EVENT_TYPE)
                    })?)
                }
            },
            Payload::Invalid(why) => {
                return Err(format!(
                    "payload does not decode as `{}`: {why}",
                    E::EVENT_TYPE
                ))
            }
            Payload::Json(value) => Arc::new(
                E::deserialize(&**value)
                    .map_err(|e| format!("payload does not decode as `{}`: {e}", E::EVENT_TYPE))?,
            ),
        };
        Ok(Envelope {
            meta: Arc::clone(&self.meta),
            event,
        })
    }
}

/// The JSON of a live value of `E` (what [`Payload::Typed`] keeps beside it).
fn to_json<E: DomainEvent>(any: &AnyEvent) -> serde_json::Result<serde_json::Value> {
    match any.downcast_ref::<E>() {
        Some(event) => serde_json::to_value(event),
        None => Err(serde::ser::Error::custom("not the published type")),
    }
}

/// A UUIDv7 for an event published at `at`: 48 bits of Unix milliseconds, a 12-bit sequence
/// that keeps ids of one process strictly increasing within a millisecond, then 62 random
/// bits from a fast generator. (`Uuid::now_v7` asks the kernel for randomness on every call,
/// which costs more than the rest of a publish.)
pub(crate) fn new_event_id(at: SystemTime) -> Uuid {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & 0xFFFF_FFFF_FFFF;
    let floor = millis << 12;
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(floor.max(last + 1))
        })
        .unwrap_or(0);
    let stamp = floor.max(prev + 1);
    let (ms, seq) = (stamp >> 12, stamp & 0xFFF);
    let random = fastrand::u64(..);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (seq >> 8) as u8;
    bytes[7] = seq as u8;
    bytes[8] = 0x80 | (random >> 56) as u8 & 0x3F;
    bytes[9..].copy_from_slice(&random.to_be_bytes()[1..]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Placed {
        id: u32,
    }
    impl DomainEvent for Placed {
        const EVENT_TYPE: &'static str = "placed";
        const SCHEMA_VERSION: u32 = 3;
        fn stream_id(&self) -> String {
            format!("order-{}", self.id)
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Other;
    impl DomainEvent for Other {
        const EVENT_TYPE: &'static str = "other";
        fn stream_id(&self) -> String {
            "x".into()
        }
    }

    #[test]
    fn record_carries_type_name_schema_and_stream() {
        let r = Record::new(Placed { id: 7 }, PublishOptions::new().header("k", "v"));
        let env = r.envelope::<Placed>().unwrap();
        assert_eq!(env.event(), &Placed { id: 7 });
        assert_eq!(env.stream_id(), "order-7");
        assert_eq!(env.event_type(), "placed");
        assert_eq!(env.schema_version(), 3);
        assert_eq!(env.headers()["k"], "v");
        assert_eq!(env.id().get_version_num(), 7);
        assert_eq!(r.stream_hash, stable_hash(b"order-7"));
    }

    #[test]
    fn json_payload_decodes_or_says_why_not() {
        let mut r = Record::new(Placed { id: 1 }, PublishOptions::new());
        r.payload = Payload::Json(Arc::new(serde_json::json!({"id": 5})));
        assert_eq!(r.envelope::<Placed>().unwrap().id, 5);
        r.payload = Payload::Json(Arc::new(serde_json::json!({"nope": true})));
        let err = r.envelope::<Placed>().unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
    }

    #[test]
    fn live_value_of_another_type_is_an_error_not_a_panic() {
        let r = Record::new(Placed { id: 1 }, PublishOptions::new());
        assert!(r.envelope::<Other>().is_err());
    }

    #[test]
    fn caused_by_inherits_correlation() {
        let cause = Record::new(Placed { id: 1 }, PublishOptions::new())
            .envelope::<Placed>()
            .unwrap();
        let opts = PublishOptions::new().caused_by(&cause);
        let effect = Record::new(Placed { id: 2 }, opts)
            .envelope::<Placed>()
            .unwrap();
        assert_eq!(effect.causation_id(), Some(cause.id()));
        assert_eq!(effect.correlation_id(), Some(cause.id()));
    }

    #[test]
    fn event_ids_are_v7_unique_and_sort_by_time() {
        let early = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let later = early + std::time::Duration::from_millis(1);
        let a = new_event_id(early);
        let b = new_event_id(later);
        assert_eq!(a.get_version_num(), 7);
        assert!(a < b);
        let many: Vec<_> = (0..10_000).map(|_| new_event_id(later)).collect();
        assert!(many.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(many
            .iter()
            .all(|id| id.get_variant() == uuid::Variant::RFC4122));
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
