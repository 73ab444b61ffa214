"""The status command's judgement and screen (pure: pgbust/status.py), and the names its
probe shares with the services it looks at."""

from __future__ import annotations

from dataclasses import replace

import pytest

from db import status as status_sql
from invalidator.leader import APPLICATION_NAME
from pgbust import status_probe
from pgbust.status import (
    Audit,
    Bounds,
    Invalidators,
    RedisState,
    Slot,
    Status,
    Table,
    assess,
    render,
)
from pgbust.subscriber import CLIENT_NAME

INVALIDATORS = Invalidators(
    active_pid=101,
    active_addr="10.0.0.5",
    beat_age_s=0.2,
    listener_connected=True,
    standbys=["10.0.0.6 backend 102"],
    alive_sender="host:7:term-1",
    alive_ttl_ms=1400,
)
REDIS = RedisState(
    version="7.2.4",
    policy="allkeys-lru",
    verdict="recommended",
    advice="",
    maxmemory=1 << 30,
    used_memory=1 << 20,
    evicted_keys=0,
    epoch=1_700_000_000_000_000,
    epoch_age_s=12.0,
    subscribers=2,
    subscriber_clients=["10.0.0.7:5000 age=30s"],
)
AUDIT = Audit(at=1_700_000_000.0, age_s=60.0, checked=500, stale=0, ratio=0.0)


def healthy() -> Status:
    return Status(
        namespace="shop",
        capture="notify",
        invalidators=INVALIDATORS,
        tables=[Table("public.products", True, [])],
        redis=REDIS,
        audit=AUDIT,
    )


def whats(status: Status, bounds: Bounds = Bounds(expect_subscribers=2)) -> list[str]:
    return [finding.what for finding in assess(status, bounds)]


def test_a_healthy_namespace_has_no_finding() -> None:
    assert whats(healthy()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"invalidators": replace(INVALIDATORS, active_pid=None)}, "no_active_invalidator"),
        ({"invalidators": replace(INVALIDATORS, beat_age_s=9.0)}, "invalidator_silent"),
        ({"invalidators": replace(INVALIDATORS, alive_sender=None)}, "capture_not_live"),
        ({"invalidators": replace(INVALIDATORS, standbys=[])}, "no_standby"),
        ({"tables": [Table("public.products", False, ["x: update trigger disabled"])]},
         "table_not_captured"),
        ({"tables": []}, "nothing_captured"),
        ({"ddl_problem": "DDL not captured: ..."}, "ddl_not_captured"),
        ({"redis": replace(REDIS, subscribers=1)}, "api_unsubscribed"),
        ({"redis": replace(REDIS, policy="noeviction", verdict="safe")}, "redis_policy"),
        ({"redis": replace(REDIS, used_memory=(1 << 30) - 1)}, "redis_nearly_full"),
        ({"audit": None}, "no_audit"),
        ({"audit": replace(AUDIT, stale=2, ratio=0.004)}, "audit_stale"),
        ({"audit": replace(AUDIT, age_s=3600.0)}, "audit_old"),
        ({"slot": Slot("pgbust_shop", exists=False)}, "slot_missing"),
        ({"slot": Slot("pgbust_shop", True, active=False, lag_bytes=0)}, "slot_inactive"),
        ({"slot": Slot("pgbust_shop", True, active=True, lag_bytes=2 << 30)}, "slot_lag"),
        ({"errors": ["redis: Connection refused"]}, "unreachable"),
    ],
)  # fmt: skip
def test_each_fault_is_one_finding(change: dict[str, object], expected: str) -> None:
    assert whats(replace(healthy(), **change)) == [expected]  # type: ignore[arg-type]


def test_critical_findings_come_first() -> None:
    status = replace(healthy(), invalidators=replace(INVALIDATORS, standbys=[], active_pid=None))
    assert whats(status) == ["no_active_invalidator", "no_standby"]


def test_the_screen_shows_each_part_and_what_needs_attention() -> None:
    status = replace(healthy(), audit=replace(AUDIT, stale=2))
    status.findings = assess(status, Bounds(expect_subscribers=2))
    screen = render(status)
    assert screen.splitlines()[0] == "pgbust namespace shop (capture: notify): NEEDS ATTENTION (1)"
    assert "invalidator: active 10.0.0.5 backend 101; last beat 200 ms ago" in screen
    assert "standby: 1 (10.0.0.6 backend 102; any namespace)" in screen
    assert "public.products: captured" in screen
    assert "maxmemory-policy allkeys-lru (recommended); used 1.0 MiB of 1.0 GiB" in screen
    assert "last bump 2023-11-14 22:13:20 UTC" in screen
    assert "subscribed API workers: 2" in screen
    assert "[critical] the last audit found 2 stale entries of 500" in screen


def test_the_probe_looks_for_the_names_the_services_use() -> None:
    assert status_probe.API_SUBSCRIBER_NAME == CLIENT_NAME
    assert f"'{APPLICATION_NAME}'" in status_sql.STATUS_SQL.read_text()
