"""Prometheus metrics of the workers, served by the worker's main process.

With PGBUST_WORKER_METRICS_PORT > 0, `celery -A worker worker` serves /metrics on that port.
Tasks run in pool processes, so their figures are kept in Redis (worker/stats.py) and read at
scrape time: every worker of a namespace reports the same totals, surviving restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import redis
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pgbust import redis_policy
from pgbust.keys import Keyspace
from worker.stats import audit_key, stats_key

log = logging.getLogger(__name__)

AUDIT_GAUGES = {
    "ratio": ("pgbust_worker_audit_inconsistency_ratio", "stale / checked in the last audit"),
    "checked": ("pgbust_worker_audit_checked", "live entries compared in the last audit"),
    "stale": ("pgbust_worker_audit_stale", "stale entries found (and deleted) in the last audit"),
    "at": ("pgbust_worker_audit_last_run_timestamp_seconds", "end of the last audit"),
}

REDIS_GAUGES = {
    "used_memory": ("pgbust_worker_redis_used_memory_bytes", "memory Redis uses (INFO memory)"),
    "maxmemory": ("pgbust_worker_redis_maxmemory_bytes", "Redis' maxmemory (0: no limit)"),
}


class RedisStatsCollector(Collector):
    def __init__(self, redis_url: str, keyspace: Keyspace) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.keyspace = keyspace

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pgbust_worker_stats_up", "1 when Redis answered this scrape")
        try:
            counters = self.client.hgetall(stats_key(self.keyspace))
            raw_audit = self.client.get(audit_key(self.keyspace))
        except redis.RedisError as exc:
            log.warning("metrics: cannot read worker stats from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._memory()
        for name, value in sorted(counters.items()):
            metric = name.decode() if isinstance(name, bytes) else str(name)
            counter = CounterMetricFamily(f"pgbust_worker_{metric}", f"worker total: {metric}")
            counter.add_metric([], float(value))
            yield counter
        audit: dict[str, Any] = orjson.loads(raw_audit) if raw_audit else {}
        for field, (metric, help_text) in AUDIT_GAUGES.items():
            if field in audit:
                gauge = GaugeMetricFamily(metric, help_text)
                gauge.add_metric([], float(audit[field]))
                yield gauge

    def _memory(self) -> Iterator[Metric]:
        """The policy verdict, memory in use and its bound, and evictions: what the dashboard's
        Redis panels and the eviction and policy alerts read (INFO, no CONFIG GET)."""
        policy = GaugeMetricFamily(
            "pgbust_worker_redis_memory_policy",
            "1 for the maxmemory-policy Redis reports, with pgbust's verdict"
            " (recommended, safe, unbounded, unknown)",
            labels=["policy", "verdict"],
        )
        try:
            server, memory_info, stats = (
                self.client.info("server"),
                self.client.info("memory"),
                self.client.info("stats"),
            )
        except redis.RedisError:
            policy.add_metric(["unknown", "unknown"], 1)
            yield policy
            return
        memory = redis_policy.from_info(server, memory_info)
        policy.add_metric([memory.policy, memory.verdict], 1)
        yield policy
        for field, (metric, help_text) in REDIS_GAUGES.items():
            if field in memory_info:
                yield GaugeMetricFamily(metric, help_text, value=float(memory_info[field]))
        if "evicted_keys" in stats:
            yield CounterMetricFamily(
                "pgbust_worker_redis_evicted_keys",
                "keys Redis evicted under maxmemory (INFO stats evicted_keys), all namespaces",
                value=float(stats["evicted_keys"]),
            )


def serve(port: int, redis_url: str, keyspace: Keyspace) -> None:
    registry = CollectorRegistry()
    registry.register(RedisStatsCollector(redis_url, keyspace))
    start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 (a server)
    log.info("worker metrics on :%d/metrics", port)
