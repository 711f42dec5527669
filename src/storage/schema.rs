// @generated automatically by Diesel CLI.

diesel::table! {
    checkpoints (handler, partitions, partition) {
        handler -> Text,
        partition -> Integer,
        partitions -> Integer,
        position -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> BigInt,
        position -> BigInt,
        handler -> Text,
        attempts -> Integer,
        last_error -> Text,
        failed_at -> BigInt,
        redrive_requested -> Integer,
    }
}

diesel::table! {
    events (position) {
        position -> BigInt,
        event_id -> Binary,
        stream_id -> Text,
        stream_version -> BigInt,
        event_type -> Text,
        schema_version -> Integer,
        payload -> Text,
        metadata -> Nullable<Text>,
        recorded_at -> BigInt,
    }
}

diesel::table! {
    store_meta (key) {
        key -> Text,
        value -> Text,
    }
}

diesel::table! {
    subscriptions (name) {
        name -> Text,
        kind -> Text,
        event_types -> Text,
        partitions -> Integer,
        resettable -> Integer,
        rebuild_requested -> Integer,
        updated_at -> BigInt,
    }
}

diesel::table! {
    stream_events (stream_id, stream_version) {
        stream_id -> Text,
        stream_version -> BigInt,
        position -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    checkpoints,
    dead_letters,
    events,
    store_meta,
    stream_events,
    subscriptions,
);
