"""Prometheus metrics of the invalidator (one registry per daemon, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pgbust.gc_pauses import GC_PAUSE_BUCKETS

# Commit -> Redis delete lag, in seconds; fine buckets around the 5 ms target.
LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "pgbust_invalidator_"
        self.events = Counter(p + "events", "Change events received", ["table"], registry=r)
        self.batches = Counter(p + "batches", "Batches applied to Redis", registry=r)
        self.batch_events = Histogram(
            p + "batch_events",
            "Events per batch",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.keys_deleted = Counter(p + "keys_deleted", "Entries deleted from Redis", registry=r)
        self.tags_invalidated = Counter(
            p + "tags_invalidated", "Tags whose generation was bumped", registry=r
        )
        self.malformed = Counter(
            p + "malformed_payloads", "Payloads that could not be read in full", ["reason"],
            registry=r,
        )  # fmt: skip
        self.errors = Counter(p + "errors", "Errors by kind", ["kind"], registry=r)
        self.epoch_bumps = Counter(
            p + "epoch_bumps", "Namespace epoch bumps (flush everything)", ["why"], registry=r
        )
        self.flush_causes = Counter(
            p + "flush_causes",
            "Causes of applied flushes, each cause merged into a flush counted once",
            ["why"],
            registry=r,
        )
        self.reconnects = Counter(
            p + "reconnects", "Reconnections by server", ["server"], registry=r
        )
        self.enqueued = Counter(
            p + "enqueued_tasks", "Tasks handed to the Celery workers", ["task"], registry=r
        )
        self.lag = Histogram(
            p + "lag_seconds",
            "Trigger time (clock_timestamp() in the writer's statement) -> Redis delete done",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            p + "gc_pause_seconds",
            "Garbage-collector pauses of this process (its event loop ran nothing meanwhile)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=r,
        )
        self.gc_frozen = Gauge(
            p + "gc_frozen_objects",
            "Start-up objects excluded from garbage collections (PGBUST_GC_FREEZE)",
            registry=r,
        )
        self.active = Gauge(p + "active", "1 when this instance is the active one", registry=r)
        self.redis_memory_policy = Gauge(
            p + "redis_memory_policy",
            "1 for the maxmemory-policy Redis reported at start, with pgbust's verdict"
            " (recommended, safe, unbounded, unknown)",
            ["policy", "verdict"],
            registry=r,
        )
        self.pending_events = Gauge(
            p + "pending_events",
            "Events of a batch Redis has not applied yet (unreachable, or refusing)",
            registry=r,
        )
        self.capture_ok = Gauge(
            p + "capture_ok",
            "1 when every committed change of the declared table is captured (capture_status)",
            ["table"],
            registry=r,
        )
        self.capture_ddl_ok = Gauge(
            p + "capture_ddl_ok",
            "1 when the DDL event triggers are in place (rewrites, partition changes)",
            registry=r,
        )
        # WAL capture (PGBUST_CAPTURE=wal)
        self.wal_slot_lag_bytes = Gauge(
            p + "wal_slot_lag_bytes",
            "WAL the slot holds back: current WAL position - confirmed_flush_lsn",
            registry=r,
        )
        self.wal_safe_wal_size_bytes = Gauge(
            p + "wal_safe_wal_size_bytes",
            "WAL that can still be written before the slot is invalidated (-1: unlimited)",
            registry=r,
        )
        self.wal_lag_seconds = Gauge(
            p + "wal_lag_seconds",
            "Age of the oldest commit received from the slot and not yet confirmed (0: none)",
            registry=r,
        )
        self.wal_transactions = Counter(
            p + "wal_transactions", "Committed transactions received from the slot", registry=r
        )
        self.capture_live = Gauge(
            p + "capture_live",
            "1 while capture is proven alive end to end and heartbeats are published",
            registry=r,
        )
        self.heartbeats = Counter(
            p + "heartbeats", "Heartbeats published (liveness key + channel message)", registry=r
        )
        self.silences = Counter(
            p + "silences",
            "Channels found silent past their deadline (listen, lock, redis)",
            ["channel"],
            registry=r,
        )
        self.give_ups = Counter(
            p + "give_ups",
            "Times the active instance gave its leadership up (cut off from a server)",
            ["why"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
