DROP TABLE store_meta;
DROP TABLE dead_letters;
DROP TABLE checkpoints;
DROP TABLE events;
