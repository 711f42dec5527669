-- Every append tells the other processes on the store its new head (channel
-- `actorbus_appended`, payload the newest position), from inside the statement that
-- inserted the events: no round trip of its own while the append lock is held.
-- NOTIFY is delivered at commit, and not at all if the transaction rolls back.
CREATE FUNCTION actorbus_appended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest BIGINT;
BEGIN
    SELECT max(position) INTO newest FROM appended;
    IF newest IS NOT NULL THEN
        PERFORM pg_notify('actorbus_appended', newest::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER actorbus_appended AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION actorbus_appended();
