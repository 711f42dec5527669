//! Whether the bus accepts events: running, stopping (shutdown began) or halted (an
//! escalation stopped it, with the reason). Shared by the handle and the supervisor.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const HALTED: u8 = 2;

/// Whether the bus accepts events; shared by the handle and the supervisor.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    state: AtomicU8,
    reason: Mutex<Option<String>>,
}

impl Lifecycle {
    pub(crate) fn check(&self) -> Result<()> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            HALTED => Err(self.halted()),
            _ => Err(Error::Stopped),
        }
    }

    /// [`check`](Self::check) for a publish: while a shutdown drains, a publish from inside
    /// a handler is part of the work being drained, and is accepted.
    pub(crate) fn check_publish(&self) -> Result<()> {
        match self.state.load(Ordering::Acquire) {
            STOPPING if crate::actors::intake::in_handler() => Ok(()),
            _ => self.check(),
        }
    }

    pub(crate) fn halted(&self) -> Error {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Error::Halted {
            reason: reason.unwrap_or_default(),
        }
    }

    /// The error for a send that found the intake closed.
    pub(crate) fn closed(&self) -> Error {
        match self.state.load(Ordering::Acquire) {
            HALTED => self.halted(),
            _ => Error::Stopped,
        }
    }

    pub(crate) fn halt(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.state.store(HALTED, Ordering::Release);
    }

    pub(crate) fn begin_stop(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::AcqRel, Ordering::Acquire);
    }
}
