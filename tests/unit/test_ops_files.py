"""ops/: the Prometheus configuration and alert rules pass promtool, the Grafana dashboard has
the structure Grafana's file provisioning loads, and the PromQL parser the metric-name check
relies on finds what it must."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.ops_files import (
    ALERTS_YML,
    DASHBOARD_JSON,
    DASHBOARD_PROVIDERS_YML,
    DATASOURCES_YML,
    PROMETHEUS_YML,
    ROOT,
    alert_rules,
    dashboard_exprs,
    metric_names,
    promtool,
)

DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
README = (ROOT / "README.md").read_text()
# Panel types that ship with Grafana (no plugin to install).
CORE_PANELS = {"row", "stat", "timeseries", "state-timeline", "gauge", "table", "bargauge", "text"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_promtool_accepts_the_prometheus_configuration_and_its_rule_files() -> None:
    done = _promtool("check", "config", str(PROMETHEUS_YML))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS_YML))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout + done.stderr


def test_each_alert_fires_on_its_fault_and_stays_quiet_when_healthy() -> None:
    # ops/prometheus/alerts_test.yml: synthetic series for each fault, promtool's rule tests
    done = _promtool("test", "rules", str(ALERTS_YML.with_name("alerts_test.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_rejects_a_broken_rule_so_the_checks_above_mean_something(
    tmp_path: Any,
) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n- name: x\n  rules:\n  - alert: X\n    expr: sum(rate(x[5m]) > \n")
    assert _promtool("check", "rules", str(broken)).returncode != 0


@pytest.mark.parametrize(
    "alert",
    [
        "PgbustInvalidationLagHigh",  # lag p99 above a bound for 5 minutes
        "PgbustApiUnsubscribed",
        "PgbustNoActiveInvalidator",
        "PgbustAuditFoundStale",
        "PgbustEpochBumpsFrequent",
        "PgbustRedisEvicting",
        "PgbustRedisPolicyNotRecommended",
        "PgbustWalSlotLagHigh",
    ],
)
def test_the_alerts_an_operator_is_promised_exist(alert: str) -> None:
    assert alert in {rule["alert"] for rule in alert_rules()}


def test_lag_alert_waits_five_minutes() -> None:
    rule = next(r for r in alert_rules() if r["alert"] == "PgbustInvalidationLagHigh")
    assert rule["for"] == "5m"
    assert "histogram_quantile(0.99" in rule["expr"]


def test_every_alert_has_a_severity_a_summary_and_a_readme_entry() -> None:
    operating = README.split("## Operating pgbust", 1)[1].split("\n## ", 1)[0]
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert f"`{rule['alert']}`" in operating, f"README does not explain {rule['alert']}"


def test_dashboard_has_what_grafana_file_provisioning_loads() -> None:
    assert isinstance(DASHBOARD["uid"], str) and 0 < len(DASHBOARD["uid"]) <= 40
    assert DASHBOARD["title"]
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    assert "id" not in DASHBOARD or DASHBOARD["id"] is None  # Grafana assigns it
    assert isinstance(DASHBOARD["panels"], list) and DASHBOARD["panels"]


def test_every_panel_is_complete_and_queries_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"][0]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in DASHBOARD["panels"]:
        assert panel["type"] in CORE_PANELS, panel["title"]
        assert panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": datasource["type"], "uid": datasource["uid"]}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(
    "needle",
    [
        "histogram_quantile(0.99, sum by (le) (rate(pgbust_invalidator_lag_seconds_bucket",
        "pgbust_invalidator_events_total",
        "pgbust_invalidator_batches_total",
        "pgbust_api_cache_hits_total",
        "pgbust_api_fills_refused_total",
        "pgbust_api_l1_entries",
        "pgbust_api_l1_flushes_total",
        "pgbust_api_subscriber_connected",
        "pgbust_invalidator_epoch_bumps_total",
        "pgbust_worker_audit_inconsistency_ratio",
        "pgbust_worker_redis_used_memory_bytes",
        "pgbust_worker_redis_evicted_keys_total",
        "pgbust_invalidator_wal_slot_lag_bytes",
    ],
)
def test_dashboard_shows_what_the_operator_needs(needle: str) -> None:
    assert any(needle in expr for _, expr in dashboard_exprs(DASHBOARD)), needle


def test_provisioning_files_are_grafana_version_1_and_point_at_the_dashboard_folder() -> None:
    datasources = yaml.safe_load(DATASOURCES_YML.read_text())
    providers = yaml.safe_load(DASHBOARD_PROVIDERS_YML.read_text())
    assert datasources["apiVersion"] == 1 and providers["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x="y"}[5m]))) > 0.05',
            {"a_seconds_bucket"},
        ),
        ("(sum(b_active) or vector(0)) < 1", {"b_active"}),
        ('max by (policy, verdict) (c_policy{verdict!="ok"}) == 1', {"c_policy"}),
        ("time() - max(d_ts) > 3 * 300", {"d_ts"}),
        ("max(e) / max(f > 0) > 0.9 and g offset 5m >= 1e9", {"e", "f", "g"}),
        ("count(h == 0) or vector(0)", {"h"}),
        ('sum by (tier) (rate(i_total[1m])) / ignoring (x) up{job="api"}', {"i_total", "up"}),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
