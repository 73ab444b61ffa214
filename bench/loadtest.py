"""Benchmark: the three-mode staleness load test (python -m loadtest compare), longer runs:
two rounds of 60 s per mode, in the order nocache ttl cdc cdc ttl nocache (quick: 10 s once).

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
ROUNDS = 2  # each mode runs twice, in the order nocache ttl cdc cdc ttl nocache


def run(out: Path, quick: bool) -> None:
    rounds = 1 if quick else ROUNDS
    duration = QUICK_S if quick else FULL_S * ROUNDS
    settings = load_settings(Settings)
    folder = out / "loadtest"
    summaries = compare(settings, folder, duration, rounds=rounds)
    modes = {mode: {k: v for k, v in s.items() if k != "timeline"} for mode, s in summaries.items()}
    table = markdown(summaries) + "\n![latency and staleness over time](loadtest.png)\n"
    write(
        out,
        "loadtest",
        {
            "duration_s": duration,
            "rounds": rounds,
            "quick": quick,
            "modes": modes,
            "headline": headline(summaries),
        },
        table,
    )
    shutil.copyfile(folder / "compare.png", out / "loadtest.png")
