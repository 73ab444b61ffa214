"""What the HTTP benchmarks share: server processes on loopback (the API, the invalidator, any
uvicorn app), wrk as the load driver (installed with apt-get when missing and possible), and
the parsing of its report."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import redis

from pgbust.devservers import apt_install, free_port

BENCH_TOKEN = secrets.token_hex(16)  # writes are not benchmarked; any valid token


class Server:
    def __init__(self, args: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, path: str, timeout: float = 30.0, expect: bytes = b"") -> None:
        """Until GET path answers 200 (with `expect` in its body, when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server on port {self.port} exited ({self.process.returncode})")
            with suppress(httpx.HTTPError):
                response = httpx.get(self.base_url + path, timeout=1)
                if response.status_code == 200 and expect in response.content:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} not ready after {timeout}s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) so far of every live process in this server's session
        (it leads a process group of its own)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.process.pid:  # fields[2] is the process group
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _pgbust_env(
    database_url: str,
    redis_url: str,
    namespace: str,
    settings: dict[str, str],
    broker_url: str | None = None,
) -> dict[str, str]:
    """`broker_url`: CELERY_BROKER_URL (a process on a Redis Cluster must be given a broker
    beside it: Celery has no Redis Cluster transport)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_TOKEN": BENCH_TOKEN,
        "PGBUST_NAMESPACE": namespace,
        "PGBUST_LOG_LEVEL": "WARNING",
        **{f"PGBUST_{key.upper()}": value for key, value in settings.items()},
    }
    if broker_url is not None:
        env["CELERY_BROKER_URL"] = broker_url
    return env


def _on_a_cluster(settings: dict[str, str]) -> bool:
    return settings.get("redis_cluster", "false").lower() == "true"


@contextmanager
def api_server(
    database_url: str,
    redis_url: str,
    log: Path,
    namespace: str | None = None,
    broker_url: str | None = None,
    **settings: str,
) -> Iterator[Server]:
    """One `python -m api` process; instances given the same namespace share L2 and the
    invalidation channel (each keeps its own L1)."""
    port = free_port()
    namespace = namespace or f"bench-http-{uuid.uuid4().hex[:8]}"
    env = _pgbust_env(database_url, redis_url, namespace, settings, broker_url)
    server = Server(["api", "--port", str(port)], env, port, log)
    try:
        server.wait_ready("/healthz")
        yield server
    finally:
        server.stop()
        drop_namespace(redis_url, namespace, cluster=_on_a_cluster(settings))


@contextmanager
def invalidator_server(
    database_url: str,
    redis_url: str,
    log: Path,
    namespace: str,
    broker_url: str | None = None,
    **settings: str,
) -> Iterator[Server]:
    """`python -m invalidator` for a namespace, ready once it is the active one (its advisory
    lock id derives from the namespace, so it never stands by behind another run's)."""
    port = free_port()
    env = _pgbust_env(database_url, redis_url, namespace, settings, broker_url)
    server = Server(["invalidator", "--metrics-port", str(port)], env, port, log)
    try:
        server.wait_ready("/healthz", expect=b'"role":"active"')
        yield server
    finally:
        server.stop()


def drop_namespace(redis_url: str, namespace: str, *, cluster: bool = False) -> None:
    """Every key of the namespace; on a cluster the scan visits every master and the unlinks
    are split per slot by redis-py (there a key starts with its hash tag, then the
    namespace)."""
    client: redis.Redis | redis.RedisCluster = (
        redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    )
    pattern = f"*{namespace}:*" if cluster else f"{namespace}:*"
    try:
        batch = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(batch), 1000):
            client.unlink(*batch[start : start + 1000])
    finally:
        client.close()


# --- wrk ---------------------------------------------------------------------------------------


def ensure_wrk() -> None:
    """Install wrk with apt-get when it is missing and we may (as devservers does for the
    servers): the httpx fallback driver saturates its own CPU before the server's, so its
    ratios say little."""
    if shutil.which("wrk") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    try:
        apt_install("wrk")
    except (SystemExit, subprocess.CalledProcessError) as exc:
        print(f"bench: could not install wrk ({exc})", file=sys.stderr)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out: str) -> dict[str, Any]:
    """requests/s, p50/p99 (of `--latency`), requests and errors from wrk's report."""
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(non_2xx[1]) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[1]))
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": round(_ms(latency.get("50", "nan")), 3),
        "p99_ms": round(_ms(latency.get("99", "nan")), 3),
        "requests": requests,
        "errors": errors,
        "driver": "wrk",
    }


def wrk_command(
    url: str, seconds: float, connections: int, threads: int = 1, script: Path | None = None
) -> list[str]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if script is not None:
        args += ["-s", str(script)]
    return [*args, url]


def run_wrk(
    url: str, seconds: float, connections: int, threads: int = 1, script: str | None = None
) -> dict[str, Any]:
    """wrk against url for `seconds`, optionally driven by a Lua script (its text)."""
    if script is None:
        command = wrk_command(url, seconds, connections, threads)
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        command = wrk_command(url, seconds, connections, threads, Path(file.name))
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(file.name)
    return parse_wrk(out)
