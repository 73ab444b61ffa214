"""The benchmark's peer subject (bench/peer_app.py) is a fair one: it caches, serves the bytes
of pgbust's loader, and PGCacheWatch's trigger makes it drop a product an out-of-band UPDATE
changed (a peer that never invalidated would look fast for the wrong reason)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psycopg

from api.loaders import load_entry
from bench.peers import install_peer_trigger, peer_server
from bench.scratch import scratch_database
from tests.support.servers import wait_until


async def _loader_bytes(url: str, product_id: int) -> bytes | None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await load_entry(conn, f"product:{product_id}")


def _version(base_url: str, product_id: int) -> int:
    return int(httpx.get(f"{base_url}/products/{product_id}", timeout=5).json()["version"])


def test_peer_app_caches_pgbust_bytes_and_serves_an_out_of_band_update(
    database_url: str, tmp_path: Path
) -> None:
    with scratch_database(database_url, products=50, categories=2) as url:
        install_peer_trigger(url)
        with peer_server(url, tmp_path / "peer.log") as server:
            body = httpx.get(f"{server.base_url}/products/7", timeout=5).content
            assert body == asyncio.run(_loader_bytes(url, 7))
            httpx.get(f"{server.base_url}/products/7", timeout=5)
            assert httpx.get(f"{server.base_url}/stats", timeout=5).json()["hit"] >= 1

            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(
                    "UPDATE products SET stock = stock + 1 WHERE id = 7 RETURNING version"
                ).fetchone()
            assert row is not None
            assert wait_until(lambda: _version(server.base_url, 7) >= row[0], timeout=5)
