"""Serve L1 hits before FastAPI routing: a pure ASGI middleware for the three read routes.

An L1 hit needs no validation beyond the path itself, no dependency solving and no response
object; skipping FastAPI's machinery for it roughly doubles hit throughput. Only canonical
paths are taken here (decimal ids without leading zeros, within bigint; for pages, nothing in
the query string but valid `limit`/`offset`): everything else, and every L1 miss, falls
through to the FastAPI routes, which validate, answer errors and run the full read path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from api.models import MAX_ID, MAX_OFFSET, MAX_PAGE
from pgbust.keys import category_page_entry, category_summary_entry, product_entry

_ID = r"([1-9][0-9]{0,18})"
_PRODUCT = re.compile(rf"/products/{_ID}")
_SUMMARY = re.compile(rf"/categories/{_ID}/summary")
_PAGE = re.compile(rf"/categories/{_ID}/products")
_NUMBER = re.compile(r"[0-9]{1,7}")


class _Route:
    """Stands in for the matched route in scope["route"] (latency metrics label by path)."""

    def __init__(self, path: str) -> None:
        self.path = path


_PRODUCT_ROUTE = _Route("/products/{product_id}")
_SUMMARY_ROUTE = _Route("/categories/{category_id}/summary")
_PAGE_ROUTE = _Route("/categories/{category_id}/products")


def _page_params(query: bytes) -> tuple[int, int] | None:
    """(limit, offset) when the query string is exactly valid page parameters, else None."""
    limit, offset = 20, 0
    if not query:
        return limit, offset
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        return None
    for name, value in pairs:
        if not _NUMBER.fullmatch(value):
            return None
        if name == "limit":
            limit = int(value)
        elif name == "offset":
            offset = int(value)
        else:
            return None
    if not (1 <= limit <= MAX_PAGE and 0 <= offset <= MAX_OFFSET):
        return None
    return limit, offset


def entry_of(path: str, query: bytes) -> tuple[str, _Route] | None:
    """The cache entry a canonical read path asks for, or None (let FastAPI decide)."""
    if match := _PRODUCT.fullmatch(path):
        key = int(match[1])
        return (product_entry(key), _PRODUCT_ROUTE) if key <= MAX_ID and not query else None
    if match := _SUMMARY.fullmatch(path):
        key = int(match[1])
        if key <= MAX_ID and not query:
            return category_summary_entry(key), _SUMMARY_ROUTE
        return None
    if match := _PAGE.fullmatch(path):
        key = int(match[1])
        page = _page_params(query)
        if key <= MAX_ID and page is not None:
            return category_page_entry(key, *page), _PAGE_ROUTE
    return None


class L1FastPath:
    def __init__(self, app: ASGIApp, lookup: Callable[[Scope, str], bytes | None]) -> None:
        self.app = app
        self.lookup = lookup  # (scope, entry) -> L1 payload or None; counts and samples hits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            found = entry_of(scope["path"], scope["query_string"])
            if found is not None:
                payload = self.lookup(scope, found[0])
                if payload is not None:
                    scope["route"] = found[1]
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"x-cache", b"L1"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": payload})
                    return
        await self.app(scope, receive, send)
