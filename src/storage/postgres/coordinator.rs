//! Several processes on one PostgreSQL store: each bus is a member with a lease (its
//! heartbeat), and each (subscription, partition) is claimed by one live member at a time.
//!
//! Every beat (a fifth of the lease) a member renews its heartbeat, reads which members are
//! live, and works out from that list alone who is due each partition (spread evenly, the
//! same answer in every member). It lets go of what another live member is due, and claims
//! what it is due that is free or held by a member whose lease ran out. A claim is a
//! compare-and-set on the owner row that adds one to its token; the stored checkpoint is read
//! in the same transaction, after the row lock, so it includes everything the previous owner
//! committed. Every checkpoint or projection write is fenced by the token (see
//! `sql/progress.rs`), so a member that stalled past its lease can no longer write for a
//! partition it lost.
//!
//! Between beats the member's session listens for the appends of other processes
//! (`LISTEN`, then `PQconsumeInput` on the open socket every few milliseconds: no query is
//! sent) and reports the newest head, so events published elsewhere reach this process's
//! actors without polling the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};

use crate::event::stable_hash;
use crate::storage::backend::{Change, Claim, Coordination, Handoff, Report};
use crate::storage::sql::APPENDED_CHANNEL;

/// What a member needs to take part.
pub(crate) struct Plan {
    pub(crate) url: String,
    /// The store, as logs name it (no password).
    pub(crate) name: String,
    pub(crate) member: String,
    pub(crate) label: String,
    pub(crate) lease: Duration,
    /// (subscription, partitions) of this bus.
    pub(crate) layouts: Vec<(String, usize)>,
    /// The writer's server process: its own appends need no wake-up.
    pub(crate) writer_pid: i32,
}

/// (subscription, partition).
type PartitionKey = (String, usize);

/// How often the session is checked for other processes' appends.
const LISTEN_EVERY: Duration = Duration::from_millis(10);

/// The coordination of a member. Its first beat runs before `start` returns, so that a bus
/// has claimed its share by the time `build` returns (a `shutdown` right after drains it);
/// the rest runs on a thread of its own.
pub(crate) fn coordination(plan: Plan) -> Coordination {
    Box::new(move |report: Report| {
        let mut conn = connect(&plan).map_err(std::io::Error::other)?;
        let mut owned = HashMap::new();
        let Beat { claimed, .. } = rebalance(&mut conn, &plan, &mut owned, &mut HashMap::new())
            .map_err(std::io::Error::other)?;
        if !claimed.is_empty() {
            report(Change::Claimed(claimed));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("actorbus-coordinator".into())
            .spawn(move || run(&plan, &report, &flag, conn, owned))?;
        Ok(Box::new(move || {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }) as Box<dyn FnOnce() + Send>)
    })
}

fn run(
    plan: &Plan,
    report: &Report,
    stop: &AtomicBool,
    conn: PgConnection,
    mut owned: HashMap<PartitionKey, i64>,
) {
    let beat = (plan.lease / 5).max(Duration::from_millis(50));
    let mut session = Some(conn);
    let mut next_beat = Instant::now() + beat;
    // Partitions being handed over: asked of the router at, and drained ones coming back.
    let mut releasing: HashMap<PartitionKey, Instant> = HashMap::new();
    let (drained_tx, drained) = std::sync::mpsc::channel::<PartitionKey>();
    let drained_tx = std::sync::Mutex::new(drained_tx);
    let handoff = Handoff(Arc::new(move |subscription, partition| {
        let _ = drained_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((subscription, partition));
    }));
    while !stop.load(Ordering::SeqCst) {
        let Some(conn) = session.as_mut() else {
            match connect(plan) {
                Ok(conn) => session = Some(conn),
                Err(e) => {
                    log::warn!("{}: the coordinator cannot connect: {e}", plan.name);
                    std::thread::sleep(beat);
                }
            }
            continue;
        };
        // Hand over what the router drained, and what it took longer than a lease to drain
        // (a slow handler: the next owner then handles some events again).
        let mut ready: Vec<PartitionKey> = drained.try_iter().collect();
        ready.extend(
            releasing
                .iter()
                .filter(|(_, asked)| asked.elapsed() > plan.lease)
                .map(|(key, _)| key.clone()),
        );
        for key in ready {
            if releasing.remove(&key).is_none() {
                continue;
            }
            if let Some(token) = owned.remove(&key) {
                if let Err(e) = let_go(conn, plan, &key, token) {
                    log::warn!(
                        "{}: handing over `{}` #{} failed: {e}",
                        plan.name,
                        key.0,
                        key.1
                    );
                }
            }
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + beat;
            match rebalance(conn, plan, &mut owned, &mut releasing) {
                Ok(Beat {
                    claimed,
                    lost,
                    release,
                }) => {
                    if !lost.is_empty() {
                        report(Change::Released(lost));
                    }
                    if !release.is_empty() {
                        report(Change::Release(release, handoff.clone()));
                    }
                    if !claimed.is_empty() {
                        report(Change::Claimed(claimed));
                    }
                }
                Err(e) => {
                    log::warn!("{}: renewing this member's claims failed: {e}", plan.name);
                    session = None;
                    continue;
                }
            }
        }
        let mut newest = None;
        let mut broken = false;
        for notification in conn.notifications_iter() {
            match notification {
                Ok(n) if n.process_id != plan.writer_pid => {
                    newest = newest.max(n.payload.parse::<u64>().ok());
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("{}: listening for appends failed: {e}", plan.name);
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            session = None;
            // What was appended meanwhile is read at the next wake-up, or the next commit.
            continue;
        }
        if let Some(head) = newest {
            report(Change::Appended(head));
        }
        std::thread::sleep(LISTEN_EVERY);
    }
    if let Some(conn) = session.as_mut() {
        if let Err(e) = leave(conn, plan) {
            log::warn!("{}: leaving the store's members failed: {e}", plan.name);
        }
    }
}

fn connect(plan: &Plan) -> Result<PgConnection, String> {
    let mut conn = PgConnection::establish(&plan.url).map_err(|e| e.to_string())?;
    conn.batch_execute(&format!("LISTEN {APPENDED_CHANNEL}"))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

#[derive(QueryableByName)]
struct Member {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct Owner {
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = Nullable<Text>)]
    member: Option<String>,
    #[diesel(sql_type = BigInt)]
    token: i64,
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = BigInt)]
    token: i64,
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = BigInt)]
    position: i64,
}

/// What one beat changed.
struct Beat {
    claimed: Vec<Claim>,
    /// Claims found lost (another member claimed them while this one stalled).
    lost: Vec<PartitionKey>,
    /// Owned partitions another live member is due: to drain, then let go.
    release: Vec<PartitionKey>,
}

/// One beat: renew, then claim partitions, and find those to hand over or found lost.
fn rebalance(
    conn: &mut PgConnection,
    plan: &Plan,
    owned: &mut HashMap<PartitionKey, i64>,
    releasing: &mut HashMap<PartitionKey, Instant>,
) -> QueryResult<Beat> {
    // The heartbeat commits on its own, first: the claims below may wait for the row locks
    // of writes in flight, and a heartbeat held back with them would make this member look
    // dead to the others.
    // Every member reads the same clock, the server's: the processes' own clocks may differ
    // by more than a lease across machines.
    let now = server_micros(conn)?;
    diesel::sql_query(
        "INSERT INTO bus_members (id, label, started_at, heartbeat_at, lease_us) \
         VALUES ($1, $2, $3, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
    )
    .bind::<Text, _>(&plan.member)
    .bind::<Text, _>(&plan.label)
    .bind::<BigInt, _>(now)
    .bind::<BigInt, _>(plan.lease.as_micros() as i64)
    .execute(conn)?;
    conn.transaction(|conn| {
        // Members dead for ten leases of their own are forgotten (their claims are free).
        diesel::sql_query("DELETE FROM bus_members WHERE heartbeat_at + 10 * lease_us < $1")
            .bind::<BigInt, _>(now)
            .execute(conn)?;
        // Live: renewed within its own lease.
        let live: Vec<String> = diesel::sql_query(
            "SELECT id FROM bus_members WHERE heartbeat_at + lease_us >= $1 ORDER BY id",
        )
        .bind::<BigInt, _>(now)
        .load::<Member>(conn)?
        .into_iter()
        .map(|m| m.id)
        .collect();
        let mut claimed = Vec::new();
        let mut lost = Vec::new();
        let mut release = Vec::new();
        for (subscription, partitions) in &plan.layouts {
            let n = *partitions as i32;
            diesel::sql_query(
                "INSERT INTO partition_owners (handler, partitions, partition) \
                 SELECT $1, $2, p FROM generate_series(0, $2 - 1) AS p ON CONFLICT DO NOTHING",
            )
            .bind::<Text, _>(subscription)
            .bind::<Integer, _>(n)
            .execute(conn)?;
            let rows = diesel::sql_query(
                "SELECT partition, member, token FROM partition_owners \
                 WHERE handler = $1 AND partitions = $2 ORDER BY partition",
            )
            .bind::<Text, _>(subscription)
            .bind::<Integer, _>(n)
            .load::<Owner>(conn)?;
            let offset = stable_hash(subscription.as_bytes());
            for row in rows {
                let partition = row.partition.max(0) as usize;
                let key = (subscription.clone(), partition);
                let due = due(&live, offset, partition);
                let mine = row.member.as_deref() == Some(plan.member.as_str());
                if owned.get(&key).is_some_and(|t| !mine || *t != row.token) {
                    // Lost while this member stalled: another claimed it since.
                    owned.remove(&key);
                    releasing.remove(&key);
                    lost.push(key.clone());
                }
                if mine && due != Some(plan.member.as_str()) {
                    if owned.contains_key(&key) {
                        // Drained first, then let go (see `run`).
                        if !releasing.contains_key(&key) {
                            releasing.insert(key.clone(), Instant::now());
                            release.push(key);
                        }
                    } else {
                        // Held by an earlier run of this member id: nothing in hand.
                        let_go(conn, plan, &key, row.token)?;
                    }
                    continue;
                }
                let free = row
                    .member
                    .as_deref()
                    .is_none_or(|m| !live.iter().any(|l| l == m));
                let reclaim = mine && !owned.contains_key(&key);
                if due == Some(plan.member.as_str()) && (free || reclaim) {
                    let token = diesel::sql_query(
                        "UPDATE partition_owners SET member = $4, token = token + 1 \
                         WHERE handler = $1 AND partitions = $2 AND partition = $3 \
                         AND member IS NOT DISTINCT FROM $5 RETURNING token",
                    )
                    .bind::<Text, _>(subscription)
                    .bind::<Integer, _>(n)
                    .bind::<Integer, _>(row.partition)
                    .bind::<Text, _>(&plan.member)
                    .bind::<Nullable<Text>, _>(row.member.as_deref())
                    .load::<Token>(conn)?;
                    let Some(Token { token }) = token.into_iter().next() else {
                        continue; // another member got there first
                    };
                    let checkpoint = diesel::sql_query(
                        "SELECT position FROM checkpoints WHERE handler = $1 \
                         AND partitions = $2 AND partition = $3",
                    )
                    .bind::<Text, _>(subscription)
                    .bind::<Integer, _>(n)
                    .bind::<Integer, _>(row.partition)
                    .load::<Position>(conn)?
                    .into_iter()
                    .next()
                    .map_or(0, |p| p.position.max(0) as u64);
                    owned.insert(key, token);
                    claimed.push(Claim {
                        subscription: subscription.clone(),
                        partition,
                        token,
                        checkpoint,
                    });
                }
            }
        }
        Ok(Beat {
            claimed,
            lost,
            release,
        })
    })
}

/// Lets the claim `token` on `key` go, if this member still holds it.
fn let_go(conn: &mut PgConnection, plan: &Plan, key: &PartitionKey, token: i64) -> QueryResult<()> {
    let partitions = plan
        .layouts
        .iter()
        .find(|(name, _)| *name == key.0)
        .map_or(0, |(_, n)| *n as i32);
    diesel::sql_query(
        "UPDATE partition_owners SET member = NULL WHERE handler = $1 AND partitions = $2 \
         AND partition = $3 AND member = $4 AND token = $5",
    )
    .bind::<Text, _>(&key.0)
    .bind::<Integer, _>(partitions)
    .bind::<Integer, _>(key.1 as i32)
    .bind::<Text, _>(&plan.member)
    .bind::<BigInt, _>(token)
    .execute(conn)
    .map(drop)
}

/// The live member due partition `partition` of a subscription whose name hashes to
/// `offset`: the members in id order, round robin from the offset.
fn due(live: &[String], offset: u64, partition: usize) -> Option<&str> {
    if live.is_empty() {
        return None;
    }
    let n = live.len() as u64;
    Some(live[((offset % n + partition as u64 % n) % n) as usize].as_str())
}

/// The members whose lease has not run out, oldest first, with how many partitions each
/// owns (what `actorbus` reports as the buses running on the store).
pub(crate) fn live_members(conn: &mut PgConnection) -> QueryResult<Vec<(String, u64)>> {
    #[derive(QueryableByName)]
    struct Live {
        #[diesel(sql_type = Text)]
        label: String,
        #[diesel(sql_type = BigInt)]
        owned: i64,
    }
    Ok(diesel::sql_query(
        "SELECT m.label, (SELECT count(*) FROM partition_owners o WHERE o.member = m.id) AS owned \
         FROM bus_members m WHERE m.heartbeat_at + m.lease_us >= $1 ORDER BY m.started_at",
    )
    .bind::<BigInt, _>(server_micros(conn)?)
    .load::<Live>(conn)?
    .into_iter()
    .map(|l| (l.label, l.owned.max(0) as u64))
    .collect())
}

/// The server's clock, in Unix microseconds: the one clock every member's lease is read by.
fn server_micros(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = BigInt)]
        now: i64,
    }
    Ok(
        diesel::sql_query(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now",
        )
        .get_result::<Now>(conn)?
        .now,
    )
}

/// Lets every claim go and leaves the members: the others claim at their next beat.
fn leave(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::sql_query("UPDATE partition_owners SET member = NULL WHERE member = $1")
            .bind::<Text, _>(&plan.member)
            .execute(conn)?;
        diesel::sql_query("DELETE FROM bus_members WHERE id = $1")
            .bind::<Text, _>(&plan.member)
            .execute(conn)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn partitions_are_spread_evenly_and_every_member_computes_the_same_owner() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut count = std::collections::HashMap::new();
        for p in 0..9 {
            *count.entry(due(&live, 7, p).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
        assert_eq!(due(&[], 7, 0), None);
        assert_eq!(due(&live[..1], 7, 5), Some("a"));
    }
}
