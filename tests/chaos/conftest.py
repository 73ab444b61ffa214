"""Fixtures of the chaos suite: one private stack per module, the results file, the mode.

Short form (default, part of `make test`): a few seconds per scenario. Full form
(`make chaos`: `pytest tests/chaos --chaos-full`, or PGBUST_CHAOS_FULL=1): longer faults,
more of them, more load; results in bench/results/chaos.json (short: chaos-short.json).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.chaos.stack import ChaosStack, ScenarioRecord

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture(scope="session")
def chaos_full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-full")) or os.environ.get(
        "PGBUST_CHAOS_FULL", ""
    ) not in {"", "0"}


@pytest.fixture(scope="session")
def chaos_results(chaos_full: bool) -> Iterator[list[ScenarioRecord]]:
    records: list[ScenarioRecord] = []
    started = time.time()
    yield records
    if not records:
        return
    override = os.environ.get("PGBUST_CHAOS_OUT", "")
    out = Path(override) if override else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = "chaos.json" if chaos_full else "chaos-short.json"
    data = {
        "mode": "full" if chaos_full else "short",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "scenarios": [asdict(record) for record in records],
        "all_passed": all(record.passed for record in records),
        "stale_after_sweep_total": sum(max(0, r.stale_after_sweep) for r in records),
    }
    (out / name).write_text(json.dumps(data, indent=2) + "\n")


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
