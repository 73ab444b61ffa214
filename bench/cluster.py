"""A private Postgres cluster with wal_level=logical for one benchmark run (WAL capture needs
it and the shared server may not have it), stopped and deleted afterwards. It runs with
fsync=off (tests.support.servers), unlike the shared server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import PostgresCluster

SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "shared_buffers": "256MB",
    "max_connections": "100",
}


@contextmanager
def logical_cluster() -> Iterator[PostgresCluster]:
    folder = Path(tempfile.mkdtemp(prefix="pgbust-bench-wal-"))
    cluster = PostgresCluster(folder, SETTINGS)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
