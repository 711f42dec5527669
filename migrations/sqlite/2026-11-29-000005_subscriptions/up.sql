-- The subscriptions that ran on this store: what they are and the layout they last ran with.
-- A bus registers each of its subscriptions at start; the operator commands read it (a
-- projection is replayed by rebuilding its read model, never by applying events twice).
CREATE TABLE subscriptions (
    name              TEXT    PRIMARY KEY NOT NULL,
    kind              TEXT    NOT NULL,            -- 'handler' or 'projection'
    event_types       TEXT    NOT NULL,            -- comma-separated
    partitions        INTEGER NOT NULL,            -- the concurrency it last ran with
    resettable        INTEGER NOT NULL DEFAULT 0,  -- a projection whose read model can be reset
    rebuild_requested INTEGER NOT NULL DEFAULT 0,  -- reset and replay it at the next start
    updated_at        BIGINT  NOT NULL
);

-- Checkpoints are kept per layout: when a subscription's concurrency changes, the rows of
-- the earlier concurrency stay beside the new ones until the new ones have passed them.
CREATE TABLE checkpoints_new (
    handler    TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    partitions INTEGER NOT NULL,                  -- the concurrency the partition index refers to
    position   BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (handler, partitions, partition)
);
INSERT INTO checkpoints_new SELECT handler, partition, partitions, position, updated_at FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_new RENAME TO checkpoints;

-- One dead letter per (handler, event): a letter that fails again is updated, not repeated.
DELETE FROM dead_letters WHERE id NOT IN (
    SELECT min(id) FROM dead_letters GROUP BY handler, position);
DROP INDEX IF EXISTS dead_letters_by_handler;
CREATE UNIQUE INDEX dead_letters_once ON dead_letters (handler, position);

UPDATE store_meta SET value = '4' WHERE key = 'schema_version';
