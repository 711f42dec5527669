DROP TRIGGER actorbus_appended ON events;
DROP FUNCTION actorbus_appended();
