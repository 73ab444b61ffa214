"""The Celery tasks: thin synchronous wrappers that run a job of jobs.py / audit.py.

Each pool process runs its tasks on its own event loop, Redis client and Postgres connection
(worker/runtime.py), so nothing is shared across the prefork pool's processes. Tasks are
acknowledged late and idempotent: a redelivered task simply does the remaining work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import redis
from celery.signals import task_prerun, worker_init

from pgbust import declaration, redis_policy
from pgbust.cli import fail
from pgbust.entries import Entries
from pgbust.errors import ConfigError, StartupError
from pgbust.keys import Keyspace
from pgbust.protocol import Targets
from pgbust.redis_cache import RedisCache
from pgbust.task_sender import TaskSender
from worker import audit as audit_job
from worker import jobs, stats
from worker.app import app, settings
from worker.runtime import runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _task(**options: Any) -> Callable[[F], F]:
    """app.task with its type kept (Celery ships no type hints)."""
    decorator: Callable[[F], F] = app.task(**options)
    return decorator


def _on_task_prerun(handler: F) -> F:
    task_prerun.connect(handler)
    return handler


# Redis unreachable (or restarting): retry_invalidation backs off and tries again.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def _keyspace() -> Keyspace:
    return Keyspace(settings.namespace, cluster=settings.redis_cluster)


_senders: dict[int, TaskSender] = {}


def _sender() -> TaskSender:
    """The follow-up tasks' sender: this worker's own settings and app (its broker, flags
    included: `celery -b` is exported before the app is imported), one per pool process."""
    pid = os.getpid()
    sender = _senders.get(pid)
    if sender is None:
        sender = _senders[pid] = TaskSender(settings, app)
    return sender


def run_with_cache(job: Callable[[RedisCache], Awaitable[T]]) -> T:
    """Run one async job on this process's Redis client (the sync bridge of every task)."""
    return runtime(settings).run(job)


def run_with_cache_and_db(
    job: Callable[[RedisCache, psycopg.AsyncConnection[Any]], Awaitable[T]],
) -> T:
    """Run one async job with this process's Redis client and Postgres connection."""
    return runtime(settings).run_with_db(job)


@_task(
    name="pgbust.retry_invalidation",
    autoretry_for=REDIS_DOWN,
    retry_backoff=1,
    retry_backoff_max=settings.retry_backoff_max_s,
    retry_jitter=True,
    max_retries=None,
)
def retry_invalidation(
    keys: list[str], tags: list[str], flush: bool, reason: str, enqueued_ms: int = 0
) -> None:
    targets = Targets(frozenset(keys), frozenset(tags), flush)

    async def job(cache: RedisCache) -> jobs.RetryOutcome:
        outcome = await jobs.retry_invalidation(cache, targets, reason, enqueued_ms)
        freed = await jobs.collect_garbage(cache, outcome.garbage, settings.purge_chunk)
        await stats.count(
            cache.client,
            cache.keyspace,
            retried_invalidations=1,
            epoch_bumps=int(outcome.epoch_bumped),
            garbage_unlinked=freed,
        )
        return outcome

    outcome = run_with_cache(job)
    log.info(
        "retried invalidation (%s): keys=%d tags=%d flush=%s epoch_bumped=%s",
        reason,
        len(keys),
        len(tags),
        flush,
        outcome.epoch_bumped,
    )
    if outcome.epoch_bumped:
        _sender().purge(f"after retry: {reason}")


@_task(name="pgbust.collect_garbage")
def collect_garbage(keys: list[str]) -> None:
    async def job(cache: RedisCache) -> int:
        freed = await jobs.collect_garbage(cache, keys, settings.purge_chunk)
        await stats.count(cache.client, cache.keyspace, garbage_unlinked=freed)
        return freed

    freed = run_with_cache(job)
    log.info("collected %d garbage set(s): %d dead values unlinked", len(keys), freed)


@_task(name="pgbust.purge_dead")
def purge_dead(reason: str = "") -> None:
    async def job(cache: RedisCache) -> jobs.PurgeOutcome:
        outcome = await jobs.purge_dead(cache, settings.purge_chunk)
        await stats.count(
            cache.client, cache.keyspace, purged=outcome.unlinked, unlisted=outcome.unlisted
        )
        return outcome

    started = time.perf_counter()
    outcome = run_with_cache(job)
    log.info(
        "purged dead values (%s): scanned=%d unlinked=%d unlisted=%d in %.0f ms",
        reason,
        outcome.scanned,
        outcome.unlinked,
        outcome.unlisted,
        (time.perf_counter() - started) * 1000,
    )


@_task(name="pgbust.warm")
def warm(entries: list[str]) -> None:
    async def job(cache: RedisCache, conn: psycopg.AsyncConnection[Any]) -> jobs.WarmOutcome:
        outcome = await jobs.warm(
            cache,
            conn,
            entries,
            served=runtime(settings).served,
            ttl_ms=int(settings.cache_ttl_s * 1000),
            lease_ms=settings.warm_lease_ms,
        )
        await stats.count(cache.client, cache.keyspace, **outcome.as_counts())
        return outcome

    outcome = run_with_cache_and_db(job)
    log.info("warmed %d of %d entries", len(outcome.filled), len(entries))


@_task(name="pgbust.audit")
def audit(sample: int | None = None) -> dict[str, Any]:
    report = run_with_cache_and_db(
        lambda cache, conn: audit_job.run_and_record(
            cache,
            conn,
            sample or settings.audit_sample,
            settings.audit_grace_ms,
            served=runtime(settings).served,
        )
    )
    return report.as_dict()


@_task(name="pgbust.decay_hot")
def decay_hot() -> None:
    left = run_with_cache(lambda cache: jobs.decay_hot(cache, settings.hot_max))
    log.debug("hot keys decayed: %d left", left)


def _on_worker_init(handler: F) -> F:
    worker_init.connect(handler)
    return handler


@_on_worker_init
def _check_redis(**_: Any) -> None:
    """Log what the Redis of REDIS_URL is, and what its maxmemory-policy means (redis_policy).

    Celery's signal dispatch swallows exceptions, so a Redis older than 7.0 is logged as an
    error here; every task will then fail on the scripts."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        redis_policy.log_verdict(redis_policy.read_sync(client), "worker")
    except StartupError as exc:
        log.error("%s: every task will fail", exc)
    except redis.RedisError as exc:
        log.warning("cannot read the Redis settings of REDIS_URL at start: %s", exc)
    finally:
        client.close()


@_on_worker_init
def _check_declaration(**_: Any) -> None:
    """Warming and auditing compute entries with the application's loaders: a declaration
    that does not load, or loaders that do not import, stop the worker at start."""
    try:
        Entries.of(declaration.load())
    except (ConfigError, ImportError) as exc:
        fail("worker", str(exc), 2)


@_on_worker_init
def _consume_the_pgbust_queue(sender: Any = None, **_: Any) -> None:
    """`celery worker -Q other` would wait on a queue nobody sends to: pgbust sends every task
    to PGBUST_QUEUE, so that is the setting to change, and -Q must include it."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    if queues is None:
        return
    consumed = set(queues.consume_from or {})
    if settings.task_queue not in consumed:
        fail(
            "worker",
            f"invalid setting PGBUST_QUEUE: tasks are sent to {settings.task_queue!r} but this "
            f"worker consumes only {sorted(consumed)} (-Q): set PGBUST_QUEUE instead of -Q",
            2,
        )


@_on_worker_init
def _serve_metrics(**_: Any) -> None:
    """The main worker process serves /metrics when PGBUST_WORKER_METRICS_PORT is set."""
    if settings.worker_metrics_port:
        from worker import metrics

        metrics.serve(settings.worker_metrics_port, settings.redis_url, _keyspace())


@_on_task_prerun
def _hold_for_tests(task: Any = None, **_: Any) -> None:
    """Fault injection (PGBUST_WORKER_HOLD_KEY): announce the task, block until the key exists.

    Lets a test SIGKILL a worker at a known point in the middle of a task.
    """
    hold_key = settings.worker_hold_key
    if not hold_key:
        return
    blocking = redis.Redis.from_url(settings.redis_url)
    try:
        blocking.set(f"{hold_key}:started", str(getattr(task, "name", "?")))
        while not blocking.exists(hold_key):
            time.sleep(0.05)
    finally:
        blocking.close()
