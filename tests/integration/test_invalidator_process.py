"""`python -m invalidator` as a real process: standby takeover, SIGTERM, configuration errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg

from db.seed import Counts
from pgbust.keys import Keyspace
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.servers import wait_until

Conn = psycopg.Connection[tuple[Any, ...]]


def role(proc: ManagedProcess) -> str | None:
    try:
        body = httpx.get(proc.base_url + "/healthz", timeout=0.5).json()
    except httpx.HTTPError:
        return None
    return str(body["role"])


def metric(proc: ManagedProcess, name: str) -> float:
    text = httpx.get(proc.base_url + "/metrics", timeout=2).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_standby_takes_over_within_2s_after_the_active_one_is_killed(
    seeded: Counts, procs: ProcessManager, pg: Conn, keyspace: Keyspace, redis_client: Any
) -> None:
    active = procs.invalidator("inv-a")
    assert wait_until(lambda: role(active) == "active", timeout=10)
    standby = procs.invalidator("inv-b")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    time.sleep(0.5)
    assert role(standby) == "standby", "two actives at once"

    active.kill()  # SIGKILL: no chance to release anything
    killed_at = time.monotonic()
    assert wait_until(lambda: role(standby) == "active", timeout=2.0)
    took = time.monotonic() - killed_at
    assert took < 2.0
    # the new active one listens: a write is seen and applied
    before = metric(standby, "pgbust_invalidator_events_total")
    assert wait_until(lambda: metric(standby, "pgbust_invalidator_batches_total") >= 1)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 4")
    assert wait_until(lambda: metric(standby, "pgbust_invalidator_events_total") > before)
    assert redis_client.get(keyspace.epoch) is not None  # takeover bumped the epoch


def test_sigterm_drains_and_exits_0(seeded: Counts, procs: ProcessManager, pg: Conn) -> None:
    proc = procs.invalidator()
    assert wait_until(lambda: role(proc) == "active", timeout=10)
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 5")
    proc.signal(signal.SIGTERM)
    assert proc.process is not None
    assert proc.process.wait(timeout=10) == 0
    assert "stopped" in proc.log_tail()


def test_standby_exits_0_on_sigterm_too(procs: ProcessManager) -> None:
    active = procs.invalidator("inv-a")
    assert wait_until(lambda: role(active) == "active", timeout=10)
    standby = procs.invalidator("inv-b")
    assert wait_until(lambda: role(standby) == "standby", timeout=5)
    assert standby.stop() == 0
    assert active.stop() == 0


def test_bad_configuration_is_one_line_and_exit_2(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invalidator"],
        env={**stack_env, "PGBUST_BATCH_MAX": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PGBUST_BATCH_MAX" in lines[0]


def test_unreachable_postgres_is_one_line_and_exit_1(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invalidator"],
        env={**stack_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "DATABASE_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_metrics_port_in_use_is_one_line_and_exit_1(stack_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "invalidator", "--metrics-port", str(port)],
            env={**stack_env, "PGBUST_INVALIDATOR_METRICS_HOST": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "metrics-port" in lines[0], result.stderr
