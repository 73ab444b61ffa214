"""One short real run of every mode: the runner starts its stack, Locust loads it, the oracle
judges every read. Loose bounds only (the benchmark reports the real figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from db import seed
from loadtest.runner import compare
from loadtest.settings import Settings
from tests.support.design import SUMMARY_FIELDS
from tests.support.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_modes(
    database_url: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, dict[str, Any]]]:
    seed.seed(database_url, products=200, categories=5, replace=True)
    out = tmp_path_factory.mktemp("loadtest")
    settings = Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        namespace="tlt",
        loadtest_users=14,
        loadtest_write_rps=40.0,
        loadtest_warmup_s=1.0,
        loadtest_ttl_s=30.0,
        loadtest_worker=False,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{redis_server.port}/1")
        summaries = compare(settings, out, duration_s=4)
    return out, summaries


@pytest.mark.parametrize("mode", ["nocache", "ttl", "cdc"])
def test_every_mode_writes_a_summary_with_reads_and_writes(
    three_modes: tuple[Path, dict[str, dict[str, Any]]], mode: str
) -> None:
    out, _ = three_modes
    summary = json.loads((out / mode / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["mode"] == mode
    assert summary["reads"] > 0
    assert summary["writes"] > 0
    assert summary["oob_writes"] > 0
    assert summary["judged_reads"] > 0
    assert summary["errors"] == 0
    assert summary["capture"] == ("notify" if mode == "cdc" else None)  # PGBUST_CAPTURE
    assert (out / mode / "locust_stats.csv").exists()
    assert (out / mode / "locust.html").exists()


def test_cdc_has_no_read_stale_by_a_second(
    three_modes: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    cdc = three_modes[1]["cdc"]
    assert cdc["stale_reads_over_1s"] == 0
    assert cdc["staleness_ms"]["max"] < 1000.0
    assert cdc["invalidation_lag_ms"]["n"] == cdc["writes"]
    assert cdc["writes_never_invalidated"] == 0


def test_ttl_is_judged_by_the_same_oracle_and_shows_stale_reads(
    three_modes: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ttl = three_modes[1]["ttl"]
    assert ttl["stale_reads"] > 0  # 200 products written ~40/s behind a 30 s TTL
    assert ttl["invalidation_lag_ms"]["p99"] is None  # no channel in ttl mode


def test_nocache_never_serves_a_stale_read(
    three_modes: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    assert three_modes[1]["nocache"]["stale_reads"] == 0


def test_compare_writes_the_table_json_and_chart(
    three_modes: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    out, _ = three_modes
    table = (out / "compare.md").read_text()
    assert "| nocache |" in table and "| ttl |" in table and "| cdc (notify) |" in table
    assert "cdc: changes captured with notify (PGBUST_CAPTURE)" in table
    assert set(json.loads((out / "compare.json").read_text())["modes"]) == {"nocache", "ttl", "cdc"}
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def _processes_with_env(marker: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_sigterm_stops_the_run_and_every_process_it_started(
    database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support.servers import wait_until

    seed.seed(database_url, products=200, categories=5, replace=True)
    namespace = f"tsig{os.getpid()}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/1",
        "PGBUST_NAMESPACE": namespace,
        "PGBUST_LOADTEST_USERS": "8",
        "PGBUST_LOADTEST_WRITE_RPS": "10",
        "PGBUST_LOADTEST_WORKER": "false",
    }
    log = tmp_path / "runner.log"
    with log.open("wb") as out:
        runner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest",
                "--mode",
                "cdc",
                "--duration",
                "60",
                "--out",
                str(tmp_path / "run"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    marker = f"PGBUST_NAMESPACE={namespace}-lt-".encode()
    try:
        assert wait_until(lambda: b"readers" in log.read_bytes(), timeout=40), log.read_text()
        assert _processes_with_env(marker), "the runner started no process"
        time.sleep(1.0)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=40) != 0
        assert wait_until(lambda: not _processes_with_env(marker), timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in _processes_with_env(marker):
            os.kill(pid, signal.SIGKILL)


def test_cdc_in_wal_mode_on_a_server_without_logical_wal_stops_before_any_mode_and_says_how(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """PGBUST_CAPTURE=wal on a server with wal_level = replica (a private cluster: initdb's
    default): the comparison stops at once with the setting to change, not after the first
    two modes with an invalidator that never goes live."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from pgbust.devservers import with_database
    from tests.support.servers import PostgresCluster

    folder = Path(tempfile.mkdtemp(prefix="pgbust-ltwal-"))  # outside basetemp: see wal tests
    cluster = PostgresCluster(folder)
    cluster.init()
    cluster.start()
    try:
        env = {
            **os.environ,
            "DATABASE_URL": with_database(cluster.admin_url, "postgres"),
            "REDIS_URL": redis_server.url,
            "PGBUST_CAPTURE": "wal",
            "PGBUST_LOADTEST_SEED_PRODUCTS": "20",
            "PGBUST_LOADTEST_SEED_CATEGORIES": "2",
        }
        done = subprocess.run(
            [sys.executable, "-m", "loadtest", "compare", "--duration", "3", "--out",
             str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PGBUST_CAPTURE=wal needs wal_level = logical, the server has replica" in done.stderr
    assert "ALTER SYSTEM SET wal_level = logical" in done.stderr
    assert "started" not in done.stderr, "a mode ran before the check"
