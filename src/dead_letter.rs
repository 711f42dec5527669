//! Dead letters: events a handler gave up on, kept with the reason so that they can be listed,
//! redriven to their handler once it is fixed, or purged.

use std::time::SystemTime;

use crate::event::{Metadata, Record};

/// An event that one handler could not process.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    id: u64,
    handler: String,
    attempts: u32,
    last_error: String,
    failed_at: SystemTime,
    pub(crate) record: Record,
}

/// As JSON: `id`, `handler`, `attempts`, `last_error`, `failed_at` (Unix µs) and the
/// event's metadata under `event`.
impl serde::Serialize for DeadLetter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct At(SystemTime);
        impl serde::Serialize for At {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::stats::as_unix_micros(&self.0, s)
            }
        }
        let mut st = s.serialize_struct("DeadLetter", 6)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("handler", &self.handler)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.serialize_field("last_error", &self.last_error)?;
        st.serialize_field("failed_at", &At(self.failed_at))?;
        st.serialize_field("event", &*self.record.meta)?;
        st.end()
    }
}

impl DeadLetter {
    /// Sequence number of the dead letter (unique within the bus).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The subscription that gave up.
    pub fn handler(&self) -> &str {
        &self.handler
    }
    /// The event's metadata (id, stream, type ...).
    pub fn event(&self) -> &Metadata {
        &self.record.meta
    }
    /// Attempts made, panics included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// The last error (or panic message, or decoding error).
    pub fn last_error(&self) -> &str {
        &self.last_error
    }
    /// When the handler gave up.
    pub fn failed_at(&self) -> SystemTime {
        self.failed_at
    }
}

impl DeadLetter {
    /// A letter of `handler` for `record` (whose `letter` names its stored row, if any).
    pub(crate) fn new(
        id: u64,
        handler: String,
        attempts: u32,
        last_error: String,
        failed_at: SystemTime,
        record: Record,
    ) -> Self {
        Self {
            id,
            handler,
            attempts,
            last_error,
            failed_at,
            record,
        }
    }

    /// Whose letter it is (the subscription name), for filtering.
    pub(crate) fn handler_name(&self) -> &str {
        &self.handler
    }
}
