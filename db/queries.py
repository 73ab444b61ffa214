"""Loads the named queries of db/queries.sql: SQL stays in SQL files, Python only names it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

QUERIES_FILE = Path(__file__).with_name("queries.sql")
_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of "-- name: x" blocks into {name: sql}; comments inside stay."""
    queries: dict[str, str] = {}
    matches = list(_NAME_RE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end].strip()
        if match.group(1) in queries:
            raise ValueError(f"query {match.group(1)!r} is defined twice")
        queries[match.group(1)] = body
    return queries


@cache
def _all() -> dict[str, str]:
    return parse_queries(QUERIES_FILE.read_text())


def query(name: str) -> bytes:
    """The SQL of one named query, as bytes (psycopg runs it without string building)."""
    try:
        return _all()[name].encode()
    except KeyError:
        raise KeyError(f"no query named {name!r} in {QUERIES_FILE}") from None
