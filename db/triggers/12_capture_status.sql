-- What a captured table consists of and what is really in place: its members (partitions,
-- inheritance children), the five triggers each must carry and how they must be enabled, and
-- pgbust.capture_status, which `python -m db triggers status` prints and the invalidator
-- checks every PGBUST_CAPTURE_CHECK_S. Re-applied by every `python -m db upgrade`.

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
-- The first five columns are the view's original ones; new ones go at the end (CREATE OR
-- REPLACE VIEW can only add columns there).
CREATE OR REPLACE VIEW pgbust.capture_status AS
SELECT c.relation, c.key_columns, c.max_rows, c.channel, r.triggers, c.active, r.members,
       cardinality(r.problems) = 0 AS captured, r.problems, d.ddl_problem, r.fingerprint,
       c.depends_columns, c.watched_columns
FROM pgbust.capture c
CROSS JOIN LATERAL pgbust.capture_report(c.relation) r
CROSS JOIN (SELECT pgbust.capture_ddl_problem() AS ddl_problem) d
ORDER BY c.relation;
