"""A write kills what it changed and nothing else, on every tier of two API instances (issue
12: dependency precision). A page is filed under the row tags of the products it holds, so an
out-of-band UPDATE in place kills only the pages that show the product; an INSERT, a DELETE
or a move kills the category's pages. Real Postgres, Redis, invalidator and API processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from db import seed
from tests.support.capture_stack import Stack, start_stack
from tests.support.servers import RedisServer, wait_until

# product i lives in category 1 + i % 5: category 2 holds 1, 6, 11, 16, 21, 26
SHOWS_1_AND_6 = "/categories/2/products?limit=2&offset=0"
SHOWS_11_AND_16 = "/categories/2/products?limit=2&offset=2"
SUMMARY = "/categories/2/summary"
PROBE = 3  # the drain's probe write: a product of category 4, on none of these pages


@pytest.fixture(scope="module")
def stack(
    database_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    running = start_stack(database_url, redis_server, tmp_path_factory.mktemp("precision"))
    running.probe_id = PROBE
    yield running
    running.processes.stop_all()


@pytest.fixture
def cached(stack: Stack, database_url: str) -> Stack:
    """A small catalogue, both pages and the summary in L1 on both instances."""
    flushed = stack.epoch_bumps("capture_changed")
    seed.seed(database_url, products=30, categories=5, replace=True)
    # the seed's TRUNCATE is announced by its trigger, and also rewrites the tables (a new
    # relfilenode): the invalidator's capture check flushes once more for that, on its own
    # timer (PGBUST_CAPTURE_CHECK_S), which the drain's probe write does not wait for
    assert wait_until(lambda: stack.epoch_bumps("capture_changed") > flushed, timeout=10.0)
    stack.drain()
    for url in stack.api_urls:
        for path in (SHOWS_1_AND_6, SHOWS_11_AND_16, SUMMARY):
            # MISS (perhaps twice: a page's first fill), then L1; bounded, not counted: an L1
            # flush by the subscriber's epoch check, racing the seed's own flush message,
            # may void a fill in between
            assert wait_until(
                lambda url=url, path=path: (
                    httpx.get(url + path, timeout=5).headers["x-cache"] == "L1"
                ),
                timeout=5.0,
            ), (url, path)
    return stack


def sources(stack: Stack, path: str) -> list[str]:
    return [httpx.get(url + path, timeout=5).headers["x-cache"] for url in stack.api_urls]


def write(database_url: str, statement: str, *params: Any) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement, params)


def test_update_in_place_via_psql_kills_only_the_pages_that_show_the_product(
    cached: Stack, database_url: str
) -> None:
    write(database_url, "UPDATE products SET name = 'renamed' WHERE id = 11")
    cached.drain()
    assert sources(cached, SHOWS_1_AND_6) == ["L1", "L1"]
    assert "L1" not in sources(cached, SHOWS_11_AND_16)
    page = httpx.get(cached.api_urls[0] + SHOWS_11_AND_16, timeout=5).json()
    assert [item["name"] for item in page["items"] if item["id"] == 11] == ["renamed"]
    assert cached.sweep().stale == 0


def test_update_of_a_product_on_no_cached_page_keeps_every_page(
    cached: Stack, database_url: str
) -> None:
    write(database_url, "UPDATE products SET stock = stock + 1 WHERE id = 26")
    cached.drain()
    assert sources(cached, SHOWS_1_AND_6) == ["L1", "L1"]
    assert sources(cached, SHOWS_11_AND_16) == ["L1", "L1"]
    assert "L1" not in sources(cached, SUMMARY)  # its stock total changed
    assert cached.sweep().stale == 0


@pytest.mark.parametrize(
    ("statement", "params"),
    [
        ("UPDATE products SET category_id = 3 WHERE id = 26", ()),  # leaves category 2
        ("DELETE FROM products WHERE id = 26", ()),
        ("INSERT INTO products (category_id, name, price_cents, stock) VALUES (2, 'n', 1, 1)", ()),
        ("UPDATE products SET id = 2 * 1000 WHERE id = 1", ()),  # re-keyed: the pages shift
    ],
    ids=["move", "delete", "insert", "rekey"],
)
def test_a_change_of_which_products_a_category_lists_kills_all_its_pages(
    cached: Stack, database_url: str, statement: str, params: tuple[Any, ...]
) -> None:
    write(database_url, statement, *params)
    cached.drain()
    for path in (SHOWS_1_AND_6, SHOWS_11_AND_16, SUMMARY):
        assert "L1" not in sources(cached, path), path
    assert cached.sweep().stale == 0
