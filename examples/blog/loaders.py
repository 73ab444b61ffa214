"""How each entry of the blog's declaration is computed, as JSON bytes.

The app's read path and pgbust's workers (warming, audit: `[pgbust] loaders`) call these
same functions. Values arrive as the text of the entry's name (unescaped): a uuid, a slug,
a comment number; a value that cannot be one names no entry of the blog.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from examples.blog.queries import query
from pgbust import Loaded, Loaders, UnknownEntry

LOADERS = Loaders()
MAX_COMMENT_NUMBER = 2**31 - 1  # blog.comments.number is an integer


async def _rows(conn: AsyncConnection[Any], name: str, **params: Any) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise UnknownEntry(f"not an author id: {value!r}") from None


def _text(value: str) -> str:
    # Postgres text holds no NUL: such a slug names no row, and must not reach the server
    if "\x00" in value:
        raise UnknownEntry(f"not a slug: {value!r}")
    return value


def _number(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= MAX_COMMENT_NUMBER:
        raise UnknownEntry(f"not a comment number: {value!r}")
    return int(value)


@LOADERS.entry("author:{id}")
async def load_author(conn: AsyncConnection[Any], id: str) -> bytes | None:
    rows = await _rows(conn, "author", id=_uuid(id))
    return orjson.dumps(rows[0]) if rows else None


@LOADERS.entry("author:{id}:post-count")
async def load_post_count(conn: AsyncConnection[Any], id: str) -> bytes | None:
    author_id = _uuid(id)
    [count] = await _rows(conn, "post_count", id=author_id)
    if not count["found"]:
        return None
    return orjson.dumps({"author_id": author_id, "posts": count["posts"]})


@LOADERS.entry("post:{slug}")
async def load_post(conn: AsyncConnection[Any], slug: str) -> bytes | None:
    rows = await _rows(conn, "post", slug=_text(slug))
    return orjson.dumps(rows[0]) if rows else None


@LOADERS.entry("post:{slug}:comments")
async def load_comments(conn: AsyncConnection[Any], slug: str) -> Loaded | None:
    comments = await _rows(conn, "comments", slug=_text(slug))
    if not comments and not await _rows(conn, "post_exists", slug=slug):
        return None
    # the comments it shows: the declaration files the list under each one's row tag
    return Loaded(orjson.dumps({"post_slug": slug, "comments": comments}), rows=comments)


@LOADERS.entry("comment:{post_slug}:{number}")
async def load_comment(conn: AsyncConnection[Any], post_slug: str, number: str) -> bytes | None:
    rows = await _rows(conn, "comment", post_slug=_text(post_slug), number=_number(number))
    return orjson.dumps(rows[0]) if rows else None
