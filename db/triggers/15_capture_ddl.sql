-- DDL that changes a captured table's rows, or what is captured, without firing a row or
-- statement trigger. Three event triggers, all enabled ALWAYS (so they fire in replica-role
-- sessions too) and SECURITY DEFINER (whoever runs the DDL needs no access to pgbust):
--
--   pgbust_capture_ddl      ddl_command_end, ALTER TABLE / CREATE TABLE on a member of a
--                           captured table (or on a table still carrying its triggers):
--                           puts the triggers on new members (CREATE TABLE ... PARTITION OF,
--                           ATTACH PARTITION, INHERIT), takes them off former ones (DETACH,
--                           NO INHERIT), undoes the ENABLE TRIGGER demotion; and for an ALTER
--                           TABLE (a rewrite, an attached or detached partition, triggers
--                           disabled or enabled, a column changed) sends a table-wide event.
--   pgbust_capture_rewrite  table_rewrite of a member (also ALTER TYPE cascading to typed
--                           tables): a table-wide event.
--   pgbust_capture_drop     sql_drop of a capture trigger, alone (DROP TRIGGER) or with its
--                           table (DROP TABLE of a partition or child): a table-wide event.
--
-- NOTIFY is transactional: a DDL command that rolls back announces nothing. Creating event
-- triggers needs a superuser; without one the functions are still created, a WARNING says so,
-- and pgbust.capture_status reports "DDL not captured" (the invalidator's periodic check then
-- sees these changes through the fingerprint in pgbust.capture_status, within
-- PGBUST_CAPTURE_CHECK_S).
-- None of them may ever make a DDL command fail: errors become a WARNING.

-- The active captured tables a relation belongs to (itself, an ancestor), or whose triggers
-- it still carries (a partition just detached).
CREATE OR REPLACE FUNCTION pgbust.capture_roots_of(rel oid) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE up(relid) AS (
        SELECT rel
        UNION
        SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.relid
    )
    SELECT c.relation FROM pgbust.capture c
    WHERE c.active AND to_regclass(c.relation)::oid IN (SELECT relid FROM up)
    UNION
    SELECT c.relation FROM pgbust.capture c
    JOIN pg_trigger t ON t.tgrelid = rel
    WHERE c.active AND to_regclass(c.relation) IS NOT NULL
      AND t.tgfoid IN (
          to_regprocedure(pgbust.capture_function_name(to_regclass(c.relation)) || '()'),
          to_regprocedure(pgbust.replica_function_name(to_regclass(c.relation)) || '()'))
$$;

CREATE OR REPLACE FUNCTION pgbust.capture_on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('pgbust.internal', true) = 'on' THEN
        RETURN;  -- pgbust's own capture_table / capture_sync / uncapture_table
    END IF;
    FOR r IN
        SELECT DISTINCT roots.relation
        FROM pg_event_trigger_ddl_commands() cmd
        CROSS JOIN LATERAL pgbust.capture_roots_of(cmd.objid) AS roots(relation)
        WHERE cmd.classid = 'pg_class'::regclass AND cmd.objsubid = 0
    LOOP
        PERFORM pgbust.capture_sync(to_regclass(r.relation), false);
        -- CREATE TABLE makes an empty member: nothing to flush
        IF tg_tag <> 'CREATE TABLE' THEN
            PERFORM pgbust.capture_notify_wide(r.relation, lower(tg_tag));
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgbust: could not handle % for change capture (%: %); the invalidator''s '
                  'periodic check still sees what changed', tg_tag, SQLSTATE, SQLERRM;
END
$$;

CREATE OR REPLACE FUNCTION pgbust.capture_on_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('pgbust.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pgbust.capture_notify_wide(roots.relation, 'table rewrite (' || lower(tg_tag) || ')')
    FROM pgbust.capture_roots_of(pg_event_trigger_table_rewrite_oid()) AS roots(relation);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgbust: could not announce a table rewrite (%: %)', SQLSTATE, SQLERRM;
END
$$;

CREATE OR REPLACE FUNCTION pgbust.capture_on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    rel regclass;
    roots text[] := '{}';
BEGIN
    IF current_setting('pgbust.internal', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT DISTINCT d.address_names[1] AS nsp, d.address_names[2] AS tbl
        FROM pg_event_trigger_dropped_objects() d
        WHERE d.object_type = 'trigger' AND d.address_names[3] LIKE 'pgbust\_capture\_%'
    LOOP
        rel := to_regclass(format('%I.%I', r.nsp, r.tbl));
        IF rel IS NOT NULL THEN
            -- only the trigger went: its table's captured ancestors
            roots := roots || ARRAY(SELECT pgbust.capture_roots_of(rel));
        ELSE
            -- the table went with it, and with it the catalogue rows that said whose partition
            -- or child it was: announce every captured table (too wide, never stale)
            roots := roots || ARRAY(SELECT c.relation FROM pgbust.capture c WHERE c.active);
        END IF;
    END LOOP;
    PERFORM pgbust.capture_notify_wide(x.relation, lower(tg_tag))
    FROM (SELECT DISTINCT unnest(roots) AS relation) x;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgbust: could not announce % for change capture (%: %)', tg_tag, SQLSTATE,
                  SQLERRM;
END
$$;

-- Create (or fix) the event triggers when we can; otherwise say so, once per upgrade.
DO $$
DECLARE
    e record;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE WARNING 'pgbust: % is not a superuser, so the DDL event triggers cannot be '
                      'created: %', current_user, pgbust.capture_ddl_problem();
        RETURN;
    END IF;
    FOR e IN
        SELECT w.*, t.oid AS evtoid,
               t.oid IS NOT NULL AND t.evtevent = w.event
               AND t.evtfoid = to_regprocedure(w.fn || '()')
               AND t.evttags IS NOT DISTINCT FROM w.tags AS right_one
        FROM (VALUES ('pgbust_capture_ddl'::name, 'ddl_command_end'::name,
                      'pgbust.capture_on_ddl', ARRAY['ALTER TABLE', 'CREATE TABLE']),
                     ('pgbust_capture_drop', 'sql_drop', 'pgbust.capture_on_drop', NULL),
                     ('pgbust_capture_rewrite', 'table_rewrite', 'pgbust.capture_on_rewrite', NULL))
             AS w(name, event, fn, tags)
        LEFT JOIN pg_event_trigger t ON t.evtname = w.name
    LOOP
        IF e.evtoid IS NOT NULL AND NOT e.right_one THEN
            EXECUTE format('DROP EVENT TRIGGER %I', e.name);
        END IF;
        IF e.evtoid IS NULL OR NOT e.right_one THEN
            EXECUTE format('CREATE EVENT TRIGGER %I ON %I %s EXECUTE FUNCTION %s()', e.name,
                           e.event,
                           CASE WHEN e.tags IS NULL THEN ''
                                ELSE format('WHEN TAG IN (%s)',
                                            (SELECT string_agg(quote_literal(x), ', ')
                                             FROM unnest(e.tags) x)) END,
                           e.fn);
        END IF;
        IF (SELECT evtenabled FROM pg_event_trigger WHERE evtname = e.name) <> 'A' THEN
            EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.name);
        END IF;
    END LOOP;
END
$$;
