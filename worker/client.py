"""Enqueue worker tasks by name (no task module is imported): what the invalidator calls.

Every function is synchronous and raises nothing but EnqueueError (the broker is unreachable
or refused the message). Async callers use `await asyncio.to_thread(enqueue_...)`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pgbust.errors import PgbustError
from worker.app import app, settings

log = logging.getLogger(__name__)

# Publishing must not hang the caller: a few quick retries, then EnqueueError.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}


class EnqueueError(PgbustError):
    """The task could not be handed to the broker (CELERY_BROKER_URL unreachable)."""


def _send(name: str, **kwargs: Any) -> None:
    try:
        app.send_task(
            name,
            kwargs=kwargs,
            queue=settings.task_queue,
            retry=True,
            retry_policy=_RETRY_POLICY,
        )
    except Exception as exc:  # kombu/redis/amqp errors have no common base worth naming
        raise EnqueueError(f"cannot enqueue {name} on CELERY_BROKER_URL: {exc}") from exc
    log.debug("enqueued %s", name)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def enqueue_retry_invalidation(keys: list[str], tags: list[str], flush: bool, reason: str) -> None:
    """Invalidate these targets once Redis answers again, then bump the namespace epoch."""
    _send(
        "pgbust.retry_invalidation",
        keys=sorted(keys),
        tags=sorted(tags),
        flush=flush,
        reason=reason,
        enqueued_ms=now_ms(),
    )


def enqueue_garbage(keys: list[str]) -> None:
    """UNLINK the members of renamed tag member sets (InvalidateResult.garbage) in chunks."""
    if keys:
        _send("pgbust.collect_garbage", keys=sorted(keys))


def enqueue_purge(reason: str) -> None:
    """SCAN the namespace and UNLINK values killed by an epoch bump, in chunks."""
    _send("pgbust.purge_dead", reason=reason)


def enqueue_warm(entries: list[str]) -> None:
    """Recompute these (hot, just invalidated) entries through the fill guard."""
    if entries:
        _send("pgbust.warm", entries=sorted(set(entries)))


def enqueue_audit(sample: int | None = None) -> None:
    """Run one consistency audit now (beat schedules it every PGBUST_AUDIT_INTERVAL_S)."""
    _send("pgbust.audit", sample=sample or settings.audit_sample)
