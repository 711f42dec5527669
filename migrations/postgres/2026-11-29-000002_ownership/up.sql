-- Several processes on one database: who is alive, and who owns each handler actor's work.

-- One row per running bus (a process may run more than one): its heartbeat is its lease.
CREATE TABLE bus_members (
    id           TEXT   PRIMARY KEY,   -- a UUID the bus picks at start
    label        TEXT   NOT NULL,      -- host and process id, for operators
    started_at   BIGINT NOT NULL,      -- Unix microseconds
    heartbeat_at BIGINT NOT NULL,      -- Unix microseconds
    lease_us     BIGINT NOT NULL       -- no heartbeat for this long: dead, its claims free
);

-- The owner of each (subscription, layout, partition). `token` grows at every claim: a write
-- for the partition (checkpoint, projection) commits only if its owner and token still hold,
-- checked in the same transaction, so a process that stalled and lost it is fenced off.
CREATE TABLE partition_owners (
    handler    TEXT    NOT NULL,
    partitions INTEGER NOT NULL,
    partition  INTEGER NOT NULL,
    member     TEXT,                   -- NULL: free
    token      BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (handler, partitions, partition)
);
