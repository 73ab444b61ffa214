"""Start project processes (API, invalidator, Celery workers) as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from pgbust.devservers import free_port


class ManagedProcess:
    def __init__(
        self, name: str, cmd: list[str], env: Mapping[str, str], log_dir: Path, port: int | None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.env = dict(env)
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} has no port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 20.0) -> ManagedProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if check():
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def wait_http_ok(self, path: str = "/healthz", timeout: float = 20.0) -> ManagedProcess:
        def ok() -> bool:
            return httpx.get(self.base_url + path, timeout=1.0).status_code == 200

        return self.wait_ready(ok, timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the process and everything it started."""
        if self.process is not None and self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.process is None:
            return None
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # children (uvicorn workers, celery pool) go with the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"


class ProcessManager:
    """Owns every process a test starts and stops them all at teardown."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        python_module: bool = True,
    ) -> ManagedProcess:
        cmd = [sys.executable, "-m", *args] if python_module else args
        proc = ManagedProcess(name, cmd, {**self.env, **(env or {})}, self.log_dir, port)
        self.processes.append(proc)
        return proc.start()

    def api(self, name: str = "api", env: Mapping[str, str] | None = None) -> ManagedProcess:
        port = free_port()
        return self.spawn(name, ["api", "--port", str(port)], env=env, port=port).wait_http_ok()

    def invalidator(
        self, name: str = "invalidator", env: Mapping[str, str] | None = None, wait: bool = True
    ) -> ManagedProcess:
        port = free_port()
        proc = self.spawn(
            name,
            ["invalidator", "--metrics-port", str(port)],
            env=env,
            port=port,
        )
        if not wait:
            return proc

        def settled() -> bool:
            """A standby, or an active one that listens and has proven it (capture live)."""
            body = httpx.get(proc.base_url + "/healthz", timeout=1.0).json()
            capture = body.get("capture") or {}
            return body.get("role") == "standby" or bool(capture.get("capture_live"))

        return proc.wait_ready(settled)

    def celery_worker(
        self,
        name: str = "worker",
        env: Mapping[str, str] | None = None,
        extra: list[str] | None = None,
    ) -> ManagedProcess:
        args = [
            "celery",
            "-A",
            "worker",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--hostname",
            f"{name}@%h",
            *(extra or []),
        ]
        return self.spawn(name, args, env=env)

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
