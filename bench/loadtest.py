"""Benchmark: the three-mode staleness load test (python -m loadtest compare), longer runs.

Writes <out>/loadtest.json and loadtest.md (the comparison table), loadtest.png (the chart)
and every mode's summary.json, Locust CSV and HTML under <out>/loadtest/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.report import write
from loadtest.report import headline, markdown
from loadtest.runner import compare
from loadtest.settings import Settings
from pgbust.settings import load_settings

FULL_S = 60
QUICK_S = 10


def run(out: Path, quick: bool) -> None:
    duration = QUICK_S if quick else FULL_S
    settings = load_settings(Settings)
    folder = out / "loadtest"
    summaries = compare(settings, folder, duration)
    modes = {mode: {k: v for k, v in s.items() if k != "timeline"} for mode, s in summaries.items()}
    table = markdown(summaries) + "\n![latency and staleness over time](loadtest.png)\n"
    write(
        out,
        "loadtest",
        {"duration_s": duration, "quick": quick, "modes": modes, "headline": headline(summaries)},
        table,
    )
    shutil.copyfile(folder / "compare.png", out / "loadtest.png")
