"""Loaders: how each cache entry is computed from Postgres, as JSON bytes.

Shared by the API's read path and the workers' refresh-ahead, so a warmed entry is byte for
byte what a reader would have filled.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from db.queries import query
from pgbust.keys import product_row_tag

Loader = Callable[[AsyncConnection[Any], re.Match[str]], Awaitable[bytes | None]]


async def _rows(
    conn: AsyncConnection[Any], name: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()


async def _category_exists(conn: AsyncConnection[Any], category_id: int) -> bool:
    return bool(await _rows(conn, "category_exists", {"id": category_id}))


async def load_product(conn: AsyncConnection[Any], match: re.Match[str]) -> bytes | None:
    rows = await _rows(conn, "get_product", {"id": int(match["id"])})
    return orjson.dumps(rows[0]) if rows else None


async def load_category_page(conn: AsyncConnection[Any], match: re.Match[str]) -> bytes | None:
    category_id, limit, offset = int(match["id"]), int(match["limit"]), int(match["offset"])
    items = await _rows(
        conn, "category_page", {"category_id": category_id, "limit": limit, "offset": offset}
    )
    if not items and not await _category_exists(conn, category_id):
        return None
    return orjson.dumps(
        {"category_id": category_id, "limit": limit, "offset": offset, "items": items}
    )


async def load_category_summary(conn: AsyncConnection[Any], match: re.Match[str]) -> bytes | None:
    category_id = int(match["id"])
    [summary] = await _rows(conn, "category_summary", {"category_id": category_id})
    if not summary.pop("found"):
        return None
    return orjson.dumps({"category_id": category_id, **summary})


_LOADERS: list[tuple[re.Pattern[str], Loader]] = [
    (re.compile(r"^product:(?P<id>\d+)$"), load_product),
    (
        re.compile(r"^category:(?P<id>\d+):products:(?P<limit>\d+):(?P<offset>\d+)$"),
        load_category_page,
    ),
    (re.compile(r"^category:(?P<id>\d+):summary$"), load_category_summary),
]


class UnknownEntry(ValueError):
    pass


async def load_entry(conn: AsyncConnection[Any], entry: str) -> bytes | None:
    """The JSON of an entry as stored in the cache, or None when the row does not exist."""
    for pattern, loader in _LOADERS:
        match = pattern.match(entry)
        if match:
            return await loader(conn, match)
    raise UnknownEntry(f"no loader for cache entry {entry!r}")


def row_tags(entry: str, payload: bytes) -> tuple[str, ...]:
    """The row tags of what an entry's payload holds: a page, the tags of its products.

    Filed with the entry in both tiers, so that a change of one product kills exactly the
    pages that show it. Every fill (readers, warm tasks) goes through here."""
    if ":products:" not in entry:
        return ()
    items = orjson.loads(payload).get("items", ())
    return tuple(product_row_tag(int(item["id"])) for item in items)
