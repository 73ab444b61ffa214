"""What a run does on the configured servers: make sure there is a catalogue to load, and
leave nothing behind in Redis afterwards."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psycopg
import redis

from db import migrate, seed
from db.queries import parse_queries
from loadtest.settings import Settings
from pgbust.checks import require_postgres
from pgbust.errors import ConfigError
from pgbust.settings import load_settings
from worker.settings import Settings as WorkerSettings

QUERIES = parse_queries(Path(__file__).with_name("queries.sql").read_text())


def say(message: str) -> None:
    print(f"[loadtest] {message}", file=sys.stderr, flush=True)


def _ids(conn: psycopg.Connection[Any], name: str) -> tuple[int, int]:
    row = conn.execute(QUERIES[name].encode()).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def prepare_database(settings: Settings) -> tuple[tuple[int, int], tuple[int, int]]:
    """Schema there, catalogue seeded (only when empty); returns product and category id ranges."""
    require_postgres(settings.database_url)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('products') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            say("no schema yet: python -m db upgrade")
            migrate.upgrade(settings.database_url)
        counts = seed.count(conn)
        if counts.products == 0:
            products = settings.loadtest_seed_products
            categories = settings.loadtest_seed_categories
            say(f"empty catalogue: seeding {products} products in {categories} categories")
            seed.seed(settings.database_url, products, categories)
            conn.execute("VACUUM (ANALYZE) products")  # index-only scans for the summaries
        return _ids(conn, "product_id_range"), _ids(conn, "category_id_range")


def drop_task_queue(settings: Settings, namespace: str) -> None:
    """Warm-up tasks the invalidator queued after the worker stopped: delete them (Redis
    brokers only; a RabbitMQ queue of a finished run is left to its broker)."""
    try:
        worker_settings = load_settings(
            WorkerSettings, redis_url=settings.redis_url, namespace=namespace
        )
    except ConfigError:
        return
    broker = worker_settings.broker_url
    if not broker.startswith(("redis://", "rediss://")):
        return
    client = redis.Redis.from_url(broker)
    try:
        queue = worker_settings.task_queue
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    except redis.RedisError:
        pass
    finally:
        client.close()


def drop_namespace(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        batch = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    except redis.RedisError as exc:
        say(f"could not clean namespace {namespace}: {exc}")
    finally:
        client.close()
