"""Enqueue worker tasks by name (no task module is imported): what the invalidator calls.

Every function is synchronous and raises nothing but EnqueueError (the broker is unreachable
or refused the message). Async callers use `await asyncio.to_thread(enqueue_...)`.
The module functions use the settings of the environment; TaskSender(settings) sends with
other settings (another namespace or broker, as tests do).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from typing import Any

from celery import Celery

from pgbust.errors import ConfigError, PgbustError
from worker.settings import Settings

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

    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        from worker.app import create_app

        self.settings = settings
        self.app = celery_app if celery_app is not None else create_app(settings)
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
        self.send("pgbust.audit", sample=sample or self.settings.audit_sample)

    def close(self) -> None:
        self._connection.release()
        self.app.close()


@cache
def _default_sender() -> TaskSender:
    from worker.app import app, settings  # loads the settings of the environment

    return TaskSender(settings, app)


def default_sender() -> TaskSender:
    """The sender with the environment's settings (a bad setting is an EnqueueError)."""
    try:
        return _default_sender()
    except ConfigError as exc:
        raise EnqueueError(str(exc)) from None


def enqueue_retry_invalidation(keys: list[str], tags: list[str], flush: bool, reason: str) -> None:
    """Invalidate these targets once Redis answers again, then bump the namespace epoch."""
    default_sender().retry_invalidation(keys, tags, flush, reason)


def enqueue_garbage(keys: list[str]) -> None:
    """UNLINK the members of renamed tag member sets (InvalidateResult.garbage) in chunks."""
    default_sender().garbage(keys)


def enqueue_purge(reason: str) -> None:
    """SCAN the namespace and UNLINK values killed by an epoch bump, in chunks."""
    default_sender().purge(reason)


def enqueue_warm(entries: list[str]) -> None:
    """Recompute these (hot, just invalidated) entries through the fill guard."""
    default_sender().warm(entries)


def enqueue_audit(sample: int | None = None) -> None:
    """Run one consistency audit now (beat schedules it every PGBUST_AUDIT_INTERVAL_S)."""
    default_sender().audit(sample)
