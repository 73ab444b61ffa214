"""The blog's SQL, by name (queries.sql), in the format of pgbust's own db/queries.sql."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from db.queries import parse_queries

QUERIES_FILE = Path(__file__).with_name("queries.sql")


@cache
def _all() -> dict[str, str]:
    return parse_queries(QUERIES_FILE.read_text(encoding="utf-8"))


def query(name: str) -> bytes:
    return _all()[name].encode()
