//! Registering a starting bus's subscriptions in the store, and the operator's requests
//! about them (see [`crate::storage::registry`] for what the rows mean).

use diesel::prelude::*;

use super::{Conn, Dialect};
use crate::storage::models::CheckpointRow;
use crate::storage::registry::{resume_points, Kind, RegisterError, Resume, SubscriptionSpec};
use crate::storage::schema::{checkpoints, subscriptions};

/// Registers `specs` and returns where each one's actors resume, in their order. Runs the
/// reset of every projection an operator asked to rebuild (`actorbus replay`), in the same
/// transaction that moves its checkpoints back to the beginning. Call it inside a transaction.
pub(crate) fn register(
    conn: &mut Conn,
    specs: &mut [SubscriptionSpec],
    head: i64,
    now: i64,
) -> Result<Vec<Resume>, RegisterError> {
    let mut resumes = Vec::with_capacity(specs.len());
    for spec in specs.iter_mut() {
        let resettable = spec.reset.is_some();
        let requested: bool = subscriptions::table
            .find(&spec.name)
            .select(subscriptions::rebuild_requested)
            .first::<i32>(conn)
            .optional()?
            .is_some_and(|r| r != 0);
        if requested {
            match (spec.kind, spec.reset.take()) {
                (Kind::Projection, Some(reset)) => {
                    reset(conn.tx()).map_err(|source| RegisterError::Rebuild {
                        subscription: spec.name.clone(),
                        source,
                    })?;
                    log::info!(
                        "projection `{}`: read model reset, replaying the log",
                        spec.name
                    );
                }
                (Kind::Projection, None) => {
                    return Err(RegisterError::Rebuild {
                        subscription: spec.name.clone(),
                        source: "it was asked to rebuild its read model, but it has no reset \
                                 (Projection::RESETTABLE); `actorbus replay` cannot be done for it"
                            .into(),
                    })
                }
                (Kind::Handler, _) => {}
            }
            diesel::delete(checkpoints::table.filter(checkpoints::handler.eq(&spec.name)))
                .execute(conn)?;
        }
        let n = spec.partitions as i32;
        let row = (
            subscriptions::kind.eq(spec.kind.as_str()),
            subscriptions::event_types.eq(spec.event_types.join(",")),
            subscriptions::partitions.eq(n),
            subscriptions::resettable.eq(i32::from(resettable)),
            subscriptions::rebuild_requested.eq(0),
            subscriptions::updated_at.eq(now),
        );
        diesel::insert_into(subscriptions::table)
            .values((subscriptions::name.eq(&spec.name), row.clone()))
            .on_conflict(subscriptions::name)
            .do_update()
            .set(row)
            .execute(conn)?;
        let rows: Vec<CheckpointRow> = checkpoints::table
            .filter(checkpoints::handler.eq(&spec.name))
            .select(CheckpointRow::as_select())
            .load(conn)?;
        let resume = resume_points(&rows, spec.partitions, || {
            if spec.start_at_head && !requested {
                head.max(0) as u64
            } else {
                0
            }
        });
        let missing: Vec<CheckpointRow> = (0..spec.partitions)
            .filter(|&i| {
                !rows
                    .iter()
                    .any(|r| r.partitions == n && r.partition == i as i32)
            })
            .map(|i| CheckpointRow {
                handler: spec.name.clone(),
                partition: i as i32,
                partitions: n,
                position: resume.own[i] as i64,
                updated_at: now,
            })
            .collect();
        if !missing.is_empty() {
            diesel::insert_into(checkpoints::table)
                .values(&missing)
                .execute(conn)?;
        }
        resumes.push(resume);
    }
    Ok(resumes)
}

/// The kind and whether it can be rebuilt, of the subscription `name`, if registered (a
/// kind this binary does not know counts as a plain handler).
pub(crate) fn kind_of(conn: &mut Conn, name: &str) -> QueryResult<Option<(Kind, bool)>> {
    let row = subscriptions::table
        .find(name)
        .select((subscriptions::kind, subscriptions::resettable))
        .first::<(String, i32)>(conn)
        .optional()?;
    Ok(row.map(|(kind, resettable)| {
        let kind = if kind == Kind::Projection.as_str() {
            Kind::Projection
        } else {
            Kind::Handler
        };
        (kind, resettable != 0)
    }))
}

/// Asks the next bus that starts to reset the projection `name` and replay the whole log.
pub(crate) fn request_rebuild(conn: &mut Conn, name: &str) -> QueryResult<usize> {
    diesel::update(subscriptions::table.find(name))
        .set(subscriptions::rebuild_requested.eq(1))
        .execute(conn)
}
