"""The demo's loaders: how each entry of pgbust.toml is computed from Postgres, as JSON bytes.

The API's read path and the workers (warming, audit: pgbust.toml `[pgbust] loaders`) call
these same functions, so a warmed entry is byte for byte what a reader would have filled.
Values arrive as text (the entry's name, unescaped) and are checked by the template shape
the routes produce; a page returns the products it lists, for its row tags.
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from db.queries import query
from pgbust.loaders import Loaded, Loaders, UnknownEntry

__all__ = ["LOADERS", "UnknownEntry", "load_entry"]

LOADERS = Loaders()


async def _rows(
    conn: AsyncConnection[Any], name: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()


def _number(value: str) -> int:
    """A decimal id, limit or offset as the routes render it; anything else names no entry."""
    if not value.isascii() or not value.isdigit():
        raise UnknownEntry(f"not a demo entry value: {value!r}")
    return int(value)


@LOADERS.entry("product:{id}")
async def load_product(conn: AsyncConnection[Any], id: str) -> bytes | None:
    rows = await _rows(conn, "get_product", {"id": _number(id)})
    return orjson.dumps(rows[0]) if rows else None


@LOADERS.entry("category:{id}:products:{limit}:{offset}")
async def load_category_page(
    conn: AsyncConnection[Any], id: str, limit: str, offset: str
) -> Loaded | None:
    category_id, page_limit, page_offset = _number(id), _number(limit), _number(offset)
    params = {"category_id": category_id, "limit": page_limit, "offset": page_offset}
    items = await _rows(conn, "category_page", params)
    if not items and not await _rows(conn, "category_exists", {"id": category_id}):
        return None
    page = {"category_id": category_id, "limit": page_limit, "offset": page_offset}
    # the rows it lists: pgbust.toml files the page under each one's row tag
    return Loaded(orjson.dumps({**page, "items": items}), rows=items)


@LOADERS.entry("category:{id}:summary")
async def load_category_summary(conn: AsyncConnection[Any], id: str) -> bytes | None:
    category_id = _number(id)
    [summary] = await _rows(conn, "category_summary", {"category_id": category_id})
    if not summary.pop("found"):
        return None
    return orjson.dumps({"category_id": category_id, **summary})


async def load_entry(conn: AsyncConnection[Any], entry: str) -> bytes | None:
    """The JSON of an entry as stored in the cache, or None when the row does not exist."""
    loaded = await LOADERS.load(conn, entry)
    return None if loaded is None else loaded.payload
