"""The processes a run starts (API instances, invalidator, Celery worker) and stops again."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from pgbust.errors import StartupError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One subprocess in a session of its own (Ctrl-C reaches the runner, which stops it)."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = logs / f"{name}.log"
        logs.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_http_ok(self, url: str, timeout_s: float, expect: bytes = b"") -> None:
        """Until GET url answers 200 (with `expect` in its body, when given)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited at start; see {self.log_path}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310
                    if response.status == 200 and expect in response.read():
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise StartupError(f"{self.name} not healthy after {timeout_s:g}s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after timeout_s; the whole process group goes."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # uvicorn or celery children
        return self.process.returncode

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every live process in this child's process group."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.process.pid:  # fields[2] is the pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"


class Stack:
    """Everything one mode needs, started in order and stopped in reverse."""

    def __init__(self, env: Mapping[str, str], logs: Path, startup_timeout_s: float) -> None:
        self.env = dict(env)
        self.logs = logs
        self.timeout = startup_timeout_s
        self.children: list[Child] = []
        self.api_urls: list[str] = []

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Child:
        child = Child(name, [sys.executable, "-m", *args], {**self.env, **(env or {})}, self.logs)
        self.children.append(child)
        return child

    def start_apis(self, count: int, env: Mapping[str, str]) -> list[str]:
        started = []
        for index in range(1, count + 1):
            port = free_port()
            child = self._spawn(f"api-{index}", ["api", "--port", str(port)], env)
            started.append((child, f"http://127.0.0.1:{port}"))
        for child, url in started:  # start together, wait together
            child.wait_http_ok(url + "/healthz", self.timeout)
            self.api_urls.append(url)
        return self.api_urls

    def start_invalidator(self, warm_top: int) -> str:
        """The run's own invalidator, active (not standby behind another namespace's one: the
        advisory lock that elects one per database gets an id of this run's own), re-warming
        the top `warm_top` hot entries after invalidating them (0 = no warming)."""
        port = free_port()
        lock_id = str(secrets.randbelow(2**62) + 1)
        child = self._spawn(
            "invalidator",
            ["invalidator", "--metrics-port", str(port)],
            {"PGBUST_INVALIDATOR_LOCK_ID": lock_id, "PGBUST_WARM_TOP": str(warm_top)},
        )
        url = f"http://127.0.0.1:{port}"
        child.wait_http_ok(url + "/healthz", self.timeout, expect=b'"role":"active"')
        return url

    def start_worker(self) -> None:
        args = ["celery", "-A", "worker", "worker", "--loglevel=WARNING", "--concurrency=1"]
        child = self._spawn("worker", args)
        time.sleep(0.5)
        if not child.alive():
            raise StartupError(f"celery worker exited at start; see {child.log_path}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each started process (with its own children)."""
        return {child.name: round(child.cpu_seconds(), 2) for child in self.children}

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
