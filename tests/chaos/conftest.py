"""Fixtures of the chaos suite: one private stack per module, the results file, the mode.

Short form (default, part of `make test`): a few seconds per scenario. Full form
(`make chaos`: `pytest tests/chaos --chaos-full`, or PGBUST_CHAOS_FULL=1): longer faults,
more of them, more load; results in bench/results/chaos.json and chaos.md.

Capture modes: every scenario runs on a stack capturing with NOTIFY (`[notify]`); a scenario
marked `@pytest.mark.captures("notify", "wal", ...)` runs on a second stack too, one that
captures from the WAL (`[wal]`: PGBUST_CAPTURE=wal on a wal_level = logical cluster). The
modes named in `full_only` run only in the full form (a visible skip in the short one).
Tests are grouped per mode, so each module starts at most one stack per mode.
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


CAPTURES = ("notify", "wal")


def _full(config: pytest.Config) -> bool:
    return bool(config.getoption("--chaos-full")) or os.environ.get(
        "PGBUST_CHAOS_FULL", ""
    ) not in {"", "0"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "captures(*modes, full_only=()): tests/chaos: the capture modes a scenario runs in "
        "(default notify only); those in full_only only with --chaos-full",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the `stack` fixture with the capture modes of the test (see the doc)."""
    if "stack" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("captures")
    modes = tuple(marker.args) if marker else ("notify",)
    full_only = tuple(marker.kwargs.get("full_only", ())) if marker else ()
    assert set(modes) <= set(CAPTURES) and set(full_only) <= set(modes), marker
    full = _full(metafunc.config)
    params = [
        pytest.param(
            mode,
            id=mode,
            marks=[]
            if full or mode not in full_only
            else [
                pytest.mark.skip(reason=f"the {mode} variant runs with --chaos-full (make chaos)")
            ],
        )
        for mode in modes
    ]
    metafunc.parametrize("stack", params, indirect=True, scope="module")


@pytest.fixture(scope="session")
def chaos_full(request: pytest.FixtureRequest) -> bool:
    return _full(request.config)


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
        "capture",
        "faults",
        "reads",
        "writes",
        "reads in fault",
        "stale reads in fault",
        "stale after sweep",
        "recover s",
        "drain s",
        "worker restarts",
        "hit ratio",
        "epoch bumps",
        "passed",
    ]
    rows = [
        [
            r.scenario,
            r.capture,
            r.faults_injected,
            r.reads,
            r.writes,
            r.reads_during_fault,
            r.stale_reads_during_fault,
            r.stale_after_sweep,
            r.time_to_recover_s,
            r.drain_s,
            r.worker_restarts,
            r.cache_hit_ratio,
            r.epoch_bumps,
            "yes" if r.passed else "**no**",
        ]
        for r in records
    ]
    report.write(
        Path(override) if override else RESULTS_DIR, "chaos", data, markdown_table(header, rows)
    )


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChaosStack]:
    """One private stack per module and capture mode (request.param: notify | wal)."""
    root = Path(__file__).resolve().parents[2]
    missing = [m for m in ("api", "invalidator") if not (root / m / "__main__.py").exists()]
    if missing:
        pytest.skip(f"not built yet: {', '.join(missing)}")
    capture = str(getattr(request, "param", "notify"))
    stack = ChaosStack(tmp_path_factory.mktemp(f"chaos-{capture}"), capture)
    try:
        stack.start()
    except Exception:
        print(stack.logs(60))
        stack.stop()
        raise
    yield stack
    stack.stop()
