//! Domain events and their envelopes: what the application publishes, what handlers receive,
//! and the type-erased [`Record`] the router and the store move around.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

mod record;
/// The raw-SQLite baseline (`baseline.rs`) gives its rows the ids the bus gives events.
#[cfg(feature = "cli")]
pub(crate) use record::new_event_id;
pub(crate) use record::{Payload, Record};

/// The longest stream id a durable bus stores, in bytes (UTF-8). PostgreSQL keys its stream
/// index by the id, and an index entry must fit in a fraction of a page; the same limit
/// holds on every store, so that an application behaves the same on each.
pub const MAX_STREAM_ID_BYTES: usize = 1024;

/// A domain event: a fact that happened to one aggregate (its *stream*), named in the past
/// tense (`OrderPlaced`).
///
/// `EVENT_TYPE` is the stable name stored and routed on; it must not change when the Rust
/// type is renamed or moved. Bump `SCHEMA_VERSION` when the payload's shape changes.
///
/// An aggregate's events are often one Rust enum: then list every variant's name in
/// `EVENT_TYPES`, and return the variant's name from [`event_type`](Self::event_type). A
/// handler of the enum receives all of them, in per-stream order across the variants.
///
/// ```
/// use actorbus::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct OrderPlaced { order_id: String, total_cents: u64 }
///
/// impl DomainEvent for OrderPlaced {
///     const EVENT_TYPE: &'static str = "order.placed";
///     fn stream_id(&self) -> String { format!("order-{}", self.order_id) }
/// }
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable event-type name, e.g. `"order.placed"`.
    const EVENT_TYPE: &'static str;
    /// Every type name values of this Rust type can carry (an enum of an aggregate's events);
    /// a handler of this type subscribes to all of them.
    const EVENT_TYPES: &'static [&'static str] = &[Self::EVENT_TYPE];
    /// The payload's schema version, stored beside it.
    const SCHEMA_VERSION: u32 = 1;
    /// The id of the stream (aggregate) this event belongs to. Events of one stream are
    /// delivered to each handler in publish order. A durable bus stores ids of at most
    /// [`MAX_STREAM_ID_BYTES`] bytes without a NUL character, and refuses others at publish
    /// ([`Error::InvalidEvent`](crate::Error::InvalidEvent)).
    fn stream_id(&self) -> String;
    /// The type name of this value: one of `EVENT_TYPES` (by default `EVENT_TYPE`).
    fn event_type(&self) -> &'static str {
        Self::EVENT_TYPE
    }
}

/// Everything the runtime knows about one event besides its payload (serializes with
/// `occurred_at` in Unix µs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Unique event id (UUIDv7, so ids sort by creation time). Use it as an idempotency key.
    pub id: Uuid,
    /// The stream (aggregate) id.
    pub stream_id: String,
    /// Version of the event within its stream (1-based), where the store assigns one.
    pub stream_version: Option<u64>,
    /// Global position in the store (monotonic), where the bus is durable.
    pub position: Option<u64>,
    /// The stable event-type name (borrowed from the Rust type when published in-process).
    pub event_type: Cow<'static, str>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// When the event was published.
    #[serde(serialize_with = "crate::stats::as_unix_micros")]
    pub occurred_at: SystemTime,
    /// The id shared by every event of one business transaction.
    pub correlation_id: Option<Uuid>,
    /// The id of the event (or command) that caused this one.
    pub causation_id: Option<Uuid>,
    /// Free-form headers (tenant, user, trace ids ...).
    pub headers: BTreeMap<String, String>,
}

/// Options of one publish: correlation, causation, headers.
///
/// ```
/// use actorbus::PublishOptions;
///
/// let opts = PublishOptions::new().header("tenant", "acme");
/// assert_eq!(opts.headers()["tenant"], "acme");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    headers: BTreeMap<String, String>,
    event_id: Option<Uuid>,
    expected_version: Option<u64>,
}

impl PublishOptions {
    /// Uses `id` as the event id instead of a fresh UUIDv7. A durable store keeps one event
    /// per id, so publishing again with the same id after a timeout does not store it twice.
    pub fn event_id(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    /// Optimistic concurrency (durable stores): the event is stored only if its stream is at
    /// `version` (0 for a new stream); otherwise publish fails with `Error::VersionConflict`.
    pub fn expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Whether the publisher chose the event id.
    pub(crate) fn has_event_id(&self) -> bool {
        self.event_id.is_some()
    }

    /// The expected stream version, if set.
    pub fn expected(&self) -> Option<u64> {
        self.expected_version
    }

    /// No correlation, no causation, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Marks the new event as caused by `cause`: causation is `cause`'s id, correlation is
    /// inherited (or starts at `cause`'s id).
    pub fn caused_by<E>(self, cause: &Envelope<E>) -> Self {
        let correlation = cause.correlation_id().unwrap_or(cause.id());
        self.correlation_id(correlation).causation_id(cause.id())
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The headers set so far.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
}

/// An event as a handler receives it: the typed payload plus its [`Metadata`]. Cheap to
/// clone (two reference counts); dereferences to the event.
pub struct Envelope<E> {
    meta: Arc<Metadata>,
    event: Arc<E>,
}

impl<E> Clone for Envelope<E> {
    fn clone(&self) -> Self {
        Self {
            meta: Arc::clone(&self.meta),
            event: Arc::clone(&self.event),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Envelope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("meta", &self.meta)
            .field("event", &self.event)
            .finish()
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

impl<E> Envelope<E> {
    /// The event itself.
    pub fn event(&self) -> &E {
        &self.event
    }
    /// All metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
    /// The event id (UUIDv7): the idempotency key.
    pub fn id(&self) -> Uuid {
        self.meta.id
    }
    /// The stream (aggregate) id.
    pub fn stream_id(&self) -> &str {
        &self.meta.stream_id
    }
    /// Version within the stream, where the store assigns one.
    pub fn stream_version(&self) -> Option<u64> {
        self.meta.stream_version
    }
    /// Global position, where the bus is durable.
    pub fn position(&self) -> Option<u64> {
        self.meta.position
    }
    /// The stable event-type name.
    pub fn event_type(&self) -> &str {
        &self.meta.event_type
    }
    /// The payload's schema version.
    pub fn schema_version(&self) -> u32 {
        self.meta.schema_version
    }
    /// When the event was published.
    pub fn occurred_at(&self) -> SystemTime {
        self.meta.occurred_at
    }
    /// The correlation id, if any.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.meta.correlation_id
    }
    /// The causation id, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.meta.causation_id
    }
    /// The headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.meta.headers
    }
}

/// What `publish` tells about an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The event id (UUIDv7).
    pub id: Uuid,
    /// Global position, where the bus is durable.
    pub position: Option<u64>,
    /// Version within its stream, where the store assigns one.
    pub stream_version: Option<u64>,
}

/// The handler actor (partition) that receives the events of `stream_id` in a subscription of
/// `partitions` actors: the same in every process and release.
///
/// ```
/// assert_eq!(actorbus::partition_for("order-1", 1), 0);
/// assert!(actorbus::partition_for("order-1", 4) < 4);
/// ```
pub fn partition_for(stream_id: &str, partitions: usize) -> usize {
    (stable_hash(stream_id.as_bytes()) % partitions.max(1) as u64) as usize
}

/// FNV-1a: stable across processes and releases, unlike `DefaultHasher`, so a stream keeps
/// its handler actor after a restart.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
