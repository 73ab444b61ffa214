"""Shared fixtures: a fresh database per test session, a private Redis, process helpers.

Unit tests (tests/unit) use none of these and need no server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from db import migrate, seed
from pgbust.devservers import choose
from pgbust.keys import Keyspace
from tests.support.databases import own_database
from tests.support.design import SLOW_US
from tests.support.heartbeat import HeartbeatPlayer
from tests.support.processes import ProcessManager
from tests.support.redis_cluster import RedisClusterServers
from tests.support.servers import RedisServer

API_TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def server_urls() -> dict[str, str]:
    """The servers chosen by `make services` (env), or found/started the same way."""
    if os.environ.get("DATABASE_URL"):
        return {"DATABASE_URL": os.environ["DATABASE_URL"]}
    return choose()


@pytest.fixture(scope="session")
def database_url(server_urls: dict[str, str]) -> Iterator[str]:
    """A database of this session's own, migrated, dropped at the end."""
    with own_database(server_urls["DATABASE_URL"], "pgbust_test") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session: tests may flush, stop or inspect it freely."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop(keep_snapshot=False)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private Redis Cluster for the session (3 masters, 1 replica each). Tests that break a
    node start their own RedisClusterServers instead."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keyspace(namespace: str) -> Keyspace:
    return Keyspace(namespace)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def live_capture(redis_server: RedisServer, keyspace: Keyspace) -> Iterator[HeartbeatPlayer]:
    """For tests without an invalidator that send every invalidation themselves: they beat in
    its place, so that the API's caches serve (tests/support/heartbeat.py)."""
    player = HeartbeatPlayer(redis_server.url, keyspace).start()
    yield player
    player.stop()


@pytest.fixture
def slowlog(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The private Redis, with SLOWLOG recording every command slower than SLOW_US."""
    before = str(next(iter(redis_client.config_get("slowlog-log-slower-than").values())))
    redis_client.config_set("slowlog-log-slower-than", SLOW_US)
    redis_client.config_set("slowlog-max-len", 1_024)
    redis_client.slowlog_reset()
    yield redis_client
    redis_client.config_set("slowlog-log-slower-than", before)


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test database, as psql would be."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def seeded(database_url: str) -> seed.Counts:
    """A small, known catalogue: 5 categories, 100 products (product i in category 1 + i % 5)."""
    return seed.seed(database_url, products=100, categories=5, replace=True)


def project_env(database_url: str, redis_server: RedisServer, namespace: str) -> dict[str, str]:
    """Environment for project subprocesses: this session's servers, a namespace of their own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "API_TOKEN"}
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_server.url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/1",
        API_TOKEN=API_TOKEN,
        PGBUST_NAMESPACE=namespace,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def stack_env(database_url: str, redis_server: RedisServer, namespace: str) -> dict[str, str]:
    """Environment for project subprocesses of one test."""
    return project_env(database_url, redis_server, namespace)


@pytest.fixture
def procs(stack_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessManager]:
    manager = ProcessManager(stack_env, tmp_path)
    yield manager
    manager.stop_all()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of test folders (pytest reads pytest_addoption only from the root conftest)."""
    parser.addoption(
        "--chaos-full",
        action="store_true",
        default=False,
        help="tests/chaos: run every fault scenario at full length (make chaos)",
    )
