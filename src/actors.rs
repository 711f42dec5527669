//! The actors of the runtime: supervisor, router and handler actors.

pub(crate) mod handler;
pub(crate) mod intake;
pub(crate) mod letters;
pub(crate) mod panics;
pub(crate) mod pipeline;
pub(crate) mod router;
pub(crate) mod storage;
pub(crate) mod supervisor;
pub(crate) mod thread;
