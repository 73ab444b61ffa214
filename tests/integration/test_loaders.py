"""Entry loaders against a real Postgres: the JSON an entry is filled with."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from api.loaders import UnknownEntry, load_entry
from db.seed import Counts


async def test_product_entry_is_the_row_with_its_version(database_url: str, seeded: Counts) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        body = orjson.loads(await load_entry(conn, "product:7") or b"null")
    assert body["id"] == 7 and body["category_id"] == 1 + 7 % 5 and body["version"] == 1


async def test_category_page_and_summary(database_url: str, seeded: Counts) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        page = orjson.loads(await load_entry(conn, "category:2:products:5:0") or b"null")
        summary = orjson.loads(await load_entry(conn, "category:2:summary") or b"null")
    assert [item["id"] for item in page["items"]] == [1, 6, 11, 16, 21]
    assert summary["count"] == 20 and summary["category_id"] == 2


async def test_missing_rows_load_as_none(database_url: str, seeded: Counts) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert await load_entry(conn, "product:999999") is None
        assert await load_entry(conn, "category:999:summary") is None
        assert await load_entry(conn, "category:999:products:5:0") is None
        with pytest.raises(UnknownEntry):
            await load_entry(conn, "nonsense:1")
