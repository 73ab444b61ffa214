"""What the workers did, kept in Redis so any process can report it (CLI, metrics endpoint).

Counters live in the hash "<ns>:worker:stats"; the last audit's figures in "<ns>:worker:audit"
(JSON). Celery runs tasks in pool processes, so in-process Prometheus counters would be split
across processes and lost on restart; Redis holds one total per namespace instead.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from pgbust.keys import Keyspace

log = logging.getLogger(__name__)


def stats_key(keyspace: Keyspace) -> str:
    return keyspace.worker_stats


def audit_key(keyspace: Keyspace) -> str:
    return keyspace.worker_audit


async def count(client: aioredis.Redis, keyspace: Keyspace, **increments: int) -> None:
    """Add to the namespace's worker counters (zero increments are skipped).

    A full Redis refuses the counters: the task's work is done all the same, so that is
    logged, not raised (bookkeeping must not fail the deletions that free the memory)."""
    todo = {name: value for name, value in increments.items() if value}
    if not todo:
        return
    try:
        async with client.pipeline(transaction=False) as pipe:
            for name, value in todo.items():
                pipe.hincrby(stats_key(keyspace), name, value)
            await pipe.execute()
    except OutOfMemoryError:
        log.warning("redis is full: worker counters not recorded (%s)", todo)


async def save_audit(client: aioredis.Redis, keyspace: Keyspace, report: dict[str, Any]) -> None:
    try:
        await client.set(audit_key(keyspace), orjson.dumps(report))
    except OutOfMemoryError:
        log.warning("redis is full: the audit report is not stored (it is logged)")


async def read_stats(client: aioredis.Redis, keyspace: Keyspace) -> dict[str, int]:
    raw = await client.hgetall(stats_key(keyspace))
    return {_text(key): int(value) for key, value in raw.items()}


async def read_audit(client: aioredis.Redis, keyspace: Keyspace) -> dict[str, Any] | None:
    raw = await client.get(audit_key(keyspace))
    if not raw:
        return None
    report: dict[str, Any] = orjson.loads(raw)
    return report


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
