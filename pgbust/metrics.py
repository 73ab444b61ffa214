"""Prometheus metrics of one API process, in a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pgbust.gc_pauses import GC_PAUSE_BUCKETS
from pgbust.l1 import L1Cache

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


# commit -> L1 eviction: finer where the 5 ms target of invariant 2 sits
LAG_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class _L1Collector(Collector):
    """Reads the pure L1's own counters at scrape time (no work on the read path)."""

    def __init__(self, l1: L1Cache) -> None:
        self.l1 = l1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.l1.stats
        yield GaugeMetricFamily("pgbust_api_l1_entries", "Entries in L1", value=len(self.l1))
        yield GaugeMetricFamily("pgbust_api_l1_bytes", "Bytes in L1", value=self.l1.size_bytes)
        yield GaugeMetricFamily(
            "pgbust_api_l1_enabled", "1 while L1 may serve reads", value=int(self.l1.enabled)
        )
        evictions = CounterMetricFamily(
            "pgbust_api_l1_evictions", "L1 entries dropped", labels=["reason"]
        )
        evictions.add_metric(["capacity"], stats.evicted_capacity)
        evictions.add_metric(["invalidation"], stats.evicted_invalidation)
        evictions.add_metric(["expired"], stats.evicted_expired)
        yield evictions
        yield CounterMetricFamily("pgbust_api_l1_flushes", "Whole-L1 flushes", value=stats.flushes)


class Metrics:
    def __init__(self, l1: L1Cache) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hits = Counter("pgbust_api_cache_hits", "Cache hits", ["tier"], registry=r)
        self.misses = Counter("pgbust_api_cache_misses", "Cache misses", ["tier"], registry=r)
        self.db_loads = Counter(
            "pgbust_api_db_loads", "Entries loaded from Postgres by the read path", registry=r
        )
        # read replicas (PGBUST_READ_DATABASE_URL, pgbust/replica.py)
        self.loads_by_server = Counter(
            "pgbust_api_db_loads_by_server",
            "Entries loaded by the read path, by the server that answered (replica, primary)",
            ["server"],
            registry=r,
        )
        self.replica_fallbacks = Counter(
            "pgbust_api_replica_fallbacks",
            "Leased loads sent to the primary instead of the replica: behind (not yet replayed"
            " up to the LSN marker), no_marker (marker missing: evicted, Redis flushed, or no"
            " invalidator keeps it), not_replaying (not a standby), replica_error",
            ["reason"],
            registry=r,
        )
        self.fills = Counter("pgbust_api_fills", "Fills stored", ["tier"], registry=r)
        self.fills_refused = Counter(
            "pgbust_api_fills_refused",
            "Fills refused: by the guard (lease_lost, invalidated) or by Redis (redis_full,"
            " redis_refused: the read was served from Postgres without caching)",
            ["tier", "reason"],
            registry=r,
        )
        self.single_flight_joins = Counter(
            "pgbust_api_single_flight_joins",
            "Reads that joined an in-flight load of the same entry",
            registry=r,
        )
        self.busy_waits = Counter(
            "pgbust_api_busy_waits",
            "Reads that waited for another instance's lease",
            ["outcome"],
            registry=r,
        )
        self.redis_errors = Counter(
            "pgbust_api_redis_errors", "Redis calls that failed", ["op"], registry=r
        )
        self.invalidations_sent = Counter(
            "pgbust_api_invalidations_sent", "Write-path invalidations", ["result"], registry=r
        )
        self.messages = Counter(
            "pgbust_api_invalidation_messages",
            "Invalidation messages received",
            ["kind"],
            registry=r,
        )
        self.invalidation_lag = Histogram(
            "pgbust_api_invalidation_lag_seconds",
            "Change time (ts in the message) to L1 eviction",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.subscriber_reconnects = Counter(
            "pgbust_api_subscriber_reconnects",
            "Times the subscriber subscribed again after losing its connection",
            registry=r,
        )
        self.subscriber_connected = Gauge(
            "pgbust_api_subscriber_connected", "1 while subscribed", registry=r
        )
        self.redis_memory_policy = Gauge(
            "pgbust_api_redis_memory_policy",
            "1 for the maxmemory-policy Redis reported at start, with pgbust's verdict"
            " (recommended, safe, unbounded, unknown)",
            ["policy", "verdict"],
            registry=r,
        )
        self.subscriber_silences = Counter(
            "pgbust_api_subscriber_silences",
            "Silences past PGBUST_SUBSCRIBER_SILENCE_S: of the connection itself (torn down and "
            "resubscribed) or of the invalidator's heartbeat (L1 bypassed until it resumes)",
            ["what"],
            registry=r,
        )
        self.capture_live = Gauge(
            "pgbust_api_capture_live",
            "1 while the active invalidator's heartbeats arrive (L1 serves only then)",
            registry=r,
        )
        self.l2_bypassed = Counter(
            "pgbust_api_l2_bypassed",
            "Reads that Redis did not serve and fills it did not take, by reason",
            ["reason"],
            registry=r,
        )
        self.request_latency = Histogram(
            "pgbust_api_request_seconds",
            "Request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            "pgbust_api_gc_pause_seconds",
            "Garbage-collector pauses of this process (its event loop ran nothing meanwhile)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=r,
        )
        self.gc_frozen = Gauge(
            "pgbust_api_gc_frozen_objects",
            "Start-up objects excluded from garbage collections (PGBUST_GC_FREEZE)",
            registry=r,
        )
        r.register(_L1Collector(l1))
