"""A benchmark subject, not part of pgbust: the closest Python peer, PGCacheWatch (PyPI
`pgcachewatch`), used as its README shows, in a minimal FastAPI app serving
`GET /products/{id}` — for `python -m bench peers` only.

Each process LISTENs with asyncpg on PGCacheWatch's channel (its trigger is installed on
`products` with `python -m pgcachewatch install products --commit`) and caches the product's
JSON per id in process memory with the Greedy strategy: any change of `products` clears the
whole cache, on the next request after the notification arrives. The JSON comes from
pgbust's own loader over the same psycopg pool settings as the API, so a miss costs the
same database work and yields the same bytes as pgbust's.

    DATABASE_URL=... uvicorn bench.peer_app:app --port P
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Response
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.keys import product_entry
from api.loaders import load_entry

with warnings.catch_warnings():
    # pgcachewatch 0.4.2 names websockets' legacy client class in a type hint
    warnings.simplefilter("ignore", DeprecationWarning)
    from pgcachewatch import decorators, listeners, models, strategies

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
POOL_SIZE = int(os.environ.get("PGBUST_DB_POOL_SIZE", "10"))  # the API's default

listener = listeners.PGEventQueue()
pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
    DATABASE_URL,
    min_size=1,
    max_size=POOL_SIZE,
    open=False,
    timeout=5.0,
    kwargs={"autocommit": True},
    name="peer-app",
)


def _touches_products(event: models.Event) -> bool:
    return bool(event.table == "products")


# the benchmark reads these (GET /stats) to report how many reads went to Postgres
lookups = {"hit": 0, "miss": 0}


def _count(outcome: str) -> None:
    lookups[outcome] += 1


ProductLoader = Callable[[int], Awaitable[bytes | None]]
# any change of the table clears every entry: what PGCacheWatch's users write (Greedy)
cached: Callable[[ProductLoader], ProductLoader] = decorators.cache(
    strategy=strategies.Greedy(listener=listener, predicate=_touches_products),
    statistics_callback=_count,
)


@cached
async def product_json(product_id: int) -> bytes | None:
    async with pool.connection() as conn:
        return await load_entry(conn, product_entry(product_id))


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await pool.open(wait=True)
    conn = await asyncpg.connect(DATABASE_URL)
    await listener.connect(conn)
    try:
        yield
    finally:
        await conn.close()
        await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> Response:
    healthy = listener.connection_healthy()
    return Response(status_code=200 if healthy else 503)


@app.get("/stats")
async def stats() -> dict[str, int]:
    return lookups


@app.get("/products/{product_id}")
async def get_product(product_id: int) -> Response:
    body = await product_json(product_id)
    if body is None:
        return Response(b'{"detail":"not found"}', status_code=404, media_type="application/json")
    return Response(body, media_type="application/json")
