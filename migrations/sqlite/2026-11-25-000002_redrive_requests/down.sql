ALTER TABLE dead_letters DROP COLUMN redrive_requested;
UPDATE store_meta SET value = '1' WHERE key = 'schema_version';
