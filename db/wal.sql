-- WAL capture (PGBUST_CAPTURE=wal): the publication, the replica identity of its tables and
-- the logical replication slot. Named queries, loaded by db/wal.py ("-- name: <name>" blocks,
-- psycopg's %(name)s parameters). `install` is re-run by every `python -m db upgrade`.

-- name: install
-- Make `publication` publish exactly `tables` (and, through publish_via_partition_root, every
-- partition of them as its root), and give each table and each of its partitions REPLICA
-- IDENTITY FULL: UPDATE and DELETE then carry the whole old row, so a row that moved to
-- another dependency (category) names the old one too, and which columns an UPDATE changed is
-- known. Returns the tables whose identity had to be changed.
-- A table and, when it is partitioned, every partition under it (pg_partition_tree lists
-- nothing for a table that is not partitioned).
CREATE OR REPLACE FUNCTION pgbust.wal_tree(target regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    SELECT target
    UNION
    SELECT relid FROM pg_partition_tree(target)
$$;

CREATE OR REPLACE FUNCTION pgbust.wal_publish(publication name, tables text[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    missing text;
    targets text;
    part regclass;
    changed text[] := ARRAY[]::text[];
BEGIN
    IF cardinality(tables) IS NULL OR cardinality(tables) = 0 THEN
        RAISE EXCEPTION 'pgbust.wal_publish(%): the declaration names no table', publication;
    END IF;
    SELECT string_agg(t, ', ') INTO missing FROM unnest(tables) t WHERE to_regclass(t) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pgbust.wal_publish(%): no such table(s): %', publication, missing;
    END IF;
    SELECT string_agg(DISTINCT to_regclass(t)::text, ', ') INTO targets FROM unnest(tables) t;
    IF EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = publication) THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', publication, targets);
        EXECUTE format('ALTER PUBLICATION %I SET (publish = %L, publish_via_partition_root = true)',
                       publication, 'insert, update, delete, truncate');
    ELSE
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s'
                       ' WITH (publish = %L, publish_via_partition_root = true)',
                       publication, targets, 'insert, update, delete, truncate');
    END IF;
    FOR part IN
        SELECT c.oid FROM pg_class c
        WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
          AND c.oid IN (SELECT pgbust.wal_tree(to_regclass(t)) FROM unnest(tables) t)
    LOOP
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
        changed := changed || part::text;
    END LOOP;
    RETURN changed;
END
$$;

CREATE OR REPLACE FUNCTION pgbust.wal_unpublish(publication name) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = publication) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP PUBLICATION %I', publication);
    RETURN true;
END
$$;

-- name: publish
SELECT pgbust.wal_publish(%(publication)s, %(tables)s::text[]);

-- name: drop_publication
SELECT pgbust.wal_unpublish(%(publication)s);

-- name: publication_exists
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s);

-- name: published_tables
SELECT format('%%I.%%I', schemaname, tablename) FROM pg_publication_tables
WHERE pubname = %(publication)s ORDER BY 1;

-- name: create_slot
-- Waits for transactions running now to end (the slot starts from a consistent snapshot).
SELECT lsn::text FROM pg_create_logical_replication_slot(%(slot)s, 'pgoutput');

-- name: drop_slot
-- An active slot cannot be dropped: end its walsender first (the daemon reconnects and finds
-- the slot gone).
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND active_pid IS NOT NULL;

-- name: end_stale_walsender
-- The consumer's own previous walsender, still holding the slot after its connection went
-- silent (the server only notices after wal_sender_timeout): end it so streaming can resume.
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
WHERE slot_name = %(slot)s AND active_pid = %(pid)s;

-- name: drop_slot_now
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE slot_name = %(slot)s;

-- name: slot
-- The slot and how far behind it is: bytes of WAL it holds back from the current position,
-- wal_status (reserved, extended, unreserved, lost) and safe_wal_size (bytes that can still be
-- written before it would be invalidated; NULL when max_slot_wal_keep_size is unlimited).
SELECT s.slot_name::text, s.plugin::text, s.database::text, s.active, s.active_pid,
       s.confirmed_flush_lsn::text,
       (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint AS lag_bytes,
       s.wal_status, s.safe_wal_size::bigint
FROM pg_replication_slots s
WHERE s.slot_name = %(slot)s;

-- name: settings
SELECT current_setting('wal_level') AS wal_level,
       current_setting('max_slot_wal_keep_size') AS max_slot_wal_keep_size,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
           AS max_slot_wal_keep_size_mb,
       current_setting('wal_sender_timeout') AS wal_sender_timeout;

-- name: replica_identities
-- Published tables (and partitions) whose replica identity is not FULL: their UPDATEs would
-- not carry the old row (re-run `python -m db upgrade` after attaching a partition).
SELECT c.oid::regclass::text, c.relreplident::text
FROM pg_class c
WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
  AND c.oid IN (SELECT pgbust.wal_tree(to_regclass(t)) FROM unnest(%(tables)s::text[]) t)
ORDER BY 1;

-- name: current_snapshot
-- Which transactions a reader starting now would see (invalidator/visibility.py): a commit is
-- in the WAL before it is visible, and its invalidation waits for the latter.
SELECT pg_current_snapshot()::text;
