-- Change capture: which tables are watched (pgbust.capture) and the functions that (re)create
-- their triggers (what they must be: 12_capture_status.sql). Re-applied by every
-- `python -m db upgrade`, so everything here is idempotent, and a re-run that finds every
-- trigger in place changes nothing (no lock taken on the tables, no flush). Which tables are
-- captured is said by the declaration file (pgbust.toml): `python -m db upgrade` and
-- `python -m db triggers install` call capture_table for each declared table (db/declared.py).
--
-- One statement = one notification (or a few chunks), never one per row: each watched table
-- gets STATEMENT-level AFTER INSERT/UPDATE/DELETE triggers with transition tables, plus a
-- TRUNCATE trigger. The payload is compact, versioned JSON sent with pg_notify on COMMIT
-- (payload v2, parsed by invalidator/payload.py):
--
--   {"v":2,"t":"public.orders","op":"U","ts":<µs>,"c":["id","customer_id"],"r":[["1","2"],["1","3"]]}
--   {"v":2,"t":"public.orders","op":"U","ts":<µs>,"p":true,"w":["status"],"c":[...],"r":[["1","2"]]}
--   {"v":2,"t":"public.orders","op":"T","ts":<µs>,"all":true}  (TRUNCATE, or too many rows)
--   {"v":2,"t":"public.orders","op":"S","ts":<µs>,"all":true,"why":"alter table"}  (DDL)
--
-- "t" is the declared table, schema-qualified (also for a change made straight in one of its
-- partitions or inheritance children). "c" names the declared key columns, then the depends
-- columns; "r" holds their DISTINCT values over OLD and NEW rows alike (a order that moved
-- customer appears with both), each as TEXT (`col::text`, JSON null for NULL), so that a
-- uuid, text or composite value arrives exactly as pgbust/templates.py renders it.
-- "p" (UPDATE only, in place): the set of key + depends tuples is the same before and after,
-- so every row kept its identity and its dependencies. With "p", "w" lists the declared
-- watched columns (those a `columns = [...]` rule restricts updates to) that some row changed
-- (OLD and NEW joined on the key, compared with IS DISTINCT FROM on their text); a table with
-- no watched column sends no "w". Without "p" the rows are unpaired OLD/NEW tuples.
-- Above max_rows rows, or when a chunk would not fit in NOTIFY's 8000-byte limit, the trigger
-- sends a table-wide event instead: it never raises. "ts" is clock_timestamp() when the
-- statement's trigger ran. Payload v1 (before pgbust.toml drove NOTIFY capture) had the bare
-- table name and integer values; the invalidator treats it as a table-wide change.
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
-- * pgbust.capture_status (12_capture_status.sql) says, per table, whether all of this is
--   really in place, and why not; the invalidator checks it every PGBUST_CAPTURE_CHECK_S and
--   flushes while it is not.
--
-- pgbust's own functions run with pgbust.internal = on, so the event triggers ignore them.

CREATE TABLE IF NOT EXISTS pgbust.capture (
    relation    text PRIMARY KEY,  -- schema-qualified, e.g. public.orders
    key_columns text[] NOT NULL CHECK (cardinality(key_columns) > 0),
    max_rows    integer NOT NULL DEFAULT 1000 CHECK (max_rows > 0),
    channel     text NOT NULL DEFAULT 'pgbust_changes'
);
-- key_columns: the declared key (before payload v2 it held the key and the depends columns).

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

-- The declared depends and watched columns (payload v2). Added the same way.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'pgbust.capture'::regclass AND attname = 'depends_columns'
                     AND NOT attisdropped) THEN
        ALTER TABLE pgbust.capture ADD COLUMN depends_columns text[] NOT NULL DEFAULT '{}';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'pgbust.capture'::regclass AND attname = 'watched_columns'
                     AND NOT attisdropped) THEN
        ALTER TABLE pgbust.capture ADD COLUMN watched_columns text[] NOT NULL DEFAULT '{}';
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

-- The name payloads carry: schema.table, unquoted, as the declaration file spells it.
CREATE OR REPLACE FUNCTION pgbust.capture_qualified_name(target regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT n.nspname || '.' || c.relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target
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
    tbl := coalesce(pgbust.capture_qualified_name(to_regclass(relation)),
                    (SELECT array_to_string(p, '.') FROM parse_ident(relation) p));
    PERFORM pg_notify(decl.channel,
                      '{"v":2,"t":' || to_json(tbl)::text || ',"op":"S","ts":'
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


-- Declare a table (its key, depends and watched columns, as the declaration file says) and
-- (re)create its triggers, on it and on every partition and inheritance child. Flushes (a
-- table-wide event) when the table was not fully captured before: changes made meanwhile may
-- not have been announced. The signature before payload v2 had no depends/watched columns.
DROP FUNCTION IF EXISTS pgbust.capture_table(regclass, text[], integer, text);

CREATE OR REPLACE FUNCTION pgbust.capture_table(
    target regclass,
    key_columns text[],
    depends_columns text[] DEFAULT '{}',
    watched_columns text[] DEFAULT '{}',
    max_rows integer DEFAULT 1000,
    channel text DEFAULT 'pgbust_changes'
) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    outer_internal text := pgbust.internal_begin();
    rel text;
    qualified text;   -- "t" of the payloads: public.orders
    fn text;
    row_fn text;
    missing text;
    captured_columns text[] := key_columns || coalesce(depends_columns, '{}');
    sel text;         -- "id"::text AS pgbust_k1, "customer_id"::text AS pgbust_k2
    ks text;          -- pgbust_k1, pgbust_k2
    new_vals text;    -- NEW."id"::text, NEW."customer_id"::text
    old_vals text;    -- OLD."id"::text, OLD."customer_id"::text
    header_c text;    -- ,"c":["id","customer_id"],"r":
    watched_sql text := '';   -- the statement trigger's "w" (nothing without watched columns)
    replica_w text := '''''';  -- the row trigger's "w", an SQL expression
    counter text;     -- the replica trigger's per-transaction row counter (a custom setting)
    was_captured boolean;
BEGIN
    SELECT format('%s.%s', quote_ident(n.nspname), quote_ident(c.relname))
    INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    qualified := pgbust.capture_qualified_name(target);

    SELECT string_agg(k, ', ') INTO missing
    FROM unnest(captured_columns || coalesce(watched_columns, '{}')) AS k
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

    INSERT INTO pgbust.capture AS c
        (relation, key_columns, depends_columns, watched_columns, max_rows, channel, active)
    VALUES (rel, capture_table.key_columns, coalesce(capture_table.depends_columns, '{}'),
            coalesce(capture_table.watched_columns, '{}'), capture_table.max_rows,
            capture_table.channel, true)
    ON CONFLICT ON CONSTRAINT capture_pkey DO UPDATE
        SET key_columns = EXCLUDED.key_columns, depends_columns = EXCLUDED.depends_columns,
            watched_columns = EXCLUDED.watched_columns, max_rows = EXCLUDED.max_rows,
            channel = EXCLUDED.channel, active = true;

    fn := pgbust.capture_function_name(target);
    row_fn := pgbust.replica_function_name(target);
    SELECT string_agg(format('%I::text AS pgbust_k%s', k, o), ', ' ORDER BY o),
           string_agg(format('pgbust_k%s', o), ', ' ORDER BY o),
           string_agg(format('NEW.%I::text', k), ', ' ORDER BY o),
           string_agg(format('OLD.%I::text', k), ', ' ORDER BY o)
    INTO sel, ks, new_vals, old_vals
    FROM unnest(captured_columns) WITH ORDINALITY AS u(k, o);
    header_c := ',"c":' || to_json(captured_columns)::text || ',"r":';
    IF cardinality(watched_columns) > 0 THEN
        -- in place: OLD and NEW hold the same keys, so the join pairs every row with itself
        SELECT format('head := head || coalesce((SELECT %s FROM pgbust_old pgbust_o '
                      'JOIN pgbust_new pgbust_n ON %s), '''');',
                      format('%L || to_json(array_remove(ARRAY[%s]::text[], NULL))::text',
                             ',"w":',
                             string_agg(format('CASE WHEN bool_or(pgbust_o.%1$I::text IS '
                                               'DISTINCT FROM pgbust_n.%1$I::text) THEN %1$L END',
                                               w), ', ' ORDER BY o)),
                      (SELECT string_agg(format('pgbust_o.%1$I::text = pgbust_n.%1$I::text', k),
                                         ' AND ')
                       FROM unnest(key_columns) AS k)),
               format('%L || to_json(array_remove(ARRAY[%s]::text[], NULL))::text', ',"w":',
                      string_agg(format('CASE WHEN OLD.%1$I::text IS DISTINCT FROM '
                                        'NEW.%1$I::text THEN %1$L END', w), ', ' ORDER BY o))
        INTO watched_sql, replica_w
        FROM unnest(watched_columns) WITH ORDINALITY AS u(w, o);
    END IF;
    counter := 'pgbust.rows_' || left(md5(rel), 16);

    EXECUTE format($body$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
-- generated by pgbust.capture_table() from the declaration file; do not edit, re-run
-- `python -m db upgrade`. Values are sent as text: identical for any key type.
DECLARE
    head text := '{"v":2,"t":' || %7$L || ',"op":"'
                 || left(TG_OP, 1) || '","ts":'
                 || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    n bigint;       -- rows the statement touched, counted up to max_rows + 1
    keys text;      -- their distinct key + depends tuples as one JSON array
    distinct_keys bigint;  -- UPDATE: distinct tuples of OLD and NEW together
    chunk text;
    room bigint;    -- bytes per chunk part (half of what a notification leaves for rows)
BEGIN
    -- One query in the common case: count (bounded) and the tuples as JSON together.
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(%2$L, head || ',"all":true}');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_new LIMIT %3$s + 1) c),
               json_agg(json_build_array(%6$s))::text
        INTO n, keys
        FROM (SELECT DISTINCT %6$s FROM (SELECT %5$s FROM pgbust_new LIMIT %3$s + 1) l) d;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_new LIMIT %3$s + 1) c),
               json_agg(json_build_array(%6$s))::text, count(*)
        INTO n, keys, distinct_keys
        FROM ((SELECT %5$s FROM pgbust_old LIMIT %3$s + 1)
              UNION (SELECT %5$s FROM pgbust_new LIMIT %3$s + 1)) d;
        -- "p" (in place): the rows' key + depends tuples are the same set before and after,
        -- so whatever lists rows by them lists the same rows (n distinct OLD tuples, and NEW
        -- adds none to them)
        IF n <= %3$s AND distinct_keys = n
           AND (SELECT count(*) FROM (SELECT DISTINCT %5$s FROM pgbust_old) o) = n THEN
            head := head || ',"p":true';
            %8$s
        END IF;
    ELSE
        SELECT (SELECT count(*) FROM (SELECT 1 FROM pgbust_old LIMIT %3$s + 1) c),
               json_agg(json_build_array(%6$s))::text
        INTO n, keys
        FROM (SELECT DISTINCT %6$s FROM (SELECT %5$s FROM pgbust_old LIMIT %3$s + 1) l) d;
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
    -- Too big for one notification: parts of `room` bytes of rows each; a part holds less
    -- than room + its first row, so with every row under room each chunk fits.
    room := greatest(1, (7900 - octet_length(head) - octet_length(%4$L) - 3) / 2);
    FOR chunk IN
        SELECT head || %4$L || '[' || string_agg(p.e, ',' ORDER BY p.o) || ']}'
        FROM (SELECT a.e::text AS e, a.o,
                     sum(octet_length(a.e::text) + 1) OVER (ORDER BY a.o) AS running
              FROM json_array_elements(keys::json) WITH ORDINALITY AS a(e, o)) p
        GROUP BY (p.running - 1) / room
        ORDER BY (p.running - 1) / room
    LOOP
        EXIT WHEN octet_length(chunk) > 7900;
        PERFORM pg_notify(%2$L, chunk);
    END LOOP;
    IF octet_length(chunk) > 7900 THEN
        -- a row too long for a notification: degrade to a table-wide event, never raise
        PERFORM pg_notify(%2$L, head || ',"all":true,"n":' || n || '}');
    END IF;
    RETURN NULL;
END
$fn$;
$body$, fn, channel, max_rows, header_c, sel, ks, to_json(qualified)::text, watched_sql);

    -- Only fires with session_replication_role = replica, where no statement trigger does in
    -- an apply worker; so it must work with an empty search_path and never raise (an error
    -- would stop the apply worker). Every identifier below is pg_catalog's or the row's.
    EXECUTE format($body$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
-- generated by pgbust.capture_table() from the declaration file; do not edit, re-run
-- `python -m db upgrade`
DECLARE
    n integer := coalesce(nullif(current_setting(%4$L, true), ''), '0')::integer + 1;
    head text;
    chunk text;
BEGIN
    PERFORM set_config(%4$L, n::text, true);  -- rows seen in this transaction
    IF n > %3$s + 1 THEN
        RETURN NULL;  -- the table-wide event is already on its way
    END IF;
    head := '{"v":2,"t":' || %8$L || ',"op":"' || left(TG_OP, 1) || '","ts":'
            || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF n > %3$s THEN
        PERFORM pg_notify(%2$L, head || ',"all":true,"n":' || n || '}');
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        chunk := '[' || json_build_array(%6$s)::text || ']';
    ELSIF TG_OP = 'DELETE' THEN
        chunk := '[' || json_build_array(%7$s)::text || ']';
    ELSIF ROW(%7$s) IS NOT DISTINCT FROM ROW(%6$s) THEN
        head := head || ',"p":true' || %9$s;  -- in place, with the watched columns it changed
        chunk := '[' || json_build_array(%6$s)::text || ']';
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
$body$, row_fn, channel, max_rows, counter, header_c, new_vals, old_vals,
        to_json(qualified)::text, replica_w);

    PERFORM pgbust.capture_sync(target, true);
    IF NOT was_captured THEN
        PERFORM pgbust.capture_notify_wide(rel, 'capture installed');
    END IF;
    PERFORM pgbust.internal_end(outer_internal);
END
$$;
