"""A real stack for the capture tests (one invalidator and two API instances, real processes)
and the proof they use: after an out-of-band change, every entry of every tier (each
instance's L1, Redis) equals the database (the chaos suite's final sweep)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import project_env
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import RedisServer, wait_until
from tests.support.sweep import SweepResult, final_sweep, wait_propagated

# The capture check runs this often in the tests' invalidators (PGBUST_CAPTURE_CHECK_S).
CHECK_S = 0.2


def metric(proc: ManagedProcess, name: str, labels: str = "") -> float:
    """One sample of a process's /metrics (0 when absent)."""
    text = httpx.get(proc.base_url + "/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted + " ")
    )


@dataclass
class Stack:
    database_url: str
    redis_url: str
    namespace: str
    processes: ProcessManager
    invalidator: ManagedProcess
    apis: tuple[ManagedProcess, ManagedProcess]
    probe_id: int = 1  # the product the drain's probe write updates
    probe_url: str | None = None  # where the probe is written (default: the stack's database)
    cluster: bool = False  # redis_url names a node of a Redis Cluster

    @property
    def api_urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    def sweep(self) -> SweepResult:
        return final_sweep(
            self.api_urls,
            self.database_url,
            redis_url=self.redis_url,
            namespace=self.namespace,
            cluster=self.cluster,
        )

    def prime(self) -> None:
        """Read every entry from every instance (filling L1 and Redis); all of it is fresh.
        Drains first, so that no flush still on its way empties the caches afterwards."""
        self.drain()
        result = self.sweep()
        assert result.stale == 0, result.report()
        assert result.redis_checked > 0

    def drain(self) -> None:
        """A captured write committed after the change is visible everywhere: everything the
        change announced before it has been applied (NOTIFY and pub/sub keep commit order)."""
        url = self.probe_url or self.database_url
        took = wait_propagated(self.api_urls, url, self.probe_id, 15)
        assert took is not None, "the probe write never reached every instance"

    def assert_every_tier_fresh(self) -> None:
        self.drain()
        result = self.sweep()
        assert result.stale == 0, f"stale after the change:\n{result.report()}"

    def epoch_bumps(self, why: str) -> float:
        return metric(self.invalidator, "pgbust_invalidator_epoch_bumps_total", f'why="{why}"')

    def capture_ok(self, table: str) -> float | None:
        text = httpx.get(self.invalidator.base_url + "/metrics", timeout=5).text
        wanted = f'pgbust_invalidator_capture_ok{{table="{table}"}} '
        for line in text.splitlines():
            if line.startswith(wanted):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_epoch_bumps(
        self, why: str, after: float, count: int = 1, timeout: float = 20 * CHECK_S
    ) -> None:
        """Wait until `count` more epoch bumps for `why` than `after` were applied."""
        assert wait_until(lambda: self.epoch_bumps(why) >= after + count, timeout), (
            f"not {count} epoch bump(s) why={why} within {timeout} s:\n"
            + self.invalidator.log_tail()
        )

    def log(self) -> str:
        return self.invalidator.log_path.read_text(errors="replace")

    def db(self, *args: str) -> subprocess.CompletedProcess[str]:
        """python -m db ... against this stack's database (never raises on exit codes)."""
        return subprocess.run(
            [sys.executable, "-m", "db", *args, "--database-url", self.database_url],
            capture_output=True,
            text=True,
            timeout=60,
        )


def start_stack(
    database_url: str,
    redis_server: RedisServer,
    folder: Path,
    env: Mapping[str, str] | None = None,
) -> Stack:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    manager = ProcessManager(
        {
            **project_env(database_url, redis_server, namespace),
            "PGBUST_CAPTURE_CHECK_S": str(CHECK_S),
            **(env or {}),
        },
        folder,
    )
    try:
        invalidator = manager.invalidator()
        assert wait_until(
            lambda: (
                httpx.get(invalidator.base_url + "/healthz", timeout=2).json()["role"] == "active"
            )
        )
        apis = (manager.api("api-a"), manager.api("api-b"))
    except BaseException:
        manager.stop_all()
        raise
    return Stack(database_url, redis_server.url, namespace, manager, invalidator, apis)
