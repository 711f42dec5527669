//! Between the store's columns and the bus's values, whichever database holds them: times
//! as Unix microseconds, metadata as JSON beside the payload, rows back into records.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::event::{stable_hash, Metadata, Payload, Record};
use crate::storage::models::StoredEvent;

/// A time as the store keeps it: Unix microseconds.
pub(crate) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
/// The time of stored Unix microseconds (the inverse of [`micros`]; negative is the epoch).
pub(crate) fn time_of(micros: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64)
}
impl StoredEvent {
    /// The row as a record for delivery. A payload or metadata that is not JSON still makes a
    /// record (the handler dead-letters it with the reason), never a failed read.
    pub(crate) fn into_record(self) -> Record {
        let payload = match serde_json::from_str(&self.payload) {
            Ok(value) => Payload::Json(Arc::new(value)),
            Err(e) => Payload::Invalid(Arc::from(format!("it is not JSON: {e}"))),
        };
        let extra: serde_json::Value = self
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or(serde_json::Value::Null);
        let uuid_at = |key: &str| {
            extra
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
        };
        let headers = extra
            .get("headers")
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let meta = Metadata {
            id: Uuid::from_slice(&self.event_id).unwrap_or_default(),
            stream_id: self.stream_id,
            stream_version: Some(self.stream_version as u64),
            position: Some(self.position as u64),
            event_type: self.event_type.into(),
            schema_version: self.schema_version as u32,
            occurred_at: time_of(self.recorded_at),
            correlation_id: uuid_at("correlation_id"),
            causation_id: uuid_at("causation_id"),
            headers,
        };
        let stream_hash = stable_hash(meta.stream_id.as_bytes());
        Record {
            meta: Arc::new(meta),
            payload,
            encoded: None,
            published_at: std::time::Instant::now(),
            stream_hash,
            letter: None,
        }
    }
}
/// Metadata beside the payload: only what is set, `None` when nothing is.
pub(crate) fn encode_metadata(meta: &Metadata) -> Option<String> {
    if meta.correlation_id.is_none() && meta.causation_id.is_none() && meta.headers.is_empty() {
        return None;
    }
    let mut m = serde_json::Map::new();
    if let Some(c) = meta.correlation_id {
        m.insert("correlation_id".into(), c.to_string().into());
    }
    if let Some(c) = meta.causation_id {
        m.insert("causation_id".into(), c.to_string().into());
    }
    if !meta.headers.is_empty() {
        let headers = meta
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        m.insert("headers".into(), serde_json::Value::Object(headers));
    }
    Some(serde_json::Value::Object(m).to_string())
}
