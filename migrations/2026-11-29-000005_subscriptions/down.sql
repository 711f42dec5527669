DROP TABLE subscriptions;
DROP INDEX IF EXISTS dead_letters_once;
CREATE INDEX dead_letters_by_handler ON dead_letters (handler, position);
UPDATE store_meta SET value = '3' WHERE key = 'schema_version';
