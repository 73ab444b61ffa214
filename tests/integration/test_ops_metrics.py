"""Every metric the dashboard and the alert rules name is exported by pgbust's own code: the
API's and the invalidator's registries, and the worker's collector reading a real Redis."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import redis

from invalidator.metrics import Metrics as InvalidatorMetrics
from pgbust.keys import Keyspace
from pgbust.l1 import L1Cache
from pgbust.metrics import Metrics as ApiMetrics
from tests.support.ops_files import (
    DASHBOARD_JSON,
    PROMETHEUS_OWN,
    alert_rules,
    dashboard_exprs,
    exposed_names,
    metric_names,
)
from tests.support.servers import RedisServer
from worker.metrics import RedisStatsCollector
from worker.stats import audit_key


@pytest.fixture
def exported(redis_server: RedisServer, keyspace: Keyspace, redis_client: redis.Redis) -> set[str]:
    # the audit gauges exist once an audit has run: record one as the audit job does
    report = {"ratio": 0.0, "checked": 10, "stale": 0, "at": 1.0, "sampled": 10}
    redis_client.set(audit_key(keyspace), orjson.dumps(report))
    api = ApiMetrics(L1Cache(max_entries=10, max_bytes=10_000))
    worker = RedisStatsCollector(redis_server.url, keyspace)
    return exposed_names(api.registry, InvalidatorMetrics().registry, worker) | PROMETHEUS_OWN


def _named() -> list[tuple[str, str, str]]:
    """(where, expression, metric name) for every name of every rule and panel query."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    found = [
        (f"alert {rule['alert']}", rule["expr"], name)
        for rule in alert_rules()
        for name in metric_names(rule["expr"])
    ]
    found += [
        (f"panel {title}", expr, name)
        for title, expr in dashboard_exprs(dashboard)
        for name in metric_names(expr)
    ]
    return found


def test_every_metric_of_the_dashboard_and_the_alerts_is_exported(exported: set[str]) -> None:
    named = _named()
    assert len({name for _, _, name in named}) >= 25  # the parser did find the names
    missing = [f"{where}: {name} ({expr})" for where, expr, name in named if name not in exported]
    assert not missing, "\n".join(missing)


def test_the_check_would_catch_a_renamed_metric(exported: set[str]) -> None:
    renamed = "histogram_quantile(0.99, sum by (le) (rate(pgbust_invalidator_lag_s_bucket[5m])))"
    assert metric_names(renamed) - exported == {"pgbust_invalidator_lag_s_bucket"}


def test_worker_exports_redis_memory_and_evictions(
    redis_server: RedisServer, keyspace: Keyspace, redis_client: redis.Redis
) -> None:
    samples = {
        sample.name: sample.value
        for family in RedisStatsCollector(redis_server.url, keyspace).collect()
        for sample in family.samples
    }
    used = int(redis_client.info("memory")["used_memory"])
    assert 0.5 * used < samples["pgbust_worker_redis_used_memory_bytes"] < 2 * used
    assert samples["pgbust_worker_redis_maxmemory_bytes"] == float(
        redis_client.info("memory")["maxmemory"]
    )
    assert samples["pgbust_worker_redis_evicted_keys_total"] == float(
        redis_client.info("stats")["evicted_keys"]
    )
