"""Handing work to the workers never blocks or breaks the fast path; hot entry selection."""

from __future__ import annotations

from typing import Any

import pytest

from invalidator.hot import HotEntries
from invalidator.metrics import Metrics
from invalidator.settings import Settings
from invalidator.tasks import Tasks, worker_sender
from pgbust.keys import Keyspace
from pgbust.protocol import Targets
from pgbust.settings import load_settings
from tests.support.demo import DEMO, demo_tags


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class FakeSender:
    """Stands in for pgbust.task_sender.TaskSender: records warm, fails purge."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def warm(self, entries: list[str]) -> None:
        self.calls.append(("warm", entries))

    def purge(self, reason: str) -> None:
        raise RuntimeError("broker down")


async def test_a_sent_task_runs_in_a_thread_and_is_counted() -> None:
    metrics = Metrics()
    sender = FakeSender()
    tasks = Tasks(metrics, lambda: sender)
    tasks.send("enqueue_warm", ["product:1"])
    await tasks.drain()
    assert sender.calls == [("warm", ["product:1"])]
    assert sample(metrics, "pgbust_invalidator_enqueued_tasks_total", task="warm") == 1


async def test_a_failing_enqueue_is_logged_and_counted_not_raised() -> None:
    metrics = Metrics()
    tasks = Tasks(metrics, FakeSender)
    tasks.send("enqueue_purge", "why")
    await tasks.drain()
    assert sample(metrics, "pgbust_invalidator_errors_total", kind="enqueue") == 1


async def test_missing_worker_client_is_tolerated() -> None:
    def missing() -> Any:
        raise ImportError("No module named 'celery'")

    metrics = Metrics()
    tasks = Tasks(metrics, missing)
    tasks.send("enqueue_warm", ["product:1"])  # no error
    await tasks.drain()
    assert sample(metrics, "pgbust_invalidator_enqueued_tasks_total", task="warm") == 0
    assert sample(metrics, "pgbust_invalidator_errors_total", kind="enqueue") == 0


def test_the_sender_is_made_from_the_daemons_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://environment.example:6379/0")
    monkeypatch.setenv("PGBUST_NAMESPACE", "env-namespace")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("PGBUST_QUEUE", raising=False)
    settings = load_settings(
        Settings, redis_url="redis://flag.example:6390/0", namespace="flag-namespace"
    )
    sender = worker_sender(settings)()
    try:
        assert sender.settings.broker_url == "redis://flag.example:6390/1"
        assert sender.settings.task_queue == "flag-namespace.worker"
        assert sender.app.conf.task_default_queue == "flag-namespace.worker"
    finally:
        sender.close()


def test_hot_entries_hit_by_keys_and_tags() -> None:
    hot = HotEntries(client=None, keyspace=Keyspace("t"), top=10, declaration=DEMO)  # type: ignore[arg-type]
    names = ["product:1", "product:2", "category:3:summary", "category:4:summary"]
    hot.entries = {name: demo_tags(name) for name in names}
    targets = Targets(frozenset({"product:1"}), frozenset({"category:3:summary"}))
    assert hot.affected(targets) == ["category:3:summary", "product:1"]
    assert hot.affected(Targets(flush=True)) == sorted(hot.entries)
    assert hot.affected(Targets(frozenset({"product:9"}))) == []
