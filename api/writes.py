"""The write path: one transaction, then invalidate what it touched before responding.

In cdc mode the touched entries and tags are invalidated in Redis (deleted, tag generations
bumped, one message published to every instance) and evicted from this process's L1 before
the response is sent: read-your-writes. The CDC path sees the same commit and invalidates the
same targets again, which is harmless (idempotent). In ttl mode writes invalidate nothing (the
TTL is the only bound, by design of that mode); in off mode there is no cache.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any

import orjson
from fastapi import HTTPException, status
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from redis.exceptions import RedisError

from api.errors import RefusedByDatabase
from api.models import ProductCreate, ProductPatch
from api.runtime import Runtime
from db.queries import query
from pgbust import declaration
from pgbust.protocol import Invalidation, Targets
from pgbust.rules import targets_for, write_change

log = logging.getLogger(__name__)
ECHO_WAIT_S = 0.25
TABLE = "public.products"


@functools.cache
def _declaration() -> declaration.Declaration:
    """The declaration file (PGBUST_CONFIG), read once: the same rules as the capture's."""
    return declaration.load()


def product_write_targets(op: str, product_id: int, *category_ids: int) -> Targets:
    """What an API write to one product touches (an update names its old and new category),
    by the declaration's rules: the same as the change the capture will see. Which columns
    the update changed is not known here: every column counts."""
    first = {"id": product_id, "category_id": category_ids[0]}
    last = {"id": product_id, "category_id": category_ids[-1]}
    if op == "INSERT":
        change = write_change(TABLE, "insert", new=first)
    elif op == "DELETE":
        change = write_change(TABLE, "delete", old=first)
    else:
        change = write_change(TABLE, "update", old=first, new=last)
    return targets_for(_declaration(), change)


async def _returning(runtime: Runtime, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        async with (
            runtime.db.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(query(name), params)
            return await cur.fetchone()
    except pg_errors.ForeignKeyViolation:
        # a well-formed body that names a category that is not there: the state, not the
        # request, is in the way (409, like a 404 of the referenced resource)
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"category_id {params.get('category_id')} does not exist"
        ) from None
    except (pg_errors.CheckViolation, pg_errors.DataError) as exc:
        raise RefusedByDatabase(str(exc.diag.message_primary or type(exc).__name__)) from None


async def create_product(runtime: Runtime, body: ProductCreate) -> bytes:
    row = await _returning(runtime, "insert_product", body.model_dump())
    assert row is not None
    await invalidate(runtime, "INSERT", row["id"], row["category_id"])
    return orjson.dumps(row)


async def update_product(runtime: Runtime, product_id: int, body: ProductPatch) -> bytes | None:
    params = {"id": product_id, **body.model_dump()}
    row = await _returning(runtime, "update_product", params)
    if row is None:
        return None
    old_category = row.pop("old_category_id")
    await invalidate(runtime, "UPDATE", product_id, old_category, row["category_id"])
    return orjson.dumps(row)


async def delete_product(runtime: Runtime, product_id: int) -> bool:
    row = await _returning(runtime, "delete_product", {"id": product_id})
    if row is None:
        return False
    await invalidate(runtime, "DELETE", product_id, row["category_id"])
    return True


async def invalidate(runtime: Runtime, op: str, product_id: int, *category_ids: int) -> None:
    """Invalidate a write's targets in L2 (and every L1 via the message) and in this L1.

    Then wait, briefly (at most ECHO_WAIT_S), for the message to come back on this process's
    own subscription: Redis writes one PUBLISH to every subscriber's connection at once, so
    by then it is on its way into every other instance too, which narrows the window in which
    a client whose next read lands on another instance could still see the old value there to
    that instance's own processing delay.
    """
    if runtime.settings.cache_mode != "cdc" or runtime.l2 is None:
        return
    targets = product_write_targets(op, product_id, *category_ids)
    reason = f"api write {uuid.uuid4().hex}"
    message = Invalidation.of(targets, origin="api", ts_us=time.time_ns() // 1000, reason=reason)
    subscriber = runtime.subscriber
    echo = subscriber.expect_echo(reason) if subscriber and subscriber.healthy else None
    try:
        await runtime.l2.invalidate(targets, message)
        runtime.metrics.invalidations_sent.labels("ok").inc()
    except RedisError as exc:
        # committed already: the CDC path (and the worker's retries) will invalidate L2
        runtime.metrics.invalidations_sent.labels("redis_error").inc()
        log.warning("write-path invalidation of %s failed: %s", sorted(targets.keys), exc)
        echo = None
    if targets.flush:
        runtime.l1.flush()
    else:
        runtime.l1.evict(targets.keys, targets.tags)
    if echo is not None and subscriber is not None:
        try:
            await asyncio.wait_for(echo, ECHO_WAIT_S)
        except TimeoutError:
            runtime.metrics.invalidations_sent.labels("echo_timeout").inc()
        finally:
            subscriber.forget_echo(reason)
