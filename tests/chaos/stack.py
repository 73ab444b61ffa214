"""The whole pgbust stack on private servers, for fault injection.

A private Postgres cluster and a private redis-server (both may be stopped and restarted at
will), capturing changes as `capture` says (notify: the NOTIFY triggers; wal: a cluster with
wal_level = logical, set up by `python -m db upgrade` with PGBUST_CAPTURE=wal), two API
instances that reach Redis through a TcpProxy (so the network between API and Redis can be
delayed or cut), the invalidator plus a standby, and a Celery worker. `heal()` brings back
whatever a scenario killed, so one stack serves every scenario of a module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from db import migrate, seed
from pgbust.keys import Keyspace
from pgbust.settings import wal_name
from tests.support.load import LoadDriver
from tests.support.memory import unlimit_memory
from tests.support.processes import ManagedProcess, ProcessManager
from tests.support.proxy import TcpProxy
from tests.support.servers import PostgresCluster, RedisServer, wait_until
from tests.support.sweep import SweepResult, final_sweep, queue_empty, wait_propagated

API_TOKEN = "chaos-token-0123456789"
PRODUCTS = 120
CATEGORIES = 5
# the last two products are never written by the load: drain / recovery probes only
DRAIN_PROBE = PRODUCTS
RECOVERY_PROBE = PRODUCTS - 1


@dataclass
class ScenarioRecord:
    """One line of bench/results/chaos.json."""

    scenario: str
    capture: str = "notify"  # PGBUST_CAPTURE of the stack
    faults_injected: int = 0
    reads: int = 0
    writes: int = 0
    reads_during_fault: int = 0
    writes_during_fault: int = 0
    stale_reads_during_fault: int = 0
    stale_reads_total: int = 0
    stale_reads_by_tier: dict[str, int] = field(default_factory=dict)  # X-Cache of stale reads
    max_staleness_ms: float = 0.0  # of the stale reads: since the newer version's ack
    # per load.mark(): reads after the mark that returned a version outdated before it
    stale_reads_outdated_at_mark: dict[str, int] = field(default_factory=dict)
    stale_read_samples: list[str] = field(default_factory=list)  # the first 20, for diagnosis
    read_errors: int = 0
    write_errors: int = 0
    error_statuses: dict[str, int] = field(default_factory=dict)
    leaked_internals: int = 0
    stale_after_sweep: int = -1
    sweep_checked: int = 0
    redis_entries_checked: int = 0
    time_to_recover_s: float | None = None
    drain_s: float | None = None
    worker_restarts: int = 0  # Celery workers that exited and were restarted (a supervisor's job)
    # reads served from a cache (X-Cache L1 or L2) of all reads: a flush shows here
    cache_hit_ratio: float = 0.0
    # epoch bumps (every tier flushed) from load start to the end of the drain, and why;
    # -1 when they could not be counted (the flush watch lost its subscription)
    epoch_bumps: int = 0
    flush_reasons: list[str] = field(default_factory=list)
    passed: bool = False
    notes: list[str] = field(default_factory=list)


TAKEOVER_AFTER_S = 1.5
GIVE_UP_AFTER_S = 3.0


# what WAL capture needs of the server; the replication connections of two invalidators, their
# stale walsenders during a takeover and the admin sessions fit well under these
WAL_SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
}


class ChaosStack:
    def __init__(self, root: Path, capture: str = "notify") -> None:
        assert capture in {"notify", "wal"}, capture
        self.root = root
        self.capture = capture
        # not under pytest's basetemp: every pytest run (other sessions too) chmods
        # /tmp/pytest-of-<user> to 0700, which would lock the postgres user out of its data
        self._pg_root = Path(tempfile.mkdtemp(prefix="pgbust-chaos-pg-"))
        self.postgres = PostgresCluster(
            self._pg_root / "pg", WAL_SERVER_SETTINGS if capture == "wal" else None
        )
        self.redis = RedisServer(root / "redis")
        # The Celery broker is a Redis of its own, as the README advises for production: the
        # cache's Redis is what the scenarios stop and restart, and kombu's Redis transport does
        # not always survive its broker restarting with unacknowledged tasks (celery#10205).
        self.broker = RedisServer(root / "broker")
        self.proxy: TcpProxy | None = None  # API instances -> Redis
        # the invalidators' own paths, so that one of their connections can go silent
        self.invalidator_pg_proxy: TcpProxy | None = None
        self.invalidator_redis_proxy: TcpProxy | None = None
        self.namespace = f"chaos{uuid.uuid4().hex[:8]}"
        self.keyspace = Keyspace(self.namespace)
        self.database_url = ""
        self.procs: ProcessManager | None = None
        self.apis: list[ManagedProcess] = []
        self.invalidators: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self._spawned = 0
        self.drain_problem = ""
        self.worker_deaths: list[str] = []
        self.notes: list[str] = []  # what an injection observed, moved into its record

    # --- start / stop ------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def api_redis_url(self) -> str:
        assert self.proxy is not None
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    def _via(self, proxy: TcpProxy | None, url: str) -> str:
        assert proxy is not None
        scheme, rest = url.split("://", 1)
        user = rest.split("@", 1)[0] + "@" if "@" in rest else ""
        path = rest.split("/", 1)[1]
        return f"{scheme}://{user}127.0.0.1:{proxy.port}/{path}"

    @property
    def api_urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    @property
    def queue(self) -> str:
        return f"{self.namespace}.worker"

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "API_TOKEN"}
            and not key.startswith("PGBUST_")
        }
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.broker.url,
            API_TOKEN=API_TOKEN,
            PGBUST_NAMESPACE=self.namespace,
            PGBUST_CAPTURE=self.capture,
            PGBUST_LOG_LEVEL="INFO",
            # a task of a SIGKILLed worker comes back after this long (Redis broker)
            PGBUST_VISIBILITY_TIMEOUT_S="4",
            # a silent (SIGSTOPped) active invalidator is replaced after this long
            PGBUST_TAKEOVER_AFTER_S=str(TAKEOVER_AFTER_S),
            # an active invalidator cut off from Redis or Postgres hands over after this long
            # (longer than the Redis outages of scenario 4, which are ridden out)
            PGBUST_GIVE_UP_AFTER_S=str(GIVE_UP_AFTER_S),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> ChaosStack:
        self.postgres.init()
        self.postgres.start()
        with psycopg.connect(self.postgres.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pgbust")
        self.database_url = self.postgres.admin_url.rsplit("/", 1)[0] + "/pgbust"
        migrate.upgrade(self.database_url)
        seed.seed(self.database_url, products=PRODUCTS, categories=CATEGORIES, replace=True)
        if self.capture == "wal":
            self._set_up_wal_capture()
        self.redis.start()
        self.broker.start()
        self.proxy = TcpProxy(self.redis.port).start()
        self.invalidator_pg_proxy = TcpProxy(self.postgres.port).start()
        self.invalidator_redis_proxy = TcpProxy(self.redis.port).start()
        self.procs = ProcessManager(self.env(), self.root / "logs")
        (self.root / "logs").mkdir(exist_ok=True)
        self.invalidators = [self.start_invalidator(), self.start_invalidator()]
        self.apis = [self._start_api(), self._start_api()]
        self.workers = [self.start_worker()]
        return self

    def _set_up_wal_capture(self) -> None:
        """What a user runs: `python -m db upgrade` with PGBUST_CAPTURE=wal (the publication, the
        slot, the triggers removed). The slot exists before any invalidator starts."""
        done = subprocess.run(
            [sys.executable, "-m", "db", "upgrade"],
            env=self.env(),
            cwd=Path(__file__).resolve().parents[2],  # where pgbust.toml is
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"db upgrade (wal) failed:\n{done.stdout}{done.stderr}"

    @property
    def slot(self) -> str:
        return wal_name(self.namespace)

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop_all()
        for proxy in self.proxies:
            proxy.stop()
        for server in (self.redis, self.broker):
            with contextlib.suppress(Exception):
                server.stop(keep_snapshot=False)
        with contextlib.suppress(Exception):
            self.postgres.stop("immediate")
        shutil.rmtree(self._pg_root, ignore_errors=True)

    def _name(self, role: str) -> str:
        self._spawned += 1
        return f"{role}-{self._spawned}"

    def _start_api(self) -> ManagedProcess:
        assert self.procs is not None
        return self.procs.api(self._name("api"), env={"REDIS_URL": self.api_redis_url})

    @property
    def proxies(self) -> list[TcpProxy]:
        found = (self.proxy, self.invalidator_pg_proxy, self.invalidator_redis_proxy)
        return [proxy for proxy in found if proxy is not None]

    def start_invalidator(self) -> ManagedProcess:
        assert self.procs is not None
        env = {
            "DATABASE_URL": self._via(self.invalidator_pg_proxy, self.database_url),
            "REDIS_URL": self._via(self.invalidator_redis_proxy, self.redis_url),
        }
        return self.procs.invalidator(self._name("invalidator"), env=env)

    def start_worker(self, env: dict[str, str] | None = None) -> ManagedProcess:
        assert self.procs is not None
        return self.procs.celery_worker(self._name("worker"), env=env)

    # --- health ------------------------------------------------------------------------------

    def postgres_up(self) -> bool:
        try:
            with psycopg.connect(self.database_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def supervise(self) -> list[str]:
        """Restart Celery workers that exited, as compose's `restart: unless-stopped` would;
        returns the last log line of each one that died (why it died)."""
        died = []
        for index, proc in enumerate(self.workers):
            if not proc.alive():
                tail = proc.log_tail(400).splitlines()
                last = tail[-1] if tail else "?"
                reason = next((line for line in tail if "Unrecoverable" in line), last)
                died.append(f"{proc.name}: {reason}"[:300])
                self.workers[index] = self.start_worker()
        self.worker_deaths += died
        return died

    def heal(self) -> None:
        """Bring back every server and process a previous scenario stopped or killed."""
        for proxy in self.proxies:
            proxy.set_delay(0)
            proxy.unblock()
            proxy.heal()
        if self.redis.process is None:
            self.redis.start()
        control = self.redis.client()
        try:
            unlimit_memory(control)  # a memory scenario that failed half-way left a limit
        finally:
            control.close()
        if not self.postgres_up():
            with contextlib.suppress(Exception):
                self.postgres.start()
        for proc in self.invalidators + self.apis + self.workers:
            with contextlib.suppress(ProcessLookupError, AssertionError):
                if proc.alive():
                    proc.signal(signal.SIGCONT)
        self.invalidators = [p for p in self.invalidators if p.alive()]
        while len(self.invalidators) < 2:
            self.invalidators.append(self.start_invalidator())
        self.workers = [p for p in self.workers if p.alive()] or [self.start_worker()]
        self.apis = [p if p.alive() else self._start_api() for p in self.apis]
        for api in self.apis:
            api.wait_http_ok()
        assert wait_until(lambda: self.active_invalidator() is not None, timeout=30), (
            "no active invalidator:\n" + self.logs()
        )

    def health(self, proc: ManagedProcess) -> dict[str, Any]:
        try:
            response = httpx.get(proc.base_url + "/healthz", timeout=1.0)
            body = response.json()
            return body if isinstance(body, dict) else {"body": body}
        except (httpx.HTTPError, ValueError):
            return {}

    def role(self, proc: ManagedProcess) -> str:
        """'active', 'standby' or '' (unknown / not answering), from the invalidator's /healthz."""
        if not proc.alive():
            return ""
        body = self.health(proc)
        for key in ("role", "state", "mode", "status"):
            value = str(body.get(key, "")).lower()
            if value in {"active", "standby"}:
                return value
        if isinstance(body.get("active"), bool):
            return "active" if body["active"] else "standby"
        return ""

    def active_invalidator(self) -> ManagedProcess | None:
        for proc in self.invalidators:
            if self.role(proc) == "active":
                return proc
        return None

    def metrics(self, proc: ManagedProcess) -> str:
        return httpx.get(proc.base_url + "/metrics", timeout=2.0).text

    def logs(self, lines: int = 25) -> str:
        procs = self.procs.processes if self.procs is not None else []
        return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}" for p in procs)

    # --- load, drain, sweep ---------------------------------------------------------------------

    def load(self, *, write_rate: float = 40.0, readers: int = 2) -> LoadDriver:
        return LoadDriver(
            self.api_urls,
            self.database_url,
            API_TOKEN,
            product_ids=range(1, RECOVERY_PROBE),
            category_ids=range(1, CATEGORIES + 1),
            write_rate=write_rate,
            readers=readers,
        )

    def wait_recovered(self, timeout: float = 30.0) -> float | None:
        """Seconds until an out-of-band write shows on every API instance (CDC end to end)."""
        return wait_propagated(self.api_urls, self.database_url, RECOVERY_PROBE, timeout)

    def drain(self, timeout: float = 30.0) -> float | None:
        """Wait until invalidation has drained: the Celery queue is empty and a probe write,
        committed after every other write, has reached every instance. Seconds, or None
        (then `drain_problem` says which step did not finish)."""
        started = time.monotonic()
        self.drain_problem = ""
        broker = self.broker.client()
        try:
            if not wait_until(
                lambda: not self.supervise() and queue_empty(broker, self.queue), timeout
            ):
                self.drain_problem = f"celery queue not empty: {broker.llen(self.queue)} tasks"
                return None
            if wait_propagated(self.api_urls, self.database_url, DRAIN_PROBE, timeout) is None:
                self.drain_problem = "probe write never visible on every instance: " + (
                    self._probe_state(DRAIN_PROBE)
                )
                return None
            if not wait_until(lambda: queue_empty(broker, self.queue), timeout):
                self.drain_problem = f"celery queue not empty: {broker.llen(self.queue)} tasks"
                return None
        finally:
            broker.close()
        return time.monotonic() - started

    def _probe_state(self, product_id: int) -> str:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT version FROM products WHERE id = %s", (product_id,))
            db_version = row.fetchone()
        seen = []
        for base in self.api_urls:
            try:
                response = httpx.get(f"{base}/products/{product_id}", timeout=2)
                seen.append(
                    f"{base} {response.status_code} {response.headers.get('x-cache')} "
                    f"{response.text[:120]}"
                )
            except httpx.HTTPError as exc:
                seen.append(f"{base} {exc!r}")
        return f"db version {db_version}; " + "; ".join(seen)

    def sweep(self) -> SweepResult:
        return final_sweep(
            self.api_urls, self.database_url, redis_url=self.redis_url, namespace=self.namespace
        )
