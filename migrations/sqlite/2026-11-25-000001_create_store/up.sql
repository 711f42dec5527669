-- The event log: one row per event, in commit order.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY NOT NULL,  -- global, monotonic, assigned by the single writer
    event_id       BLOB    NOT NULL UNIQUE,       -- UUIDv7, 16 bytes: idempotent publish
    stream_id      TEXT    NOT NULL,
    stream_version BIGINT  NOT NULL,              -- 1-based within the stream
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,              -- JSON
    metadata       TEXT,                          -- JSON {correlation_id, causation_id, headers}; NULL when empty
    recorded_at    BIGINT  NOT NULL,              -- Unix microseconds
    UNIQUE (stream_id, stream_version)            -- optimistic concurrency
);
CREATE INDEX events_by_type ON events (event_type, position);

-- How far each handler actor (subscription x partition) got.
CREATE TABLE checkpoints (
    handler    TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    partitions INTEGER NOT NULL,                  -- the concurrency the partition index refers to
    position   BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (handler, partition)
);

-- Events a handler gave up on.
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY NOT NULL,
    position   BIGINT  NOT NULL,
    handler    TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    failed_at  BIGINT  NOT NULL
);
CREATE INDEX dead_letters_by_handler ON dead_letters (handler, position);

-- Key/value facts about the store itself, e.g. its schema version.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('schema_version', '1');
