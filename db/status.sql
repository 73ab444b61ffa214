-- What `python -m pgbust status` reads from Postgres. Named queries ("-- name: <name>"
-- blocks, db/queries.py's parser); every one is a plain SELECT: the command connects with
-- default_transaction_read_only = on and never writes.

-- name: leaders
-- The namespace's heartbeat rows (db/migrations/0003) and who holds each one's advisory lock
-- now (the same lock expression as invalidator/leader.py): the active invalidator, how long
-- since its last beat, and whether its LISTEN connection is there.
SELECT h.lock_id, l.pid AS holder_pid, h.pid AS beat_pid,
       extract(epoch FROM clock_timestamp() - h.beat_at)::float8 AS beat_age_s,
       h.listener_pid,
       EXISTS (SELECT 1 FROM pg_stat_activity x WHERE x.pid = h.listener_pid) AS listener_connected,
       coalesce(host(a.client_addr), 'local') AS holder_addr
FROM pgbust.invalidator_heartbeat h
LEFT JOIN pg_locks l
       ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = h.lock_id
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE h.namespace = %(namespace)s
ORDER BY l.pid IS NULL, h.beat_at DESC;

-- name: standbys
-- Invalidator lock connections of this database that hold no advisory lock: standbys. The
-- lock connection does not say its namespace, so standbys of every namespace of this
-- database are counted. The application name is invalidator/leader.py's APPLICATION_NAME.
SELECT a.pid, coalesce(host(a.client_addr), 'local') AS addr
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name = 'pgbust-invalidator-lock'
  AND NOT EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)
ORDER BY a.pid;

-- name: has_heartbeat_table
SELECT to_regclass('pgbust.invalidator_heartbeat') IS NOT NULL;
