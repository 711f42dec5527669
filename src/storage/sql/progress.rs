//! How far each subscription got: checkpoints (which only move forward here), dead-letter
//! changes, and the clean-up of checkpoints of an earlier concurrency. Written in the
//! writer's transactions.

use diesel::prelude::*;

use super::{Conn, Dialect};

use crate::storage::backend::{LetterChange, Progress};
use crate::storage::models::CheckpointRow;
use crate::storage::schema::{checkpoints, dead_letters};

/// Stores dead-letter changes in order; a letter given up under a claim that no longer holds
/// for `member` is dropped (the partition's new owner handles that event).
pub(crate) fn save_dead_letters(
    conn: &mut Conn,
    changes: &[LetterChange],
    member: Option<&str>,
) -> QueryResult<()> {
    use diesel::upsert::excluded;
    for change in changes {
        match change {
            LetterChange::Keep(letter, claim) => {
                if let Some((partitions, partition, token)) = *claim {
                    let member = member.unwrap_or_default();
                    if !holds(conn, member, &letter.handler, partitions, partition, token)? {
                        continue;
                    }
                }
                diesel::insert_into(dead_letters::table)
                    .values(letter)
                    .on_conflict((dead_letters::handler, dead_letters::position))
                    .do_update()
                    .set((
                        dead_letters::attempts.eq(excluded(dead_letters::attempts)),
                        dead_letters::last_error.eq(excluded(dead_letters::last_error)),
                        dead_letters::failed_at.eq(excluded(dead_letters::failed_at)),
                        dead_letters::redrive_requested.eq(0),
                    ))
                    .execute(conn)?;
            }
            LetterChange::Resolved(id) => {
                diesel::delete(dead_letters::table.find(id)).execute(conn)?;
            }
        }
    }
    Ok(())
}
/// Upserts checkpoints; a checkpoint only moves forward here (`replay` moves it back on purpose,
/// elsewhere), so a late batched write never undoes a projection's in-transaction one. One
/// reached under a claim ([`Progress::fence`]) is stored only while `member` still holds
/// that claim (see [`claim_holds`]); otherwise it is dropped.
pub(crate) fn save_checkpoints(
    conn: &mut Conn,
    rows: &[Progress],
    member: Option<&str>,
) -> QueryResult<()> {
    for progress in rows {
        if claim_holds(conn, progress, member)? {
            save_checkpoint(conn, &progress.row)?;
        } else {
            log::debug!(
                "checkpoint of `{}` #{} not stored: its claim moved to another process",
                progress.row.handler,
                progress.row.partition
            );
        }
    }
    Ok(())
}

/// Upserts one checkpoint, which only moves forward (the claim, if any, checked already).
pub(crate) fn save_checkpoint(conn: &mut Conn, row: &CheckpointRow) -> QueryResult<()> {
    use diesel::upsert::excluded;
    diesel::insert_into(checkpoints::table)
        .values(row)
        .on_conflict((
            checkpoints::handler,
            checkpoints::partitions,
            checkpoints::partition,
        ))
        .do_update()
        .set((
            checkpoints::position.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
                "{}(checkpoints.position, excluded.position)",
                Conn::GREATEST
            ))),
            checkpoints::updated_at.eq(excluded(checkpoints::updated_at)),
        ))
        .execute(conn)
        .map(drop)
}

/// Whether the claim `progress` was reached under still holds for `member` (see
/// [`holds`]); always, for one reached without a claim (one bus owns the store).
pub(crate) fn claim_holds(
    conn: &mut Conn,
    progress: &Progress,
    member: Option<&str>,
) -> QueryResult<bool> {
    let Some(token) = progress.fence else {
        return Ok(true);
    };
    let row = &progress.row;
    holds(
        conn,
        member.unwrap_or_default(),
        &row.handler,
        row.partitions,
        row.partition,
        token,
    )
}

/// Whether `member` still holds the claim `token` on a subscription's partition (PostgreSQL
/// shared by several processes). The owner row is locked for share until the transaction ends: a
/// process claiming the partition meanwhile waits, and reads the checkpoint after this
/// commit.
pub(crate) fn holds(
    conn: &mut Conn,
    member: &str,
    handler: &str,
    partitions: i32,
    partition: i32,
    token: i64,
) -> QueryResult<bool> {
    use diesel::sql_types::{BigInt, Integer, Text};
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = Integer)]
        #[allow(dead_code)]
        held: i32,
    }
    let found = diesel::sql_query(
        "SELECT 1 AS held FROM partition_owners WHERE handler = $1 AND partitions = $2 \
         AND partition = $3 AND member = $4 AND token = $5 FOR SHARE",
    )
    .bind::<Text, _>(handler)
    .bind::<Integer, _>(partitions)
    .bind::<Integer, _>(partition)
    .bind::<Text, _>(member)
    .bind::<BigInt, _>(token)
    .load::<Held>(conn)?;
    Ok(!found.is_empty())
}

/// Deletes the checkpoints of `handler` written with another concurrency that no longer
/// matter: an old row at or below the lowest checkpoint of the current layout (all of its
/// `partitions` rows present) cannot make any actor skip an event. Returns whether rows of
/// another layout remain.
pub(crate) fn drop_covered_layouts(
    conn: &mut Conn,
    handler: &str,
    partitions: i32,
) -> QueryResult<bool> {
    use diesel::sql_types::{Integer, Text};
    diesel::sql_query(
        "DELETE FROM checkpoints WHERE handler = $1 AND partitions != $2 AND position <= \
         (SELECT CASE WHEN count(*) = $2 THEN min(position) END FROM checkpoints \
          WHERE handler = $1 AND partitions = $2)",
    )
    .bind::<Text, _>(handler)
    .bind::<Integer, _>(partitions)
    .execute(conn)?;
    let left: i64 = checkpoints::table
        .filter(checkpoints::handler.eq(handler))
        .filter(checkpoints::partitions.ne(partitions))
        .count()
        .get_result(conn)?;
    Ok(left > 0)
}
