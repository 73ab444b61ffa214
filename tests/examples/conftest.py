"""The blog example's stack, for its tests: a database of its own migrated from the blog's
declaration, the same invalidator and Celery worker as the demo's, and two blog instances,
all real processes reading PGBUST_CONFIG=examples/blog/pgbust.toml."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from db import migrate
from pgbust import declaration
from pgbust.declaration import Declaration
from pgbust.devservers import free_port
from tests.conftest import project_env
from tests.support.databases import own_database
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer

BLOG_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "blog" / "pgbust.toml"


@dataclass
class BlogStack:
    database_url: str
    redis_url: str
    namespace: str
    declaration: Declaration
    instances: list[ManagedProcess]
    invalidator: ManagedProcess
    worker: ManagedProcess
    procs: ProcessManager

    @property
    def urls(self) -> list[str]:
        return [instance.base_url for instance in self.instances]


@pytest.fixture(scope="module")
def blog_database(server_urls: dict[str, str]) -> Iterator[str]:
    """A database holding only the blog (its migrations, its capture triggers)."""
    with own_database(server_urls["DATABASE_URL"], "pgbust_blog") as url:
        migrate.upgrade(url, declaration.load(BLOG_CONFIG))
        yield url


@pytest.fixture(scope="module")
def blog(
    blog_database: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BlogStack]:
    namespace = f"blog{uuid.uuid4().hex[:8]}"
    env = project_env(blog_database, redis_server, namespace)
    env["PGBUST_CONFIG"] = str(BLOG_CONFIG)
    procs = ProcessManager(env, tmp_path_factory.mktemp("blog"))
    try:
        invalidator = procs.invalidator()
        worker = procs.celery_worker()
        instances = []
        for name in ("blog-a", "blog-b"):
            port = free_port()
            args = [
                "uvicorn",
                "examples.blog.app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            instances.append(procs.spawn(name, args, port=port).wait_http_ok())
        yield BlogStack(
            database_url=blog_database,
            redis_url=redis_server.url,
            namespace=namespace,
            declaration=declaration.load(BLOG_CONFIG),
            instances=instances,
            invalidator=invalidator,
            worker=worker,
            procs=procs,
        )
    finally:
        procs.stop_all()
