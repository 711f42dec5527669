-- Per-stream lookups move from a UNIQUE (stream_id, stream_version) index on events, which
-- cost every append one random index page (4 KiB of WAL per event when streams interleave),
-- to stream_events: written by the single writer in bulk, sorted by stream, for every event
-- up to store_meta.indexed_through. Events past that mark (the tail, at most a moment's worth)
-- are found by scanning the tail, which the primary key bounds.

-- SQLite cannot drop a table constraint: rebuild events without it, keeping every position.
CREATE TABLE events_new (
    position       INTEGER PRIMARY KEY NOT NULL,  -- global, monotonic, assigned by the single writer
    event_id       BLOB    NOT NULL UNIQUE,       -- UUIDv7, 16 bytes: idempotent publish
    stream_id      TEXT    NOT NULL,
    stream_version BIGINT  NOT NULL,              -- 1-based within the stream; unique per stream
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,              -- JSON
    metadata       TEXT,                          -- JSON {correlation_id, causation_id, headers}; NULL when empty
    recorded_at    BIGINT  NOT NULL               -- Unix microseconds
);
INSERT INTO events_new (position, event_id, stream_id, stream_version, event_type,
                        schema_version, payload, metadata, recorded_at)
    SELECT position, event_id, stream_id, stream_version, event_type,
           schema_version, payload, metadata, recorded_at
    FROM events ORDER BY position;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

-- (stream, version) -> position for every event up to indexed_through. Retention deletes the
-- entries of the events it deletes, except each stream's newest: the stream's version
-- outlives its events, so a pruned stream never starts again at version 1.
CREATE TABLE stream_events (
    stream_id      TEXT   NOT NULL,
    stream_version BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
) WITHOUT ROWID;
INSERT INTO stream_events (stream_id, stream_version, position)
    SELECT stream_id, stream_version, position FROM events ORDER BY stream_id, stream_version;
INSERT INTO store_meta (key, value)
    SELECT 'indexed_through', CAST(coalesce(max(position), 0) AS TEXT) FROM events;

UPDATE store_meta SET value = '3' WHERE key = 'schema_version';
