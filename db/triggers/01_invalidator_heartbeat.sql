-- pgbust's own table, not a schema of the application's: created by every `python -m db upgrade`
-- whatever the declaration's migrations are (a trigger file, re-run safely).
-- The active invalidator's heartbeat: it upserts its row every PGBUST_HEARTBEAT_S from the
-- connection that holds its advisory lock. A standby that sees the holder silent for longer
-- than PGBUST_TAKEOVER_AFTER_S (a paused or hung process keeps its session, and so its lock)
-- terminates the holder's backends and takes the lock over.
CREATE TABLE IF NOT EXISTS pgbust.invalidator_heartbeat (
    lock_id      bigint PRIMARY KEY,
    namespace    text        NOT NULL,
    pid          integer     NOT NULL,  -- backend pid of the lock connection
    listener_pid integer,               -- backend pid of the LISTEN connection, if connected
    beat_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
