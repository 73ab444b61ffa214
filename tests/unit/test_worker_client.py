"""pgbust.task_sender: tasks go by name to the namespace's queue; failures are EnqueueError."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.connection import Connection

from pgbust.task_sender import EnqueueError, TaskSender
from worker.settings import Settings


@pytest.fixture
def memory_sender() -> Iterator[TaskSender]:
    settings = Settings(namespace=f"u{uuid.uuid4().hex[:8]}", celery_broker_url="memory://")
    sender = TaskSender(settings)
    yield sender
    sender.close()


def sent(sender: TaskSender) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of every message waiting on the sender's queue."""
    out = []
    with Connection("memory://") as conn:  # type: ignore[no-untyped-call]
        queue = conn.SimpleQueue(sender.settings.task_queue)
        while queue.qsize():
            message = queue.get(timeout=1)
            out.append((message.headers["task"], message.payload[1]))
            message.ack()
        queue.close()
    return out


def test_tasks_go_by_name_to_the_namespace_queue(memory_sender: TaskSender) -> None:
    memory_sender.warm(["product:2", "product:1", "product:2"])
    memory_sender.purge("truncate products")
    memory_sender.garbage(["ns:gc:category:1:abc"])

    assert sent(memory_sender) == [
        ("pgbust.warm", {"entries": ["product:1", "product:2"]}),
        ("pgbust.purge_dead", {"reason": "truncate products"}),
        ("pgbust.collect_garbage", {"keys": ["ns:gc:category:1:abc"]}),
    ]


def test_retry_carries_the_enqueue_time_for_the_epoch_bump(memory_sender: TaskSender) -> None:
    before = time.time_ns() // 1_000_000
    memory_sender.retry_invalidation(["product:1"], ["category:2"], False, "redis down")

    [(name, kwargs)] = sent(memory_sender)
    assert name == "pgbust.retry_invalidation"
    assert kwargs["keys"] == ["product:1"]
    assert kwargs["tags"] == ["category:2"]
    assert kwargs["flush"] is False
    assert kwargs["enqueued_ms"] >= before


def test_nothing_to_do_sends_nothing(memory_sender: TaskSender) -> None:
    memory_sender.warm([])
    memory_sender.garbage([])
    assert sent(memory_sender) == []


def test_unreachable_broker_is_an_enqueue_error_quickly() -> None:
    sender = TaskSender(Settings(celery_broker_url="redis://127.0.0.1:1/1"))
    started = time.monotonic()
    with pytest.raises(EnqueueError, match="CELERY_BROKER_URL"):
        sender.purge("test")
    assert time.monotonic() - started < 5
