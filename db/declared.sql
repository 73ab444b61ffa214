-- Named queries of db/declared.py: the declaration file (pgbust.toml) against the database.
-- Parameters use psycopg's %(name)s style.

-- name: missing_columns
-- The declared columns a table lacks; no row at all when the table itself is missing
-- (checked first, with table_exists).
SELECT c.name
FROM unnest(%(columns)s::text[]) WITH ORDINALITY AS c(name, o)
WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = to_regclass(%(relation)s) AND a.attname = c.name
                    AND a.attnum > 0 AND NOT a.attisdropped)
ORDER BY c.o;

-- name: table_exists
SELECT to_regclass(%(relation)s) IS NOT NULL;

-- name: capture_table
SELECT pgbust.capture_table(%(relation)s::regclass, %(key)s::text[], %(depends)s::text[],
                            %(watched)s::text[], max_rows => %(max_rows)s);

-- name: undeclared
-- Tables in pgbust.capture the declaration no longer names (or that no longer exist); exists
-- says whether uncapture_table can still take their triggers off.
SELECT c.relation, to_regclass(c.relation) IS NOT NULL AS exists
FROM pgbust.capture c
WHERE to_regclass(c.relation) IS NULL
   OR to_regclass(c.relation)::oid <> ALL (
          SELECT to_regclass(t)::oid FROM unnest(%(declared)s::text[]) AS t
          WHERE to_regclass(t) IS NOT NULL)
ORDER BY c.relation;

-- name: uncapture
SELECT pgbust.uncapture_table(%(relation)s::regclass, forget => true);

-- name: forget_missing
-- A declared table that was dropped took its triggers with it: only its row is left.
DELETE FROM pgbust.capture WHERE relation = %(relation)s;
