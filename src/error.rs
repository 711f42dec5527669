//! Errors of the library: one enum for the bus, plus the boxed error user handlers return.

use std::time::Duration;

use crate::storage::StoreError;

/// What a user handler returns when it fails. Any error type converts into it with `?`,
/// `anyhow::Error` included, so handlers may use whatever error crate they like.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when building, publishing to or operating an [`EventBus`].
///
/// [`EventBus`]: crate::EventBus
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `try_publish` found the pipeline full. Back off and retry, or use `publish`, which waits.
    #[error("event queue is full (max: {capacity})")]
    Full {
        /// The intake capacity of the bus.
        capacity: usize,
    },
    /// The bus was shut down; nothing more is accepted. A configuration or lifecycle bug in the caller.
    #[error("the bus is shut down")]
    Stopped,
    /// A handler spent its restart budget and its escalation stopped the bus.
    /// Inspect the dead letters, fix the handler, start a new bus.
    #[error("the bus was stopped: {reason}")]
    Halted {
        /// Which handler stopped the bus, and why.
        reason: String,
    },
    /// The builder was given an invalid setting. A configuration bug: fix the call.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Two subscriptions share one name. Names key checkpoints and dead letters: make them unique.
    #[error("a handler named `{0}` is already registered")]
    DuplicateHandler(String),
    /// No subscription has this name. Check the spelling against `EventBus::stats`.
    #[error("no handler named `{0}`")]
    UnknownHandler(String),
    /// `shutdown` gave up before every mailbox was drained; undrained events were not handled.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    /// The bus must be built inside a running actix system (`#[actix::main]`, `System::new`).
    #[error("no actix system is running on this thread: build the bus inside one")]
    NoSystem,
    /// The stream was not at the version the publisher expected; nothing was stored.
    /// Reload the aggregate and decide again.
    #[error("stream `{stream}` is at version {actual}, not the expected {expected}")]
    VersionConflict {
        /// The stream.
        stream: String,
        /// The version the publisher expected.
        expected: u64,
        /// The version the stream is at.
        actual: u64,
    },
    /// A replay that would break what the handler guarantees (a projection's read model
    /// would get its events twice, or events it needs were deleted). Nothing was changed.
    #[error("cannot replay `{handler}`: {reason}")]
    NotReplayable {
        /// The subscription.
        handler: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The store failed; see [`StoreError`] for what to do.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A durable bus cannot store this event: its stream id or type contains a NUL character
    /// (U+0000), which PostgreSQL cannot keep in text, or its stream id is longer than
    /// [`MAX_STREAM_ID_BYTES`](crate::MAX_STREAM_ID_BYTES). Refused on every store, so that an
    /// application behaves the same on each. Nothing was published.
    #[error("event cannot be stored: {0}")]
    InvalidEvent(String),
    /// An event could not be serialized to JSON. A bug in the event's `Serialize` impl.
    #[error("event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One line for a log or a dead letter: the error and its sources, `: `-separated (a
/// source whose text the line already ends with is not repeated).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("saving the order failed")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(chain(&Outer(io())), "saving the order failed: disk on fire");
        // A cause the message already ends with is not said twice.
        assert_eq!(chain(&Repeats(io())), "cannot read: disk on fire");
        let store = Error::Store(StoreError::database(io()));
        assert_eq!(chain(&store), "database error: disk on fire");
    }
}
