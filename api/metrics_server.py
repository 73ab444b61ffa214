"""One /metrics port per uvicorn worker process (PGBUST_API_METRICS_PORT).

With `--workers N` the main port's /metrics answers from whichever worker accepted the
connection, so a scrape sees one worker at a time, a different one each time. Each worker
keeps its own L1 and subscriber, and those are exactly the series an operator must see per
worker (is *this* one subscribed? how big is *its* L1?). So each worker serves its registry on
a port of its own: the first free one of [first, first + workers). Binding is atomic, so the
workers settle on distinct ports without talking to each other, and a worker that uvicorn
restarts takes the port its predecessor freed.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from pgbust.errors import StartupError

log = logging.getLogger(__name__)


class WorkerMetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread, port: int) -> None:
        self.server, self.thread, self.port = server, thread, port

    @classmethod
    def start(
        cls,
        registry: CollectorRegistry,
        first_port: int,
        workers: int,
        host: str = "0.0.0.0",  # noqa: S104 - scraped over the compose network; no secrets on it
    ) -> WorkerMetricsServer:
        for port in range(first_port, first_port + workers):
            try:
                server, thread = start_http_server(port, addr=host, registry=registry)
            except OSError:
                continue  # another worker of this process group (or something else) has it
            log.info("this worker's metrics on :%d/metrics", port)
            return cls(server, thread, port)
        last = first_port + workers - 1
        raise StartupError(
            f"PGBUST_API_METRICS_PORT: no free port in {first_port}-{last} for this worker's "
            "/metrics (one per worker; something else holds them)"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
