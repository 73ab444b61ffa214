"""Fixtures of the chaos suite: one private stack per module, the results file, the mode.

Short form (default, part of `make test`): a few seconds per scenario. Full form
(`make chaos`: `pytest tests/chaos --chaos-full`, or PGBUST_CHAOS_FULL=1): longer faults,
more of them, more load; results in bench/results/chaos.json and chaos.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import report
from bench.report import markdown_table
from tests.chaos.stack import ChaosStack, ScenarioRecord

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture(scope="session")
def chaos_full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-full")) or os.environ.get(
        "PGBUST_CHAOS_FULL", ""
    ) not in {"", "0"}


@pytest.fixture(scope="session")
def chaos_results(chaos_full: bool) -> Iterator[list[ScenarioRecord]]:
    """Collects one record per scenario; written as bench/results/chaos.json (+ .md) by the
    full run. The short run (make test) writes only where PGBUST_CHAOS_OUT points."""
    records: list[ScenarioRecord] = []
    started = time.time()
    yield records
    override = os.environ.get("PGBUST_CHAOS_OUT", "")
    if not records or not (chaos_full or override):
        return
    data = {
        "mode": "full" if chaos_full else "short",
        "duration_s": round(time.time() - started, 1),
        "all_passed": all(record.passed for record in records),
        "stale_after_sweep_total": sum(max(0, r.stale_after_sweep) for r in records),
        "scenarios": [asdict(record) for record in records],
    }
    header = [
        "scenario",
        "faults",
        "reads",
        "writes",
        "reads in fault",
        "stale reads in fault",
        "stale after sweep",
        "recover s",
        "drain s",
        "worker restarts",
        "passed",
    ]
    rows = [
        [
            r.scenario,
            r.faults_injected,
            r.reads,
            r.writes,
            r.reads_during_fault,
            r.stale_reads_during_fault,
            r.stale_after_sweep,
            r.time_to_recover_s,
            r.drain_s,
            r.worker_restarts,
            "yes" if r.passed else "**no**",
        ]
        for r in records
    ]
    report.write(
        Path(override) if override else RESULTS_DIR, "chaos", data, markdown_table(header, rows)
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    root = Path(__file__).resolve().parents[2]
    missing = [m for m in ("api", "invalidator") if not (root / m / "__main__.py").exists()]
    if missing:
        pytest.skip(f"not built yet: {', '.join(missing)}")
    stack = ChaosStack(tmp_path_factory.mktemp("chaos"))
    try:
        stack.start()
    except Exception:
        print(stack.logs(60))
        stack.stop()
        raise
    yield stack
    stack.stop()
