DROP TABLE subscriptions;
DROP TABLE store_meta;
DROP TABLE dead_letters;
DROP TABLE checkpoints;
DROP TABLE stream_events;
DROP TABLE events;
