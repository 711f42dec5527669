//! What an operator changes in a store with no bus on it (or beside one, where the change is
//! one a running bus reads at its next start): redrive requests, purges, checkpoints moved.

use diesel::prelude::*;

use super::Conn;

use crate::storage::convert::micros;
use crate::storage::schema::{checkpoints, dead_letters};

/// Marks the dead letters of `subscription` (all when `None`) to be redriven at the next
/// start; answers how many.
pub(crate) fn request_redrive(conn: &mut Conn, subscription: Option<&str>) -> QueryResult<usize> {
    let mut q = diesel::update(dead_letters::table).into_boxed();
    if let Some(name) = subscription {
        q = q.filter(dead_letters::handler.eq(name.to_owned()));
    }
    q.set(dead_letters::redrive_requested.eq(1)).execute(conn)
}

/// Deletes the dead letters of `subscription` (all when `None`); answers how many.
pub(crate) fn purge_dead_letters(
    conn: &mut Conn,
    subscription: Option<&str>,
) -> QueryResult<usize> {
    let mut q = diesel::delete(dead_letters::table).into_boxed();
    if let Some(name) = subscription {
        q = q.filter(dead_letters::handler.eq(name.to_owned()));
    }
    q.execute(conn)
}

/// Moves every checkpoint of `subscription` to `position`; answers how many moved.
pub(crate) fn move_checkpoints(
    conn: &mut Conn,
    subscription: &str,
    position: i64,
) -> QueryResult<usize> {
    diesel::update(checkpoints::table.filter(checkpoints::handler.eq(subscription)))
        .set((
            checkpoints::position.eq(position),
            checkpoints::updated_at.eq(micros(std::time::SystemTime::now())),
        ))
        .execute(conn)
}
