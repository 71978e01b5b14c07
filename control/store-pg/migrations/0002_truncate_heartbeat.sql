-- Two holes in 0001's notifications (0001 stays as databases applied it):
--
-- * TRUNCATE fires no row trigger, so nodes kept the rows it removed. A statement-level
--   trigger now announces op 'TRUNCATE' for the table, which the controller answers by
--   reloading every node (StoreEvent::Resync).
-- * PostgreSQL delivers identical payloads sent on one channel within one transaction once, so
--   an update X -> Y, Y -> X, X -> Y in one transaction lost its last change. Every payload now
--   carries a number from linerate_notify_seq, which makes it unique.
--
-- The store's heartbeat (`{"heartbeat": true}`) goes on the same channel but is sent by the
-- store itself, not by a trigger.

CREATE SEQUENCE linerate_notify_seq;
-- The trigger runs as whoever writes the row: a role allowed to edit the tables but not to use
-- the sequence would otherwise have every write refused. Drawing numbers from it reveals and
-- changes nothing else.
GRANT USAGE ON SEQUENCE linerate_notify_seq TO PUBLIC;

CREATE OR REPLACE FUNCTION linerate_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload json;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        payload := json_build_object(
            'table', TG_TABLE_NAME,
            'op', TG_OP,
            'new', NULL,
            'old', NULL,
            -- The writer's search_path need not name this schema: qualify the sequence.
            'seq', nextval(format('%I.linerate_notify_seq', TG_TABLE_SCHEMA)::regclass)
        );
    ELSE
        -- An update that changed nothing has nothing to announce.
        IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
            RETURN NULL;
        END IF;
        payload := json_build_object(
            'table', TG_TABLE_NAME,
            'op', TG_OP,
            'new', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE row_to_json(NEW) END,
            'old', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE row_to_json(OLD) END,
            'seq', nextval(format('%I.linerate_notify_seq', TG_TABLE_SCHEMA)::regclass)
        );
    END IF;
    PERFORM pg_notify(
        CASE WHEN TG_TABLE_SCHEMA = 'public' THEN 'linerate_changes'
             ELSE 'linerate_changes_' || TG_TABLE_SCHEMA END,
        payload::text
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER routes_truncate AFTER TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER flows_truncate AFTER TRUNCATE ON flows
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER port_settings_truncate AFTER TRUNCATE ON port_settings
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();
