-- An operator may ask, while no bus runs, for dead letters to be handed back to their
-- handler: the next bus to start delivers them first.
ALTER TABLE dead_letters ADD COLUMN redrive_requested INTEGER NOT NULL DEFAULT 0;
UPDATE store_meta SET value = '2' WHERE key = 'schema_version';
