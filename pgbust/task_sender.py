"""Enqueue worker tasks by name (no task module is imported): what the invalidator calls.

A TaskSender is built from the sending process's own settings object (its broker and queue,
flags included), never from the environment behind its back. Every method is synchronous
and raises nothing but EnqueueError (the broker is unreachable or refused the message);
async callers use `await asyncio.to_thread(sender.<method>, ...)`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from pgbust.errors import PgbustError
from pgbust.settings import TaskQueueSettings

log = logging.getLogger(__name__)

# Publishing must not hang the caller: a few quick retries, then EnqueueError.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}


class EnqueueError(PgbustError):
    """The task could not be handed to the broker (CELERY_BROKER_URL unreachable)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TaskSender:
    """Sends tasks to settings.broker_url, whatever CELERY_BROKER_URL this process has.

    (Celery's own config lets the CELERY_BROKER_URL environment variable win over the app's
    configuration, so the connection is opened explicitly; one lock makes it thread-safe.)
    """

    def __init__(self, settings: TaskQueueSettings, celery_app: Celery | None = None) -> None:
        self.settings = settings
        self.app = celery_app if celery_app is not None else sender_app(settings)
        self._connection = self.app.connection_for_write(settings.broker_url)
        self._lock = threading.Lock()

    def send(self, name: str, **kwargs: Any) -> None:
        try:
            with self._lock:
                self.app.send_task(
                    name,
                    kwargs=kwargs,
                    queue=self.settings.task_queue,
                    connection=self._connection,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
        except Exception as exc:  # kombu/redis/amqp errors share no base worth naming
            raise EnqueueError(f"cannot enqueue {name} on CELERY_BROKER_URL: {exc}") from exc
        log.debug("enqueued %s", name)

    def retry_invalidation(
        self, keys: list[str], tags: list[str], flush: bool, reason: str
    ) -> None:
        self.send(
            "pgbust.retry_invalidation",
            keys=sorted(keys),
            tags=sorted(tags),
            flush=flush,
            reason=reason,
            enqueued_ms=now_ms(),
        )

    def garbage(self, keys: list[str]) -> None:
        if keys:
            self.send("pgbust.collect_garbage", keys=sorted(keys))

    def purge(self, reason: str) -> None:
        self.send("pgbust.purge_dead", reason=reason)

    def warm(self, entries: list[str]) -> None:
        if entries:
            self.send("pgbust.warm", entries=sorted(set(entries)))

    def audit(self, sample: int | None = None) -> None:
        """None: the worker's PGBUST_AUDIT_SAMPLE."""
        self.send("pgbust.audit", sample=sample)

    def close(self) -> None:
        self._connection.release()
        self.app.close()


def sender_config(settings: TaskQueueSettings) -> dict[str, Any]:
    """What sending a task needs: the broker and the queue, both from these settings."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "broker_transport_options": {"socket_connect_timeout": 3, "socket_timeout": 10},
        "task_default_queue": settings.task_queue,
        "task_default_exchange": settings.task_queue,
        "task_default_routing_key": settings.task_queue,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def sender_app(settings: TaskQueueSettings) -> Celery:
    """A Celery app that only sends (no task is imported): broker and queue of `settings`."""
    app = Celery("pgbust-sender", set_as_current=False)
    app.conf.update(sender_config(settings))
    return app
