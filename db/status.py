"""The read-only queries of `python -m pgbust status` (the SQL lives in db/status.sql)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from db.queries import parse_queries

STATUS_SQL = Path(__file__).with_name("status.sql")


@cache
def _queries() -> dict[str, str]:
    return parse_queries(STATUS_SQL.read_text())


def query(name: str) -> bytes:
    return _queries()[name].encode()
