//! Options of a subscription ([`HandlerOptions`], [`StartFrom`]) and the bus's default
//! capacities.

use crate::error::{Error, Result};
use crate::policy::{RestartPolicy, RetryPolicy};

/// Default intake capacity: events accepted by `publish` but not yet routed.
pub const DEFAULT_INTAKE_CAPACITY: usize = 8192;
/// Largest intake capacity (the bounded channel's limit).
pub const MAX_INTAKE_CAPACITY: usize = usize::MAX >> 4;
/// Default mailbox capacity of a handler actor, in events.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// Options of one subscription.
///
/// ```
/// use actorbus::{HandlerOptions, RetryPolicy};
///
/// let opts = HandlerOptions::new().concurrency(4).mailbox_capacity(256).retry(RetryPolicy::new(3));
/// assert_eq!(opts.concurrency_level(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandlerOptions {
    pub(crate) concurrency: usize,
    pub(crate) mailbox_capacity: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) restart: RestartPolicy,
    pub(crate) start_from: StartFrom,
}

/// Where a subscription without a checkpoint starts, on a durable bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Every stored event (a new read model rebuilds from history).
    #[default]
    Beginning,
    /// Only events stored after the bus starts.
    Now,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            retry: RetryPolicy::default(),
            restart: RestartPolicy::default(),
            start_from: StartFrom::default(),
        }
    }
}

impl HandlerOptions {
    /// One actor, 1024-event mailbox, default retry and restart policies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of handler actors (and handler instances). Events of one stream always go to
    /// the same actor, so per-stream order holds at any concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The actor's buffer: most events given to it and not yet handled. On a durable bus an
    /// actor whose buffer is full falls behind and reads its events from the store until it
    /// catches up; in memory a full buffer slows the router (and so `publish`) down.
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.mailbox_capacity = n;
        self
    }

    /// How failing events are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How the actor is restarted after a panic.
    pub fn restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// Where a new subscription starts on a durable bus (one with a checkpoint resumes from it).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// The configured concurrency.
    pub fn concurrency_level(&self) -> usize {
        self.concurrency
    }

    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        if name.trim().is_empty() {
            return Err(Error::Config("a handler name must not be empty".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config(format!(
                "concurrency of `{name}` must be at least 1"
            )));
        }
        if self.mailbox_capacity == 0 {
            return Err(Error::Config(format!(
                "mailbox capacity of `{name}` must be at least 1"
            )));
        }
        if self.retry.max_attempts() == 0 {
            return Err(Error::Config(format!(
                "retry policy of `{name}` must allow at least 1 attempt"
            )));
        }
        Ok(())
    }
}
