"""Handing work to the workers never blocks or breaks the fast path; hot entry selection."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from invalidator.hot import HotEntries
from invalidator.metrics import Metrics
from invalidator.tasks import Tasks
from pgbust.keys import Keyspace
from pgbust.protocol import Targets


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    module = types.ModuleType("fake_worker_client")

    def enqueue_warm(entries: list[str]) -> None:
        calls.append(("warm", entries))

    def enqueue_purge(reason: str) -> None:
        raise RuntimeError("broker down")

    module.enqueue_warm = enqueue_warm  # type: ignore[attr-defined]
    module.enqueue_purge = enqueue_purge  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_worker_client", module)
    return calls


async def test_a_sent_task_runs_in_a_thread_and_is_counted(
    fake_client: list[tuple[str, Any]],
) -> None:
    metrics = Metrics()
    tasks = Tasks(metrics, client_module="fake_worker_client")
    tasks.send("enqueue_warm", ["product:1"])
    await tasks.drain()
    assert fake_client == [("warm", ["product:1"])]
    assert sample(metrics, "pgbust_invalidator_enqueued_tasks_total", task="warm") == 1


async def test_a_failing_enqueue_is_logged_and_counted_not_raised(
    fake_client: list[tuple[str, Any]],
) -> None:
    metrics = Metrics()
    tasks = Tasks(metrics, client_module="fake_worker_client")
    tasks.send("enqueue_purge", "why")
    await tasks.drain()
    assert sample(metrics, "pgbust_invalidator_errors_total", kind="enqueue") == 1


async def test_missing_worker_client_is_tolerated() -> None:
    tasks = Tasks(Metrics(), client_module="no_such_module_here")
    tasks.send("enqueue_warm", ["product:1"])  # no error, nothing to wait for
    await tasks.drain()


def test_hot_entries_hit_by_keys_and_tags() -> None:
    hot = HotEntries(client=None, keyspace=Keyspace("t"), top=10)  # type: ignore[arg-type]
    hot.entries = frozenset({"product:1", "product:2", "category:3:summary", "category:4:summary"})
    targets = Targets(frozenset({"product:1"}), frozenset({"category:3"}))
    assert hot.affected(targets) == ["category:3:summary", "product:1"]
    assert hot.affected(Targets(flush=True)) == sorted(hot.entries)
    assert hot.affected(Targets(frozenset({"product:9"}))) == []
