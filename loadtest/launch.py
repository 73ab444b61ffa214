"""Locust as a subprocess: headless, its reports in the run's folder, its progress relayed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

from loadtest.plan import PLAN_ENV, Plan
from pgbust.errors import StartupError

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _relay(stream: TextIO, log: Path, quiet: bool) -> None:
    with log.open("a") as out:
        for line in stream:
            out.write(line)
            if "[progress]" in line and not quiet:
                print("  " + line.strip().replace("[progress] ", ""), file=sys.stderr, flush=True)


def run_locust(plan: Plan, env: dict[str, str], out: Path, duration_s: int, quiet: bool) -> None:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(plan.users),
        "--spawn-rate",
        str(plan.users),
        "--run-time",
        f"{duration_s}s",
        "--stop-timeout",
        "2",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
        *plan.user_classes,
    ]
    locust = subprocess.Popen(
        cmd,
        env={**env, PLAN_ENV: plan.to_json()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert locust.stdout is not None
    relay = threading.Thread(target=_relay, args=(locust.stdout, out / "locust.log", quiet))
    relay.start()
    try:
        locust.wait(timeout=duration_s + 60)
    finally:
        if locust.poll() is None:  # interrupted: let locust stop and write its reports
            locust.send_signal(signal.SIGTERM)
            try:
                locust.wait(timeout=15)
            except subprocess.TimeoutExpired:
                locust.kill()
                locust.wait()
        relay.join(timeout=5)
    if locust.returncode not in (0, None):
        raise StartupError(f"locust exited with {locust.returncode}; see {out / 'locust.log'}")
