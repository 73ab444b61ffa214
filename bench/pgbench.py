"""pgbench, the write load of the benchmarks: where it is, how it is called, what it reports.

It ships with Debian's postgresql package (under /usr/lib/postgresql/<major>/bin), which
pgbust.devservers installs with apt-get when it is missing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pgbust.devservers import postgres_bindir

_TPS_RE = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def binary() -> str:
    found = postgres_bindir() / "pgbench"
    return str(found) if found.exists() else shutil.which("pgbench") or "pgbench"


def command(url: str, script: Path, clients: int, seconds: float, rate: int | None) -> list[str]:
    """`pgbench -n -f script` with `clients` clients for `seconds`, at `rate` transactions/s
    in total when given (else as fast as it can)."""
    cmd = [binary(), "-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2))]
    cmd += ["-T", str(max(1, round(seconds)))]
    if rate is not None:
        cmd += ["-R", str(rate)]
    return [*cmd, url]


def tps(output: str) -> float:
    match = _TPS_RE.search(output)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{output[-2000:]}")
    return float(match.group(1))
