"""Writing benchmark results: one JSON file for machines, one Markdown table for people."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of a list of samples (empty -> zeros)."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[p99_index], 3),
        "max": round(ordered[-1], 3),
        "n": len(ordered),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(out: Path, name: str, data: dict[str, Any], table_md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "machine": machine(), **data}
    (out / f"{name}.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    (out / f"{name}.md").write_text(f"# {name}\n\n{table_md}")
