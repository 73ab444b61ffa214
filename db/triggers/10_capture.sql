-- Change capture: which tables are watched (pgbust.capture), the functions that (re)create
-- their triggers, and what is really in place (pgbust.capture_status). Re-applied by every
-- `python -m db upgrade`, so everything here is idempotent, and a re-run that finds every
-- trigger in place changes nothing (no lock taken on the tables, no flush).
--
-- One statement = one notification (or a few chunks), never one per row: each watched table
-- gets STATEMENT-level AFTER INSERT/UPDATE/DELETE triggers with transition tables, plus a
-- TRUNCATE trigger. The payload is compact, versioned JSON sent with pg_notify on COMMIT:
--
--   {"v":1,"t":"products","op":"U","ts":<µs>,"c":["id","category_id"],"r":[[1,2],[1,3]]}
--   {"v":1,"t":"products","op":"T","ts":<µs>,"all":true}           (TRUNCATE, or too many rows)
--
-- "r" holds the DISTINCT key columns of OLD and NEW rows alike (a product that moved category
-- appears with both). Above max_rows rows, or when a chunk would not fit in NOTIFY's 8000-byte
-- limit, the trigger sends a table-wide event instead: it never raises. "ts" is
-- clock_timestamp() when the statement's trigger ran. "t" is the captured table's name, also
-- for a change made straight in one of its partitions or inheritance children.
--
-- What else makes sure no committed change goes unannounced (invariant 10):
-- * Members: the triggers are on the table AND on every partition and inheritance child, at
--   any depth. A statement trigger fires only for the table a statement names, so a write
--   straight into a partition or a child is announced by that member's own triggers.
-- * session_replication_role = replica (logical replication apply workers, many ETL tools):
--   ordinary (ENABLE ORIGIN) triggers do not fire then, and an apply worker fires ROW triggers
--   only, never statement triggers. So every member also has one ROW trigger,
--   pgbust_capture_replica, enabled REPLICA: it fires only in that mode (nothing on the normal
--   path) and sends one notification per row, up to max_rows per table and transaction, then
--   one table-wide event. The TRUNCATE trigger is enabled ALWAYS (an apply worker fires it).
-- * DDL (15_capture_ddl.sql): event triggers flush on a rewrite, a partition attached,
--   detached or dropped, re-enabled triggers, and put the triggers on new partitions.
-- * pgbust.capture_status says, per table, whether all of this is really in place, and why
--   not; the invalidator checks it every PGBUST_CAPTURE_CHECK_S and flushes while it is not.
--
-- pgbust's own functions run with pgbust.internal = on, so the event triggers ignore them.

CREATE TABLE IF NOT EXISTS pgbust.capture (
    relation    text PRIMARY KEY,  -- schema-qualified, e.g. public.products
    key_columns text[] NOT NULL CHECK (cardinality(key_columns) > 0),
    max_rows    integer NOT NULL DEFAULT 1000 CHECK (max_rows > 0),
    channel     text NOT NULL DEFAULT 'pgbust_changes'
);

-- false after `python -m db triggers remove`: still declared, deliberately not captured (and
-- reported so); `install` sets it back. Added without ALTER TABLE when it is already there.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'pgbust.capture'::regclass AND attname = 'active'
                     AND NOT attisdropped) THEN
        ALTER TABLE pgbust.capture ADD COLUMN active boolean NOT NULL DEFAULT true;
    END IF;
END
$$;

-- pgbust's own DDL (capture_table, capture_sync, uncapture_table) runs with the custom setting
-- pgbust.internal = on, which the event triggers of 15_capture_ddl.sql ignore. Set and
-- restored at run time (a function's SET clause on a custom setting needs a superuser); an
-- error rolls it back with the (sub)transaction.
CREATE OR REPLACE FUNCTION pgbust.internal_begin() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    outer_value text := coalesce(current_setting('pgbust.internal', true), '');
BEGIN
    PERFORM set_config('pgbust.internal', 'on', true);
    RETURN outer_value;
END
$$;

CREATE OR REPLACE FUNCTION pgbust.internal_end(outer_value text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT set_config('pgbust.internal', outer_value, true)
$$;

CREATE OR REPLACE FUNCTION pgbust.capture_function_name(target regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('pgbust.%I', left('capture_' || CASE WHEN n.nspname = 'public' THEN ''
                                                       ELSE n.nspname || '_' END || c.relname, 63))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target
$$;

-- The ROW trigger's function: another prefix, so no table's name can make the two collide.
CREATE OR REPLACE FUNCTION pgbust.replica_function_name(target regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('pgbust.%I', left('replica_' || CASE WHEN n.nspname = 'public' THEN ''
                                                       ELSE n.nspname || '_' END || c.relname, 63))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target
$$;

-- The captured table and everything whose rows it shows: partitions and inheritance children,
-- at any depth (depth 0 = the table itself; parents before their children).
CREATE OR REPLACE FUNCTION pgbust.capture_members(root regclass)
RETURNS TABLE (member regclass, relkind "char", depth integer)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE m(relid, depth) AS (
        SELECT root::oid, 0
        UNION ALL
        SELECT i.inhrelid, m.depth + 1 FROM pg_catalog.pg_inherits i JOIN m ON i.inhparent = m.relid
    )
    SELECT m.relid::regclass, c.relkind, max(m.depth)::integer
    FROM m JOIN pg_catalog.pg_class c ON c.oid = m.relid
    GROUP BY m.relid, c.relkind
    ORDER BY 3, 1
$$;

-- The five triggers every member carries: how each is defined and how it must be enabled.
-- ok_states: the tgenabled values that fire when they must (O = origin and local sessions,
-- R = replica sessions only, A = always); enable sets the first. definition: %1$s = the
-- trigger, %2$s = the member, %3$s / %4$s = the statement / row function.
CREATE OR REPLACE FUNCTION pgbust.capture_trigger_specs()
RETURNS TABLE (name name, short text, tgtype smallint, old_table name, new_table name,
               row_level boolean, ok_states "char"[], enable text, definition text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES
    ('pgbust_capture_insert'::name, 'insert', 4::smallint, NULL::name, 'pgbust_new'::name, false,
     '{O,A}'::"char"[], 'ENABLE',
     'AFTER INSERT ON %2$s REFERENCING NEW TABLE AS pgbust_new'
     ' FOR EACH STATEMENT EXECUTE FUNCTION %3$s()'),
    ('pgbust_capture_update', 'update', 16, 'pgbust_old', 'pgbust_new', false, '{O,A}', 'ENABLE',
     'AFTER UPDATE ON %2$s REFERENCING OLD TABLE AS pgbust_old NEW TABLE AS pgbust_new'
     ' FOR EACH STATEMENT EXECUTE FUNCTION %3$s()'),
    ('pgbust_capture_delete', 'delete', 8, 'pgbust_old', NULL, false, '{O,A}', 'ENABLE',
     'AFTER DELETE ON %2$s REFERENCING OLD TABLE AS pgbust_old'
     ' FOR EACH STATEMENT EXECUTE FUNCTION %3$s()'),
    ('pgbust_capture_truncate', 'truncate', 32, NULL, NULL, false, '{A}', 'ENABLE ALWAYS',
     'AFTER TRUNCATE ON %2$s FOR EACH STATEMENT EXECUTE FUNCTION %3$s()'),
    ('pgbust_capture_replica', 'replica', 29, NULL, NULL, true, '{R,A}', 'ENABLE REPLICA',
     'AFTER INSERT OR UPDATE OR DELETE ON %2$s FOR EACH ROW EXECUTE FUNCTION %4$s()')
$$;

-- Every expected trigger of every member of a captured table, as it really is.
CREATE OR REPLACE FUNCTION pgbust.capture_triggers(root regclass)
RETURNS TABLE (member regclass, relkind "char", depth integer, name name, short text,
               ok_states "char"[], tgoid oid, tgenabled "char", tgxmin text, clone boolean,
               well_defined boolean)
LANGUAGE sql STABLE AS $$
    WITH fn AS MATERIALIZED (  -- looked up once, not once per trigger
        SELECT to_regprocedure(pgbust.capture_function_name(root) || '()') AS statement_fn,
               to_regprocedure(pgbust.replica_function_name(root) || '()') AS row_fn
    )
    SELECT m.member, m.relkind, m.depth, s.name, s.short, s.ok_states, t.oid, t.tgenabled,
           t.xmin::text, t.tgparentid <> 0,
           t.oid IS NOT NULL
           AND t.tgfoid = CASE WHEN s.row_level THEN fn.row_fn ELSE fn.statement_fn END
           AND t.tgtype = s.tgtype
           AND t.tgoldtable IS NOT DISTINCT FROM s.old_table
           AND t.tgnewtable IS NOT DISTINCT FROM s.new_table
           AND t.tgqual IS NULL AND t.tgnargs = 0 AND cardinality(t.tgattr::int2[]) = 0
    FROM pgbust.capture_members(root) m
    CROSS JOIN fn
    CROSS JOIN pgbust.capture_trigger_specs() s
    LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = m.member AND t.tgname = s.name
$$;

-- One pass over a declared table's members and triggers (what capture_status shows):
-- problems = why it is not captured, one line per member that lacks something (empty when
-- every committed change of the table is announced); fingerprint = changes whenever a member
-- is added, removed or rewritten (relfilenode: ALTER ... TYPE ... USING, VACUUM FULL,
-- CLUSTER, TRUNCATE) or a capture trigger is re-created, disabled or re-enabled (the
-- pg_trigger row's xmin). The invalidator flushes when the fingerprint changes: it sees,
-- within one check, what the event triggers announce at once.
CREATE OR REPLACE FUNCTION pgbust.capture_report(relation text)
RETURNS TABLE (members integer, triggers integer, problems text[], fingerprint text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH t AS (
        SELECT x.*, x.relkind IN ('r', 'p') AND x.well_defined AND x.tgenabled = ANY (x.ok_states)
                    AS ok
        FROM pgbust.capture_triggers(to_regclass(relation)) x
    ), per_member AS (
        SELECT t.member, t.depth, bool_and(t.ok) AS ok, count(*) FILTER (WHERE t.ok) AS ok_triggers,
               format('%s: %s', t.member,
                      CASE WHEN t.relkind NOT IN ('r', 'p')
                           THEN 'a foreign table: changes made on its server are never seen'
                           ELSE string_agg(
                               t.short || ' trigger ' ||
                               CASE WHEN t.tgoid IS NULL THEN 'missing'
                                    WHEN NOT t.well_defined THEN 'not pgbust''s definition'
                                    WHEN t.tgenabled = 'D'
                                        THEN 'disabled (ALTER TABLE ... DISABLE TRIGGER)'
                                    WHEN t.tgenabled = 'R'
                                        THEN 'fires only for replica-role writes (ENABLE REPLICA TRIGGER)'
                                    ELSE 'fires for origin writes only (ENABLE TRIGGER, e.g. after '
                                         'pg_restore --disable-triggers): replica-role writes '
                                         '(logical replication, session_replication_role = replica) '
                                         'are missed'
                               END, '; ' ORDER BY t.name) FILTER (WHERE NOT t.ok)
                      END) AS line,
               string_agg(format('%s:%s:%s', t.name, t.tgxmin, t.tgenabled), ',' ORDER BY t.name)
                   AS triggers_seen
        FROM t
        GROUP BY t.member, t.depth, t.relkind
    )
    SELECT count(*)::integer,
           coalesce(sum(m.ok_triggers), 0)::integer,
           CASE WHEN to_regclass(relation) IS NULL
                THEN ARRAY[format('%s: no such table (renamed or dropped?)', relation)]
                ELSE '{}'::text[] END
           || coalesce((SELECT ARRAY['capture removed (`python -m db triggers remove`); '
                                     '`python -m db triggers install` brings it back']
                        FROM pgbust.capture c
                        WHERE c.relation = capture_report.relation AND NOT c.active), '{}')
           || coalesce(array_agg(m.line ORDER BY m.depth, m.member::text) FILTER (WHERE NOT m.ok),
                       '{}'),
           md5(string_agg(format('%s:%s:%s', m.member::oid, c.relfilenode, m.triggers_seen), ','
                          ORDER BY m.member::oid))
    FROM per_member m JOIN pg_class c ON c.oid = m.member
$$;

CREATE OR REPLACE FUNCTION pgbust.capture_problems(relation text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT r.problems FROM pgbust.capture_report(relation) r
$$;

-- The table-wide event pgbust sends when rows may have changed without a row trigger (a DDL
-- command, a capture (re)installed): the invalidator flushes. op "S" = schema.
CREATE OR REPLACE FUNCTION pgbust.capture_notify_wide(relation text, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    decl pgbust.capture;
    tbl text;
BEGIN
    SELECT * INTO decl FROM pgbust.capture c WHERE c.relation = capture_notify_wide.relation;
    IF decl.relation IS NULL THEN
        RETURN;
    END IF;
    tbl := coalesce((SELECT c.relname::text FROM pg_class c WHERE c.oid = to_regclass(relation)),
                     (SELECT p[cardinality(p)] FROM parse_ident(relation) p));
    PERFORM pg_notify(decl.channel,
                      '{"v":1,"t":' || to_json(tbl)::text || ',"op":"S","ts":'
                      || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                      || ',"all":true,"why":' || to_json(left(why, 200))::text || '}');
END
$$;

-- Put the five triggers on every member of a captured table and take them off tables that are
-- no longer members (a detached partition). repair = what `install` does: also re-create a
-- trigger whose definition is not pgbust's and re-enable disabled ones. Otherwise (the event
-- triggers) only what cannot be deliberate: triggers missing on a member (a new partition)
-- and the ENABLE TRIGGER demotion (ENABLE TRIGGER ALL, as after pg_restore --disable-triggers,
-- makes ALWAYS and REPLICA triggers plain ORIGIN ones); a DISABLE or ENABLE REPLICA stays, and
-- capture_status reports it. Returns the number of changes.
CREATE OR REPLACE FUNCTION pgbust.capture_sync(root regclass, repair boolean)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn text := pgbust.capture_function_name(root);
    row_fn text := pgbust.replica_function_name(root);
    t record;
    s record;
    changes integer := 0;
    outer_internal text := pgbust.internal_begin();
BEGIN
    -- parents first: a row trigger created on a partitioned table is cloned onto its partitions
    FOR t IN SELECT * FROM pgbust.capture_triggers(root) ORDER BY depth, member::oid, name LOOP
        CONTINUE WHEN t.relkind NOT IN ('r', 'p');
        SELECT * INTO s FROM pgbust.capture_trigger_specs() sp WHERE sp.name = t.name;
        IF t.tgoid IS NOT NULL AND NOT t.well_defined AND repair AND NOT t.clone THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t.name, t.member);
            t.tgoid := NULL;
        END IF;
        IF t.tgoid IS NULL
           AND NOT EXISTS (SELECT 1 FROM pg_trigger tg  -- cloned meanwhile from its parent?
                           WHERE tg.tgrelid = t.member AND tg.tgname = t.name) THEN
            EXECUTE format('CREATE TRIGGER %1$I ' || s.definition, t.name, t.member, fn, row_fn);
            changes := changes + 1;
        END IF;
        SELECT tg.tgenabled INTO t.tgenabled FROM pg_trigger tg
        WHERE tg.tgrelid = t.member AND tg.tgname = t.name;
        IF NOT t.tgenabled = ANY (s.ok_states) AND (repair OR t.tgenabled = 'O') THEN
            EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.member, s.enable, t.name);
            changes := changes + 1;
        END IF;
    END LOOP;
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel, tg.tgname
        FROM pg_trigger tg
        WHERE tg.tgfoid IN (to_regprocedure(fn || '()'), to_regprocedure(row_fn || '()'))
          AND tg.tgparentid = 0
          AND tg.tgrelid NOT IN (SELECT m.member FROM pgbust.capture_members(root) m)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
        changes := changes + 1;
    END LOOP;
    PERFORM pgbust.internal_end(outer_internal);
    RETURN changes;
END
$$;

-- Remove the capture triggers of one table (and of all its members); forget = also drop its
-- declaration, else it stays declared but inactive (reported as not captured).
CREATE OR REPLACE FUNCTION pgbust.uncapture_table(target regclass, forget boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel text;
    fn text := pgbust.capture_function_name(target);
    row_fn text := pgbust.replica_function_name(target);
    t record;
    outer_internal text := pgbust.internal_begin();
BEGIN
    SELECT format('%s.%s', quote_ident(n.nspname), quote_ident(c.relname)) INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    -- clones go with the trigger they were cloned from
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel, tg.tgname
        FROM pg_trigger tg
        WHERE tg.tgparentid = 0
          AND (tg.tgfoid IN (to_regprocedure(fn || '()'), to_regprocedure(row_fn || '()'))
               OR (tg.tgname IN (SELECT s.name FROM pgbust.capture_trigger_specs() s)
                   AND tg.tgrelid IN (SELECT m.member FROM pgbust.capture_members(target) m)))
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.rel);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', fn);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', row_fn);
    IF forget THEN
        DELETE FROM pgbust.capture c WHERE c.relation = rel;
    ELSE
        UPDATE pgbust.capture c SET active = false WHERE c.relation = rel;
    END IF;
    PERFORM pgbust.internal_end(outer_internal);
END
$$;

-- Declare a table (which columns its cache keys depend on) and (re)create its triggers, on it
-- and on every partition and inheritance child. Flushes (a table-wide event) when the table was
-- not fully captured before: changes made meanwhile may not have been announced.
CREATE OR REPLACE FUNCTION pgbust.capture_table(
    target regclass,
    key_columns text[],
    max_rows integer DEFAULT 1000,
    channel text DEFAULT 'pgbust_changes'
) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outer_internal text := pgbust.internal_begin();
    rel text;
    name text;
    fn text;
    row_fn text;
    missing text;
    cols text;        -- "id", "category_id"
    new_cols text;    -- NEW."id", NEW."category_id"
    old_cols text;    -- OLD."id", OLD."category_id"
    header_c text;    -- ,"c":["id","category_id"],"r":
    chunk_rows integer;
    counter text;     -- the replica trigger's per-transaction row counter (a custom setting)
    was_captured boolean;
BEGIN
    SELECT format('%s.%s', quote_ident(n.nspname), quote_ident(c.relname)), c.relname
    INTO rel, name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;

    SELECT string_agg(k, ', ') INTO missing FROM unnest(key_columns) AS k
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = target AND a.attname = k
                        AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pgbust.capture_table(%): no such column(s): %', rel, missing;
    END IF;

    was_captured := EXISTS (SELECT 1 FROM pgbust.capture c
                            WHERE c.relation = rel AND c.active
                              AND c.channel = capture_table.channel)
                    AND cardinality(pgbust.capture_problems(rel)) = 0;

    INSERT INTO pgbust.capture AS c (relation, key_columns, max_rows, channel, active)
    VALUES (rel, capture_table.key_columns, capture_table.max_rows, capture_table.channel, true)
    ON CONFLICT ON CONSTRAINT capture_pkey DO UPDATE
        SET key_columns = EXCLUDED.key_columns, max_rows = EXCLUDED.max_rows,
            channel = EXCLUDED.channel, active = true;

    fn := pgbust.capture_function_name(target);
    row_fn := pgbust.replica_function_name(target);
    SELECT string_agg(format('%I', k), ', ' ORDER BY o),
           string_agg(format('NEW.%I', k), ', ' ORDER BY o),
           string_agg(format('OLD.%I', k), ', ' ORDER BY o)
    INTO cols, new_cols, old_cols
    FROM unnest(key_columns) WITH ORDINALITY AS u(k, o);
    header_c := ',"c":' || to_json(key_columns)::text || ',"r":';
    -- Rows per notification so that even 20-digit values in every column stay under 8000 bytes.
    chunk_rows := greatest(1, 7700 / (cardinality(key_columns) * 22 + 3));
    counter := 'pgbust.rows_' || left(md5(rel), 16);

    EXECUTE format($body$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql AS $fn$
-- generated by pgbust.capture_table(); do not edit, re-run `python -m db upgrade`
DECLARE
    head text := '{"v":1,"t":' || %7$L || ',"op":"'
                 || left(TG_OP, 1) || '","ts":'
                 || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    n bigint;       -- rows the statement touched, counted up to max_rows + 1
    keys text;      -- their distinct key columns as one JSON array
    chunk text;
BEGIN
    -- One query in the common case: count (bounded) and the keys as JSON together.
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(%2$L, head || ',"all":true}');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_new LIMIT %3$s + 1) c),
               json_agg(json_build_array(%5$s))::text
        INTO n, keys
        FROM (SELECT DISTINCT %5$s FROM (SELECT %5$s FROM pgbust_new LIMIT %3$s + 1) l) d;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_new LIMIT %3$s + 1) c),
               json_agg(json_build_array(%5$s))::text
        INTO n, keys
        FROM ((SELECT %5$s FROM pgbust_old LIMIT %3$s + 1)
              UNION (SELECT %5$s FROM pgbust_new LIMIT %3$s + 1)) d;
    ELSE
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_old LIMIT %3$s + 1) c),
               json_agg(json_build_array(%5$s))::text
        INTO n, keys
        FROM (SELECT DISTINCT %5$s FROM (SELECT %5$s FROM pgbust_old LIMIT %3$s + 1) l) d;
    END IF;
    IF n = 0 THEN
        RETURN NULL;  -- a statement that touched no row changes nothing
    ELSIF n > %3$s THEN
        PERFORM pg_notify(%2$L, head || ',"all":true,"n":' || n || '}');
        RETURN NULL;
    END IF;
    chunk := head || %4$L || keys || '}';
    IF octet_length(chunk) <= 7900 THEN
        PERFORM pg_notify(%2$L, chunk);
        RETURN NULL;
    END IF;
    -- Too big for one notification: split the keys into chunks of %6$s rows.
    FOR chunk IN
        SELECT head || %4$L || json_agg(e)::text || '}'
        FROM (SELECT e, (o - 1) / %6$s AS part
              FROM json_array_elements(keys::json) WITH ORDINALITY AS a(e, o)) p
        GROUP BY part
    LOOP
        EXIT WHEN octet_length(chunk) > 7900;
        PERFORM pg_notify(%2$L, chunk);
    END LOOP;
    IF octet_length(chunk) > 7900 THEN
        -- keys too long for a notification: degrade to a table-wide event, never raise
        PERFORM pg_notify(%2$L, head || ',"all":true,"n":' || n || '}');
    END IF;
    RETURN NULL;
END
$fn$;
$body$, fn, channel, max_rows, header_c, cols, chunk_rows, to_json(name)::text);

    -- Only fires with session_replication_role = replica, where no statement trigger does in
    -- an apply worker; so it must work with an empty search_path and never raise (an error
    -- would stop the apply worker). Every identifier below is pg_catalog's or the row's.
    EXECUTE format($body$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql AS $fn$
-- generated by pgbust.capture_table(); do not edit, re-run `python -m db upgrade`
DECLARE
    n integer := coalesce(nullif(current_setting(%4$L, true), ''), '0')::integer + 1;
    head text;
    chunk text;
BEGIN
    PERFORM set_config(%4$L, n::text, true);  -- rows seen in this transaction
    IF n > %3$s + 1 THEN
        RETURN NULL;  -- the table-wide event is already on its way
    END IF;
    head := '{"v":1,"t":' || %8$L || ',"op":"' || left(TG_OP, 1) || '","ts":'
            || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF n > %3$s THEN
        PERFORM pg_notify(%2$L, head || ',"all":true,"n":' || n || '}');
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        chunk := '[' || json_build_array(%6$s)::text || ']';
    ELSIF TG_OP = 'DELETE' OR ROW(%7$s) IS NOT DISTINCT FROM ROW(%6$s) THEN
        chunk := '[' || json_build_array(%7$s)::text || ']';
    ELSE
        chunk := '[' || json_build_array(%7$s)::text || ',' || json_build_array(%6$s)::text || ']';
    END IF;
    chunk := head || %5$L || chunk || '}';
    IF octet_length(chunk) > 7900 THEN
        chunk := head || ',"all":true,"n":1}';
    END IF;
    PERFORM pg_notify(%2$L, chunk);
    RETURN NULL;
END
$fn$;
$body$, row_fn, channel, max_rows, counter, header_c, new_cols, old_cols, to_json(name)::text);

    PERFORM pgbust.capture_sync(target, true);
    IF NOT was_captured THEN
        PERFORM pgbust.capture_notify_wide(rel, 'capture installed');
    END IF;
    PERFORM pgbust.internal_end(outer_internal);
END
$$;

-- The DDL event triggers of 15_capture_ddl.sql: NULL when all three are in place and fire in
-- every session (ENABLE ALWAYS), else what is wrong. Creating them needs a superuser.
CREATE OR REPLACE FUNCTION pgbust.capture_ddl_problem() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'DDL not captured: event trigger ' || string_agg(
               format('%s %s', w.name, CASE WHEN e.oid IS NULL THEN 'missing'
                                            WHEN e.evtenabled = 'D' THEN 'disabled'
                                            WHEN e.evtfoid <> to_regprocedure(w.fn || '()')
                                                 OR e.evtevent <> w.event THEN 'not pgbust''s'
                                            ELSE 'not enabled ALWAYS' END), ', ' ORDER BY w.name)
           || ' (creating event triggers needs a superuser: run `python -m db upgrade` as one);'
              ' until then table rewrites (ALTER ... TYPE ... USING), partitions created,'
              ' attached, detached or dropped and re-enabled triggers are seen only by the'
              ' invalidator''s periodic check (PGBUST_CAPTURE_CHECK_S)'
    FROM (VALUES ('pgbust_capture_ddl'::name, 'ddl_command_end'::name, 'pgbust.capture_on_ddl'),
                 ('pgbust_capture_drop', 'sql_drop', 'pgbust.capture_on_drop'),
                 ('pgbust_capture_rewrite', 'table_rewrite', 'pgbust.capture_on_rewrite'))
         AS w(name, event, fn)
    LEFT JOIN pg_catalog.pg_event_trigger e ON e.evtname = w.name
    WHERE e.oid IS NULL OR e.evtenabled <> 'A' OR e.evtevent <> w.event
          OR e.evtfoid IS DISTINCT FROM to_regprocedure(w.fn || '()')
$$;

-- Every declared table and whether every committed change of it is announced: captured, and
-- if not, why (problems); ddl_problem when the DDL event triggers are not in place (then only
-- the invalidator's periodic check, through fingerprint, sees rewrites and partition changes).
-- The first five columns are the view's original ones.
CREATE OR REPLACE VIEW pgbust.capture_status AS
SELECT c.relation, c.key_columns, c.max_rows, c.channel, r.triggers, c.active, r.members,
       cardinality(r.problems) = 0 AS captured, r.problems, d.ddl_problem, r.fingerprint
FROM pgbust.capture c
CROSS JOIN LATERAL pgbust.capture_report(c.relation) r
CROSS JOIN (SELECT pgbust.capture_ddl_problem() AS ddl_problem) d
ORDER BY c.relation;
