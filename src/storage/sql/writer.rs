//! The single writer: group commit (positions, stream versions, optimistic concurrency,
//! idempotent ids), the bulk stream index, checkpoints and dead-letter changes.

use std::collections::HashMap as StdMap;

/// The writer's maps, keyed by stream id: looked up several times per event.
type HashMap<K, V> = StdMap<K, V, foldhash::quality::RandomState>;
use std::path::PathBuf;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};

use super::progress::{save_checkpoints, save_dead_letters};
use super::queries::{marks, marks_and_streams_since, set_meta_number, INDEXED_THROUGH};
use super::{Conn, Dialect};
use crate::event::Record;
use crate::storage::backend::{LetterChange, Places, Progress, Unit, UnitOutcome};
use crate::storage::convert::{encode_metadata, micros};
use crate::storage::error::{classify, classify_connection};
use crate::storage::models::NewStoredEvent;
use crate::storage::prepared::{statement, Prepared};
use crate::storage::rows::IndexEntry;
use crate::storage::schema::{events, stream_events};
use crate::storage::StoreError;

/// Streams whose last version the writer remembers; past this the cache starts over at the
/// next indexing of the tail, so memory stays flat however many streams there are.
const VERSION_CACHE_LIMIT: usize = 100_000;
/// An append that leaves more events than this past `indexed_through` indexes the tail in its
/// own transaction. The storage actor's timer normally indexes it long before (every 200 ms),
/// and past [`INDEX_TAIL_BEHIND`] each append is preceded by a piece.
const INDEX_TAIL_LIMIT: i64 = 131_072;
/// Events past `indexed_through` beyond which the index is behind: the storage actor then
/// writes a piece before each append, so appends slow to the pace the index keeps, rather
/// than an append reaching [`INDEX_TAIL_LIMIT`] and indexing 131k events at once (110-145
/// ms, seen in about one million-event bench of five: at 280k events/s, passes started by
/// the 200 ms timer leave about 80k events unindexed, and a late flush leaves more).
const INDEX_TAIL_BEHIND: i64 = 65_536;
/// Indexes the events in `($1, $2]` by stream, sorted so each stream's entries go in together
/// (the raw baseline of `actorbus bench` indexes this way; only it runs this text as it is).
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub(crate) const INDEX_TAIL_SQL: &str =
    "INSERT INTO stream_events (stream_id, stream_version, position) \
     SELECT stream_id, stream_version, position FROM events \
     WHERE position > $1 AND position <= $2 ORDER BY stream_id, stream_version";
/// The writer's [`INDEX_TAIL_SQL`]: an entry already there for the same event (pieces of a
/// pass that did not finish wrote it) is left as it is. Another event's entry with the same
/// version still fails the insert: a version stored twice stops appends, with a clear error.
const REINDEX_TAIL_SQL: &str = "INSERT INTO stream_events (stream_id, stream_version, position) \
     SELECT e.stream_id, e.stream_version, e.position FROM events e \
     WHERE e.position > $1 AND e.position <= $2 AND NOT EXISTS (SELECT 1 FROM stream_events s \
     WHERE s.stream_id = e.stream_id AND s.stream_version = e.stream_version \
     AND s.position = e.position) ORDER BY e.stream_id, e.stream_version";
/// Stream-index entries per piece of a pass over the tail: each piece is a short transaction
/// of its own (a few milliseconds), and appends run between pieces. One statement for the
/// whole tail held the writer for tens of milliseconds every flush.
const INDEX_PIECE: usize = 1024;
/// The single writer's connection and what it remembers between commits.
pub(crate) struct Writer {
    conn: PooledConnection<ConnectionManager<Conn>>,
    /// Where a fresh connection comes from when this one is lost (a database restarted).
    pool: Pool<ConnectionManager<Conn>>,
    path: PathBuf,
    head: i64,
    /// The last position `stream_events` covers (-1: not known, read it at the next commit).
    /// Invariant: every stream with an event past it is in `versions`.
    indexed: i64,
    versions: HashMap<String, i64>,
    /// This writer's appends past `indexed` (or past the pass under way), by stream, while
    /// they are all the events there: then the tail is indexed from them, in pieces.
    /// Emptied whenever the tail is indexed some other way.
    pending: Pending,
    /// A pass over the tail under way: its entries by stream, how far it got, and the
    /// position it brings `indexed` to once all are written.
    pass: Option<Pass>,
    /// SQLite: raised when the writer should checkpoint the WAL between two commits.
    wal_restart: Option<std::sync::Arc<crate::storage::pool::WalRestart>>,
    /// The bus's member id where it shares a PostgreSQL store with other processes: the
    /// checkpoints it writes are fenced by its claims.
    member: Option<String>,
}
impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("head", &self.head)
            .field("indexed", &self.indexed)
            .finish()
    }
}
impl Writer {
    /// The writer, on a connection of its own from `pool`.
    ///
    /// # Errors
    /// No connection could be had.
    pub(crate) fn new(
        pool: Pool<ConnectionManager<Conn>>,
        path: PathBuf,
    ) -> Result<Self, StoreError> {
        let conn = pool.get().map_err(|e| classify_connection(&path, e))?;
        Ok(Self {
            conn,
            pool,
            path,
            head: -1,
            indexed: -1,
            versions: HashMap::default(),
            pending: Pending::default(),
            pass: None,
            wal_restart: None,
            member: None,
        })
    }

    /// Runs `f` in a transaction of `kind`. When it fails and the connection no longer
    /// answers (the database restarted, the server ended the session), the writer takes a
    /// fresh one from the pool, so that the next write can succeed.
    fn run<T>(
        &mut self,
        kind: Kind,
        f: impl FnOnce(&mut Conn) -> QueryResult<T>,
    ) -> Result<T, StoreError> {
        let result = in_transaction(&mut self.conn, &self.path, kind, f);
        if result.is_err() && diesel::r2d2::R2D2Connection::ping(&mut *self.conn).is_err() {
            match self.pool.get() {
                Ok(fresh) => {
                    log::warn!(
                        "{}: the writer's connection was lost; it continues on a new one",
                        self.path.display()
                    );
                    self.conn = fresh;
                    self.forget();
                }
                Err(e) => log::warn!(
                    "{}: the writer's connection was lost and no new one could be had yet: {e}",
                    self.path.display()
                ),
            }
        }
        result
    }

    /// Fences this writer's checkpoints by the claims of `member` (see
    /// [`save_checkpoints`]). Only a PostgreSQL store is shared by several processes.
    #[allow(dead_code)] // compiled for SQLite too, where nothing is shared
    pub(crate) fn fenced_by(mut self, member: String) -> Self {
        self.member = Some(member);
        self
    }

    /// Checkpoints the WAL after a commit when `restart` says so (SQLite).
    #[allow(dead_code)] // compiled for PostgreSQL too, which has no WAL of this kind
    pub(crate) fn restarting_wal(
        mut self,
        restart: std::sync::Arc<crate::storage::pool::WalRestart>,
    ) -> Self {
        self.wal_restart = Some(restart);
        self
    }

    /// The member whose claims fence this writer's checkpoints.
    pub(crate) fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// Appends every unit in one transaction (checkpoints and dead letters are written on the
    /// storage actor's timer, by `save_checkpoints`).
    ///
    /// One outcome per unit, pushed onto `outcomes` (cleared first).
    ///
    /// # Errors
    /// A database error (disk full, lock timeout ...): nothing of this call was stored.
    pub(crate) fn append(
        &mut self,
        units: &[Unit],
        mut outcomes: Vec<UnitOutcome>,
    ) -> Result<Vec<UnitOutcome>, StoreError> {
        outcomes.clear();
        let mut versions = std::mem::take(&mut self.versions);
        let cached_head = self.head;
        let mut indexed = self.indexed;
        // Encoded before the transaction: on a shared store, the append lock is held from
        // its start to its commit.
        // One list for every record of the commit; `first[u]` is where unit `u`'s begin.
        let encoded: Vec<(Option<String>, i64)> = (units.iter())
            .flat_map(|unit| &unit.records)
            .map(|r| (encode_metadata(&r.meta), micros(r.meta.occurred_at)))
            .collect();
        let first: Vec<usize> = (units.iter())
            .scan(0, |at, unit| {
                let here = *at;
                *at += unit.records.len();
                Some(here)
            })
            .collect();
        let result = self.run(Kind::Append, |conn| {
            let (head, mark, appended, pruned_since) = if Conn::SOLE_APPENDER && indexed >= 0 {
                // Nothing but this writer moves the head or the mark.
                (cached_head, indexed, Vec::new(), false)
            } else {
                // One round trip for the head, both marks and the streams another writer
                // appended to since the last commit: on a shared store this runs while the
                // other appenders wait for the lock.
                let since = (indexed >= 0).then_some(cached_head);
                let (marks, appended) = marks_and_streams_since(conn, since)?;
                let pruned_since = marks.pruned_since(cached_head);
                (marks.head, marks.indexed, appended, pruned_since)
            };
            // Whether the tail past `indexed` is no longer this writer's appends alone.
            let restart = indexed < 0 || head != cached_head;
            if indexed < 0 || pruned_since {
                // The first commit, or another writer's events since the last one may have
                // been pruned already: cached versions may be stale. Index the tail first, so
                // every version not cached is in the index.
                versions.clear();
                indexed = index_tail(conn, mark, head)?;
            } else if head != cached_head {
                // Another writer appended (another process on a shared store): the streams
                // it wrote, and their versions, are exactly those of its events since the
                // last commit. The others stay cached (the mark may have moved: its indexing
                // keeps the invariant, since every stream past the new mark is cached too).
                versions.extend(appended);
                indexed = mark;
            }
            // Every stream this commit writes and the cache lacks, in one query rather than
            // one round trip per new stream (on a shared store, under the append lock).
            let missing: Vec<&str> = units
                .iter()
                .flat_map(|u| &u.records)
                .map(|r| r.meta.stream_id.as_str())
                .filter(|s| !versions.contains_key(*s))
                .collect();
            load_versions(conn, &mut versions, missing)?;
            // Versions are updated in the cache as units are stored: if the transaction fails,
            // the writer forgets the whole cache anyway.
            outcomes.reserve(units.len());
            let mut rows: Vec<(usize, usize, i64, i64)> = Vec::new(); // (unit, record, position, version)
            let mut next_position = head;
            // One unit's streams and versions, cleared for each (they keep their allocation).
            let mut local: HashMap<&str, i64> = HashMap::default();
            let mut assigned = Vec::new();
            // The chosen ids this commit stores: a publisher that retried before its first
            // publish was answered has the same id twice in one commit.
            let mut claimed: HashMap<uuid::Uuid, (u64, u64)> = HashMap::default();
            for (u, unit) in units.iter().enumerate() {
                if unit.check_ids {
                    if let Some(existing) = already_stored(conn, &claimed, &unit.records)? {
                        outcomes.push(UnitOutcome::Duplicate(existing));
                        continue;
                    }
                }
                local.clear();
                assigned.clear();
                let mut conflict = None;
                for record in &unit.records {
                    let stream = record.meta.stream_id.as_str();
                    let current = match local.get(stream) {
                        Some(v) => *v,
                        None => indexed_version(conn, &mut versions, stream)?,
                    };
                    if let (Some(expected), true) = (unit.expected_version, assigned.is_empty()) {
                        if current as u64 != expected {
                            conflict = Some(UnitOutcome::Conflict {
                                stream: stream.to_owned(),
                                expected,
                                actual: current as u64,
                            });
                            break;
                        }
                    }
                    local.insert(stream, current + 1);
                    assigned.push(current + 1);
                }
                if let Some(c) = conflict {
                    outcomes.push(c);
                    continue;
                }
                for (stream, version) in local.drain() {
                    match versions.get_mut(stream) {
                        Some(v) => *v = version,
                        None => {
                            versions.insert(stream.to_owned(), version);
                        }
                    }
                }
                let stored = (assigned.iter().enumerate())
                    .map(|(r, &version)| {
                        next_position += 1;
                        rows.push((u, r, next_position, version));
                        (next_position as u64, version as u64)
                    })
                    .collect::<Places>();
                if unit.check_ids {
                    let ids = unit.records.iter().map(|r| r.meta.id);
                    claimed.extend(ids.zip(stored.as_slice().iter().copied()));
                }
                outcomes.push(UnitOutcome::Stored(stored));
            }
            let new_rows: Vec<NewStoredEvent<'_>> = rows
                .iter()
                .map(|&(u, r, position, version)| {
                    let record = &units[u].records[r];
                    let (metadata, recorded_at) = &encoded[first[u] + r];
                    NewStoredEvent {
                        position,
                        event_id: record.meta.id.as_bytes(),
                        stream_id: &record.meta.stream_id,
                        stream_version: version,
                        event_type: &record.meta.event_type,
                        schema_version: record.meta.schema_version as i32,
                        payload: record.encoded.as_deref().unwrap_or("null"),
                        metadata: metadata.as_deref(),
                        recorded_at: *recorded_at,
                    }
                })
                .collect();
            if !new_rows.is_empty() {
                conn.insert_events(&new_rows)?;
            }
            let mut reindexed = false;
            if next_position - indexed > INDEX_TAIL_LIMIT || versions.len() > VERSION_CACHE_LIMIT {
                indexed = index_tail(conn, indexed, next_position)?;
                reindexed = true;
            }
            let rows = if reindexed { Vec::new() } else { rows };
            Ok::<_, diesel::result::Error>((outcomes, next_position, restart || reindexed, rows))
        });
        match result {
            Ok((outcomes, head, restart, rows)) => {
                self.versions = versions;
                self.indexed = indexed;
                self.head = head;
                if restart {
                    self.pending.clear();
                    self.pass = None;
                }
                for (u, r, position, version) in rows {
                    (self.pending).push(&units[u].records[r].meta.stream_id, version, position);
                }
                if restart {
                    // After this commit's streams are pending: they stay cached.
                    self.indexed_tail();
                }
                if let Some(restart) = &self.wal_restart {
                    restart.hold_if_asked();
                    // After the commit, which is answered either way.
                    if restart.due() {
                        if let Err(e) = self.conn.checkpoint_wal() {
                            log::debug!("WAL checkpoint skipped: {e}");
                        }
                    }
                }
                Ok(outcomes)
            }
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// Writes the stream index for the events past `indexed_through`, sorted by stream (a few
    /// pages per stream rather than one random page per event). Called by the storage actor's
    /// timer, so the tail per-stream reads must scan stays short, and again while it answers
    /// that more is left.
    ///
    /// When the tail is this writer's own appends (always on SQLite, where one bus owns the
    /// store), a pass takes them from memory, stream by stream, and writes them in pieces of
    /// [`INDEX_PIECE`], one short transaction each; the mark moves with the last piece. An
    /// entry past the mark is harmless to readers (they also scan the tail past it), and a
    /// pass cut short is written again by [`REINDEX_TAIL_SQL`], over what is there.
    /// Otherwise (another process appended on a shared store) that one statement indexes the
    /// whole tail.
    ///
    /// # Errors
    /// A database error: the tail stays as it was, to be indexed by a later call.
    pub(crate) fn index_tail(&mut self) -> Result<bool, StoreError> {
        if self.head < 0 || self.indexed < 0 {
            return Ok(false);
        }
        if self.pass.is_none() {
            if self.indexed >= self.head {
                return Ok(false);
            }
            if !self.pending.covers(self.indexed, self.head) {
                return self.index_whole_tail().map(|()| false);
            }
            self.pass = Some(Pass {
                streams: self.pending.take(),
                at: (0, 0),
                through: self.head,
            });
        }
        let mut pass = self.pass.take().expect("a pass is under way");
        let (piece, at) = pass.piece(INDEX_PIECE);
        let last = at.0 == pass.streams.len();
        let through = pass.through;
        let result = self.run(Kind::Append, |conn| {
            conn.insert_index(&piece)?;
            if last {
                set_meta_number(conn, INDEXED_THROUGH, through)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.forget();
            return Err(e);
        }
        if last {
            self.indexed = through;
            self.indexed_tail();
            Ok(false)
        } else {
            pass.at = at;
            self.pass = Some(pass);
            Ok(true)
        }
    }

    /// Whether the index is more than [`INDEX_TAIL_BEHIND`] events behind the head.
    pub(crate) fn index_behind(&self) -> bool {
        self.indexed >= 0 && self.head - self.indexed > INDEX_TAIL_BEHIND
    }

    /// Indexes everything from the store's mark to its head in one statement.
    fn index_whole_tail(&mut self) -> Result<(), StoreError> {
        let cached_head = self.head;
        let result = self.run(Kind::Append, |conn| {
            let marks = marks(conn)?;
            if marks.pruned_since(cached_head) {
                // The next append reads everything again.
                return Ok(None);
            }
            let (head, mark) = (marks.head, marks.indexed);
            // Up to the store's head, from the store's mark: another writer on a shared store
            // may have appended, or indexed, since. The cached versions stay valid: the next
            // append brings those of the other writer's streams up to date.
            index_tail(conn, mark, head).map(Some)
        });
        match result {
            Ok(Some(indexed)) => {
                self.indexed = indexed;
                // What was pending is indexed now; the next append starts anew (the store's
                // head may be past this writer's).
                self.pending.clear();
                self.indexed_tail();
                Ok(())
            }
            Ok(None) => {
                self.forget();
                Ok(())
            }
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// After the mark moved: the cache may start over, keeping the streams with events still
    /// past the mark (its invariant).
    fn indexed_tail(&mut self) {
        if self.versions.len() > VERSION_CACHE_LIMIT {
            let pending = &self.pending.streams;
            self.versions
                .retain(|stream, _| pending.contains_key(stream));
        }
    }

    /// Forget what is cached: the next append reads the head and the index mark again.
    fn forget(&mut self) {
        self.head = -1;
        self.indexed = -1;
        self.versions.clear();
        self.pending.clear();
        self.pass = None;
    }

    /// Runs `f` in one write transaction; an `Err` rolls it back.
    ///
    /// # Errors
    /// What `f` returned, or a database error.
    pub(crate) fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> QueryResult<T>,
    ) -> Result<T, StoreError> {
        self.run(Kind::Write, f)
    }

    /// Stores dead-letter changes and checkpoints in one transaction (no events to append).
    ///
    /// # Errors
    /// A database error.
    pub(crate) fn save_checkpoints(
        &mut self,
        rows: &[Progress],
        letters: &[LetterChange],
    ) -> Result<(), StoreError> {
        if rows.is_empty() && letters.is_empty() {
            return Ok(());
        }
        let member = self.member.clone();
        self.run(Kind::Write, |conn| {
            save_checkpoints(conn, rows, member.as_deref())?;
            save_dead_letters(conn, letters, member.as_deref())
        })
    }
}
/// This writer's appends past the index mark, grouped by stream as they come (no sort when
/// a pass starts), with how many there are and the first position, which tell whether they
/// are every event past the mark.
#[derive(Debug, Default)]
struct Pending {
    /// Each stream's (version, position), oldest first.
    streams: HashMap<String, Vec<(i64, i64)>>,
    count: usize,
    first: Option<i64>,
}

impl Pending {
    fn push(&mut self, stream: &str, version: i64, position: i64) {
        self.first.get_or_insert(position);
        self.count += 1;
        match self.streams.get_mut(stream) {
            Some(entries) => entries.push((version, position)),
            None => {
                self.streams
                    .insert(stream.to_owned(), vec![(version, position)]);
            }
        }
    }

    /// Whether these are every event in `(from, head]`: this writer's, nobody else's.
    fn covers(&self, from: i64, head: i64) -> bool {
        let span = head - from;
        span >= 0 && self.count as i64 == span && self.first.is_none_or(|f| f == from + 1)
    }

    /// Everything, by stream; `self` starts over empty.
    fn take(&mut self) -> Vec<(String, Vec<(i64, i64)>)> {
        let streams = self.streams.drain().collect();
        self.clear();
        streams
    }

    fn clear(&mut self) {
        self.count = 0;
        self.first = None;
        self.streams.clear();
    }
}

/// A pass of [`Writer::index_tail`] over the tail, written in pieces, stream after stream
/// (each piece touches the index pages of few streams).
struct Pass {
    streams: Vec<(String, Vec<(i64, i64)>)>,
    /// The next entry to write: (stream, entry of that stream).
    at: (usize, usize),
    /// The position the mark moves to with the last piece.
    through: i64,
}

impl Pass {
    /// Up to `n` entries from `at` on, and where the next piece starts (`streams.len()`
    /// when this is the last).
    fn piece(&self, n: usize) -> (Vec<IndexEntry<'_>>, (usize, usize)) {
        let mut piece = Vec::with_capacity(n);
        let (mut s, mut e) = self.at;
        while let Some((stream, entries)) = self.streams.get(s) {
            let take = (entries.len() - e).min(n - piece.len());
            piece.extend(
                entries[e..e + take]
                    .iter()
                    .map(|&(version, position)| (stream.as_str(), version, position)),
            );
            e += take;
            if e == entries.len() {
                (s, e) = (s + 1, 0);
            }
            if piece.len() == n {
                break;
            }
        }
        (piece, (s, e))
    }
}

/// Which transaction a write runs in (see [`Dialect`]).
#[derive(Clone, Copy)]
enum Kind {
    /// Appends and the stream index: one appender at a time.
    Append,
    /// Everything else.
    Write,
}

/// Runs `f` in a transaction of `kind`. Reports the first error `f` met: when SQLite has
/// already rolled back by itself (a full disk), diesel's own ROLLBACK fails too, and that
/// second error would otherwise hide the cause.
fn in_transaction<T>(
    conn: &mut Conn,
    path: &std::path::Path,
    kind: Kind,
    f: impl FnOnce(&mut Conn) -> QueryResult<T>,
) -> Result<T, StoreError> {
    let mut first = None;
    let body = |c: &mut Conn| match f(c) {
        Err(e) if !matches!(e, diesel::result::Error::RollbackTransaction) => {
            first = Some(e);
            Err(diesel::result::Error::RollbackTransaction)
        }
        r => r,
    };
    let result = match kind {
        Kind::Append => conn.append_transaction(body),
        Kind::Write => conn.write_transaction(body),
    };
    result.map_err(|e| classify(path, first.unwrap_or(e)))
}
/// The stream's version: cached, or else in the index (a stream not cached has no event in
/// the tail, by the writer's invariant).
/// Reads into `cache` the version of each of `streams` (0 for a stream never written), from
/// the stream index: a stream the cache lacks has no event past the index's mark.
fn load_versions(
    conn: &mut Conn,
    cache: &mut HashMap<String, i64>,
    mut wanted: Vec<&str>,
) -> QueryResult<()> {
    /// Streams per query: well under every database's limit on bound parameters.
    const PER_QUERY: usize = 512;
    wanted.sort_unstable();
    wanted.dedup();
    for chunk in wanted.chunks(PER_QUERY) {
        let found: Vec<(String, Option<i64>)> = stream_events::table
            .filter(stream_events::stream_id.eq_any(chunk))
            .group_by(stream_events::stream_id)
            .select((
                stream_events::stream_id,
                diesel::dsl::max(stream_events::stream_version),
            ))
            .load(conn)?;
        for stream in chunk {
            cache.insert((*stream).to_owned(), 0);
        }
        for (stream, version) in found {
            cache.insert(stream, version.unwrap_or(0));
        }
    }
    Ok(())
}

fn indexed_version(
    conn: &mut Conn,
    cache: &mut HashMap<String, i64>,
    stream: &str,
) -> QueryResult<i64> {
    if let Some(v) = cache.get(stream) {
        return Ok(*v);
    }
    let v = stream_events::table
        .filter(stream_events::stream_id.eq(stream))
        .select(diesel::dsl::max(stream_events::stream_version))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0);
    cache.insert(stream.to_owned(), v);
    Ok(v)
}
/// Indexes the events in `(from, to]`, sorted by stream so that each stream's entries go in
/// together, and moves the mark to `to`. Returns `to`.
fn index_tail(conn: &mut Conn, from: i64, to: i64) -> QueryResult<i64> {
    if to <= from {
        return Ok(from);
    }
    statement!(IndexTail = REINDEX_TAIL_SQL);
    Prepared::<IndexTail, 2>::new([from, to]).execute(conn)?;
    set_meta_number(conn, INDEXED_THROUGH, to)?;
    Ok(to)
}

/// (position, version) of every record when all of their ids are stored already, by an
/// earlier commit or (`claimed`) by an earlier unit of this one.
fn already_stored(
    conn: &mut Conn,
    claimed: &HashMap<uuid::Uuid, (u64, u64)>,
    records: &[Record],
) -> QueryResult<Option<Vec<(u64, u64)>>> {
    let mut found = Vec::with_capacity(records.len());
    for record in records {
        if let Some(&place) = claimed.get(&record.meta.id) {
            found.push(place);
            continue;
        }
        let row = events::table
            .filter(events::event_id.eq(record.meta.id.as_bytes().as_slice()))
            .select((events::position, events::stream_version))
            .first::<(i64, i64)>(conn)
            .optional()?;
        match row {
            Some((p, v)) => found.push((p as u64, v as u64)),
            None => return Ok(None),
        }
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of a pass is written once, in pieces of at most `n`, each stream's in
    /// version order, and the last piece says so, whatever the streams' sizes.
    #[test]
    fn a_pass_writes_every_entry_once_in_pieces() {
        for (sizes, n) in [
            (vec![10_000], 1024),
            (vec![3, 1, 4, 1, 5, 9, 2, 6], 4),
            (vec![4, 4, 4], 4),
            (vec![1; 100], 7),
            (vec![5, 2000, 1], 1024),
        ] {
            let mut pending = Pending::default();
            let mut position = 0;
            for round in 0..*sizes.iter().max().unwrap() {
                for (s, &size) in sizes.iter().enumerate() {
                    if round < size {
                        position += 1;
                        pending.push(&format!("s{s}"), round as i64 + 1, position);
                    }
                }
            }
            assert!(pending.covers(0, position));
            assert!(!pending.covers(1, position), "a gap is seen");
            let mut pass = Pass {
                streams: pending.take(),
                at: (0, 0),
                through: position,
            };
            assert!(pending.covers(position, position), "empty afterwards");
            let mut written: HashMap<String, Vec<i64>> = HashMap::default();
            let mut pieces = 0;
            loop {
                let (piece, at) = pass.piece(n);
                assert!(!piece.is_empty() && piece.len() <= n, "{sizes:?}");
                for (stream, version, _) in &piece {
                    written
                        .entry((*stream).to_owned())
                        .or_default()
                        .push(*version);
                }
                pieces += 1;
                pass.at = at;
                if at.0 == pass.streams.len() {
                    break;
                }
            }
            let total: usize = sizes.iter().sum();
            assert_eq!(pieces, total.div_ceil(n), "{sizes:?} in pieces of {n}");
            for (s, &size) in sizes.iter().enumerate() {
                let expected: Vec<i64> = (1..=size as i64).collect();
                assert_eq!(written[&format!("s{s}")], expected);
            }
        }
    }
}
