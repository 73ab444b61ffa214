"""Helpers shared by the worker's integration tests (no tests here; a test_ name keeps it in
the worker's files)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import psycopg
import redis
from kombu.connection import Connection

from api.loaders import load_entry
from pgbust.keys import Keyspace
from pgbust.protocol import Lease
from pgbust.redis_cache import RedisCache
from pgbust.redis_connect import connect
from pgbust.task_sender import TaskSender
from tests.support.demo import demo_tags
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer
from worker.settings import Settings

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

T = TypeVar("T")


def start_worker(
    procs: ProcessManager, name: str = "worker", env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """`celery -A worker worker`, returned once it consumes from its queue."""
    proc = procs.celery_worker(
        name, env=dict(env or {}), extra=["--without-mingle", "--without-gossip"]
    )
    return proc.wait_ready(lambda: " ready." in proc.log_path.read_text(errors="replace"), 40)


def sender_for(stack_env: Mapping[str, str], broker_url: str | None = None) -> TaskSender:
    """A sender with the settings of the test's processes (namespace -> queue)."""
    given: dict[str, Any] = {
        name: stack_env[name] for name in ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL")
    }
    if broker_url:
        given["CELERY_BROKER_URL"] = broker_url
    return TaskSender(Settings(namespace=stack_env["PGBUST_NAMESPACE"], **given))


def delete_amqp_queue(queue: str) -> None:
    with contextlib.suppress(Exception), Connection(RABBITMQ_URL, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
        conn.default_channel.queue_delete(queue)


def run(
    redis_server: RedisServer, keyspace: Keyspace, job: Callable[[RedisCache], Awaitable[T]]
) -> T:
    """Run `job(cache)` on a fresh client of the private Redis, as a worker task does."""

    async def main() -> T:
        # through connect, as worker tasks: the namespace knows this server before any fill
        client = connect(redis_server.url, keyspace, "test")
        try:
            return await job(RedisCache(client, keyspace))
        finally:
            await client.aclose()

    return asyncio.run(main())


def load(database_url: str, entry: str) -> bytes | None:
    async def main() -> bytes | None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await load_entry(conn, entry)

    return asyncio.run(main())


def fill_many(redis_server: RedisServer, keyspace: Keyspace, payloads: dict[str, bytes]) -> None:
    """Store payloads as a reader would (lease + guarded fill)."""

    async def job(cache: RedisCache) -> None:
        for entry, payload in payloads.items():
            lease = await cache.get_or_lease(entry, tags=demo_tags(entry))
            assert isinstance(lease, Lease), lease
            assert (
                await cache.fill(
                    entry,
                    lease.token,
                    lease.stamp,
                    payload,
                    rows=(),
                    since=lease.since,
                    tags=demo_tags(entry),
                )
                == 1
            )

    run(redis_server, keyspace, job)


def fill(redis_server: RedisServer, keyspace: Keyspace, entry: str, payload: bytes) -> None:
    fill_many(redis_server, keyspace, {entry: payload})


def peek(redis_server: RedisServer, keyspace: Keyspace, entry: str) -> bytes | None:
    return run(redis_server, keyspace, lambda cache: cache.peek(entry, tags=demo_tags(entry)))


def value_keys(client: redis.Redis, keyspace: Keyspace) -> list[bytes]:
    return list(client.scan_iter(match=keyspace.value_pattern, count=1_000))
