"""`python -m api --workers 2` with PGBUST_API_METRICS_PORT: each uvicorn worker serves its own
/metrics on a port of its own, so Prometheus sees every worker, each scrape the same one."""

from __future__ import annotations

import socket

import httpx

from db.seed import Counts
from pgbust.devservers import free_port
from tests.support.processes import ProcessManager
from tests.support.servers import wait_until


def _two_free_ports() -> int:
    """A port P with P + 1 free as well."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _requests_seen(port: int) -> float:
    """Requests this worker's registry has counted (all routes, all statuses)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pgbust_api_request_seconds_count")
    )


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_each_uvicorn_worker_serves_its_own_metrics_port(
    seeded: Counts, procs: ProcessManager
) -> None:
    first, port = _two_free_ports(), free_port()
    env = {"PGBUST_WORKERS": "2", "PGBUST_API_METRICS_PORT": str(first)}
    api = procs.spawn("api", ["api", "--port", str(port)], env=env, port=port).wait_http_ok()
    assert wait_until(lambda: _answers(first) and _answers(first + 1), timeout=20)
    before = _requests_seen(first) + _requests_seen(first + 1)
    with httpx.Client(base_url=api.base_url, timeout=5) as client:
        for i in range(40):
            assert client.get(f"/products/{1 + i % 5}").status_code == 200
    # every request was counted by exactly one worker, and the two ports are two workers
    assert _requests_seen(first) + _requests_seen(first + 1) - before == 40
    assert "pgbust_api_subscriber_connected" in httpx.get(f"http://127.0.0.1:{first}/metrics").text
