-- Catch-up reads by position (the primary key) and filters by type; an index per type cost
-- every append one more B-tree insert and more pages written per commit.
DROP INDEX IF EXISTS events_by_type;
