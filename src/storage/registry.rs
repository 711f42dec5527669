//! The subscriptions a store knows, and where each of their handler actors resumes.
//!
//! A bus registers every subscription when it starts, in one transaction: its kind, event
//! types and concurrency go to `subscriptions`, and every handler actor gets a checkpoint row
//! at once (a new subscription at its start, 0 or the head), so a missing row never has to be
//! guessed about. Checkpoints are per (subscription, partition, partitions): when the
//! concurrency changes, the rows of the old layout stay until the new one has passed them,
//! and an event is taken as handled when *any* layout's actor owning its stream passed it.
//! That keeps exactly-once effects for projections through any change of concurrency.

use std::sync::Arc;

use crate::storage::backend::Tx;
use crate::storage::models::CheckpointRow;

/// What a subscription is, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any handler: at least once.
    Handler,
    /// A read model written in the store's transaction: exactly once.
    Projection,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Handler => "handler",
            Kind::Projection => "projection",
        }
    }
}

/// Clears a projection's read model before it is rebuilt from the log (`actorbus replay`).
pub(crate) type ResetHook =
    Box<dyn FnOnce(Tx<'_>) -> Result<(), crate::error::HandlerError> + Send>;

/// One subscription of a starting bus.
pub(crate) struct SubscriptionSpec {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) event_types: Vec<String>,
    pub(crate) partitions: usize,
    /// A new subscription starts at the head instead of the beginning.
    pub(crate) start_at_head: bool,
    /// A projection that can rebuild its read model.
    pub(crate) reset: Option<ResetHook>,
}

impl std::fmt::Debug for SubscriptionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// Checkpoints of earlier layouts still in force: (partitions, position per partition).
pub(crate) type Layouts = Arc<Vec<(usize, Vec<u64>)>>;

/// Where the actors of one subscription resume.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    /// Each actor's own checkpoint: it has handled every event of its streams up to here.
    pub(crate) own: Vec<u64>,
    /// Earlier layouts: an event its stream's actor there passed is handled too.
    pub(crate) older: Layouts,
}

/// Whether an earlier layout's actor owning the stream of `hash` passed `position`.
pub(crate) fn older_covers(older: &[(usize, Vec<u64>)], hash: u64, position: u64) -> bool {
    older
        .iter()
        .any(|(n, positions)| position <= positions[(hash % *n as u64) as usize])
}

/// Why a bus could not register its subscriptions.
#[derive(Debug)]
pub(crate) enum RegisterError {
    Db(diesel::result::Error),
    Rebuild {
        subscription: String,
        source: crate::error::HandlerError,
    },
}

impl From<diesel::result::Error> for RegisterError {
    fn from(e: diesel::result::Error) -> Self {
        RegisterError::Db(e)
    }
}

/// Where each of `partitions` actors resumes, given the subscription's checkpoint rows.
/// `fresh` is the start of a subscription with no rows at all. An actor of a new layout
/// without a row starts at the lowest checkpoint of the earlier layouts (every stream it owns
/// was handled at least that far), and skips what those layouts passed.
pub(crate) fn resume_points(
    rows: &[CheckpointRow],
    partitions: usize,
    fresh: impl FnOnce() -> u64,
) -> Resume {
    if rows.is_empty() {
        return Resume {
            own: vec![fresh(); partitions],
            older: Layouts::default(),
        };
    }
    let mut older: Vec<(usize, Vec<u64>)> = Vec::new();
    for row in rows.iter().filter(|r| r.partitions as usize != partitions) {
        let m = row.partitions.max(1) as usize;
        let index = match older.iter().position(|(k, _)| *k == m) {
            Some(i) => i,
            None => {
                older.push((m, vec![0; m]));
                older.len() - 1
            }
        };
        if let Some(p) = older[index].1.get_mut(row.partition.max(0) as usize) {
            *p = row.position.max(0) as u64;
        }
    }
    let floor = older
        .iter()
        .flat_map(|(_, ps)| ps.iter().copied())
        .min()
        .unwrap_or(0);
    let mut own = vec![floor; partitions];
    for row in rows.iter().filter(|r| r.partitions as usize == partitions) {
        if let Some(p) = own.get_mut(row.partition.max(0) as usize) {
            *p = row.position.max(0) as u64;
        }
    }
    Resume {
        own,
        older: Arc::new(older),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: i32, partitions: i32, position: i64) -> CheckpointRow {
        CheckpointRow {
            handler: "h".into(),
            partition,
            partitions,
            position,
            updated_at: 0,
        }
    }

    #[test]
    fn a_new_subscription_starts_where_it_is_told() {
        let r = resume_points(&[], 3, || 42);
        assert_eq!(r.own, vec![42, 42, 42]);
        assert!(r.older.is_empty());
    }

    #[test]
    fn the_same_layout_resumes_each_actor_at_its_own_checkpoint() {
        let rows = [row(0, 2, 10), row(1, 2, 7)];
        let r = resume_points(&rows, 2, || unreachable!());
        assert_eq!(r.own, vec![10, 7]);
        assert!(r.older.is_empty());
    }

    #[test]
    fn a_new_layout_starts_at_the_lowest_old_checkpoint_and_skips_what_the_old_owner_passed() {
        let rows = [row(0, 4, 50), row(1, 4, 20), row(2, 4, 90), row(3, 4, 70)];
        let r = resume_points(&rows, 2, || unreachable!());
        assert_eq!(r.own, vec![20, 20]);
        // A stream of old partition 2 was handled up to 90 there.
        assert!(older_covers(&r.older, 2, 90));
        assert!(!older_covers(&r.older, 2, 91));
        assert!(older_covers(&r.older, 1, 20));
        assert!(!older_covers(&r.older, 1, 21));
        assert!(older_covers(&r.older, 7, 70), "7 % 4 = 3");
    }
}
