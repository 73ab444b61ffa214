"""The write path: one statement (its own transaction), then invalidate what it touched.

In cdc mode the touched entries and tags (what pgbust.toml says a change of the row
invalidates) are invalidated in Redis (deleted, tag generations bumped, one message published
to every instance) and evicted from this process's L1 before the response is sent:
read-your-writes (pgbust.Cache.wrote). The capture sees the same commit and invalidates the
same targets again, which is harmless (idempotent). In ttl mode writes invalidate nothing
(the TTL is the only bound, by design of that mode); in off mode there is no cache.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, status
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from api.errors import RefusedByDatabase
from api.models import ProductCreate, ProductPatch
from db.queries import query
from pgbust.cache import Cache

TABLE = "public.products"


async def _returning(cache: Cache, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    # One statement on the pool's autocommit connection is its own transaction: no BEGIN and
    # COMMIT round trips around it (they were ~17% of an API's samples under the load test).
    try:
        async with (
            cache.db.pool.connection() as conn,
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


async def create_product(cache: Cache, body: ProductCreate) -> bytes:
    row = await _returning(cache, "insert_product", body.model_dump())
    assert row is not None
    await cache.wrote(TABLE, "insert", new=row)
    return orjson.dumps(row)


async def update_product(cache: Cache, product_id: int, body: ProductPatch) -> bytes | None:
    params = {"id": product_id, **body.model_dump()}
    row = await _returning(cache, "update_product", params)
    if row is None:
        return None
    old_category = row.pop("old_category_id")
    await cache.wrote(
        TABLE,
        "update",
        old={"id": product_id, "category_id": old_category},
        new=row,
        changed=body.model_fields_set,  # what the patch set (a superset of what changed)
    )
    return orjson.dumps(row)


async def delete_product(cache: Cache, product_id: int) -> bool:
    row = await _returning(cache, "delete_product", {"id": product_id})
    if row is None:
        return False
    await cache.wrote(TABLE, "delete", old={"id": product_id, "category_id": row["category_id"]})
    return True
