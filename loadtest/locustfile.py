"""Locust users of the staleness load test; started by the runner (python -m loadtest).

Readers GET products (Zipf-skewed ids), category pages and category summaries from a random
API instance; API writers PATCH products and learn the new version from the response;
out-of-band writers UPDATE ... RETURNING version straight in Postgres (psycopg 3 cooperates
with gevent once gevent has patched `select`, which locust does on import). Every write's
version and acknowledgement time go to the oracle; every product or page read is judged when
its response arrives (all acknowledgements before its send time are already recorded: one
gevent loop, and recording never yields). Stale reads are reported to Locust as custom
requests "STALE" whose response time is the staleness; at the end the raw record goes to
plan.raw_out for the runner to summarise.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import orjson
import psycopg
from locust import FastHttpUser, User, constant_throughput, events, task

from db.queries import parse_queries
from loadtest.oracle import FRESH, Judgement, Oracle
from loadtest.plan import PLAN_ENV, Plan, make_plan
from loadtest.settings import Settings
from loadtest.skew import ZipfSampler
from pgbust.settings import load_settings

QUERIES = parse_queries((Path(__file__).parent / "queries.sql").read_text())


def _id_range(conn: psycopg.Connection[Any], name: str) -> tuple[int, int]:
    row = conn.execute(QUERIES[name].encode()).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _load_plan() -> Plan:
    """The runner's plan; or, run straight with `locust -f` (compose, the web UI), one made
    from the PGBUST_LOADTEST_* settings: requests go to --host, ids come from the database,
    and the raw record goes to PGBUST_LOADTEST_RAW_OUT when set."""
    text = os.environ.get(PLAN_ENV)
    if text:
        return Plan.from_json(text)
    settings = load_settings(Settings)
    with psycopg.connect(settings.database_url) as conn:
        products = _id_range(conn, "product_id_range")
        categories = _id_range(conn, "category_id_range")
    return make_plan(
        settings,
        mode=os.environ.get("PGBUST_CACHE_MODE", "standalone"),
        api_urls=[],
        api_token=settings.api_token,
        raw_out=os.environ.get("PGBUST_LOADTEST_RAW_OUT", ""),
        product_ids=products,
        category_ids=categories,
    )


PLAN = _load_plan()
PAGE_OFFSETS = (0, 0, 0, 20, 40)
EVENTS: Any = events  # untyped in locust
REQUEST_EVENT: Any = events.request
PAGE_LIMIT = 20


class Recorder:
    """Everything the run observed, in columns (cheap to append, cheap to dump)."""

    def __init__(self) -> None:
        self.oracle = Oracle()
        self.started_at = time.time()
        self.stopped_at: float | None = None
        self.read_sent: list[float] = []
        self.read_ms: list[float] = []
        self.read_kind: list[str] = []
        self.read_stale_ms: list[float | None] = []
        self.read_source: list[str] = []  # X-Cache: L1, L2 or MISS
        self.read_cause: list[str] = []  # stale reads: who wrote the first newer version
        self.writes: list[tuple[int, int, float, float, bool]] = []
        self.write_ms: list[float] = []
        self.errors: dict[str, int] = {"read": 0, "write": 0, "oob": 0}
        self.cpu_start = _cpu_seconds()
        self.cpu_percent: float | None = None
        self.stale = 0
        self.max_staleness_ms = 0.0

    def read(
        self, kind: str, sent: float, ms: float, source: str, verdict: Judgement | None
    ) -> None:
        self.read_sent.append(sent)
        self.read_source.append(source)
        self.read_cause.append(verdict.cause if verdict is not None else "")
        self.read_ms.append(ms)
        self.read_kind.append(kind)
        if verdict is None:
            self.read_stale_ms.append(None)
            return
        staleness_ms = verdict.staleness_s * 1000.0 if verdict.stale else 0.0
        self.read_stale_ms.append(staleness_ms)
        if verdict.stale:
            self.stale += 1

            self.max_staleness_ms = max(self.max_staleness_ms, staleness_ms)
            REQUEST_EVENT.fire(
                request_type="STALE",
                name=f"{kind} read",
                response_time=staleness_ms,
                response_length=0,
                exception=None,
                context={},
            )

    def write(self, product_id: int, version: int, sent: float, acked: float, oob: bool) -> None:
        self.oracle.record_ack(product_id, version, acked, "oob" if oob else "api")
        self.writes.append((product_id, version, sent, acked, oob))
        self.write_ms.append((acked - sent) * 1000.0)

    def dump(self) -> bytes:
        stopped = self.stopped_at or time.time()
        return orjson.dumps(
            {
                "mode": PLAN.mode,
                "started_at": self.started_at,
                "stopped_at": stopped,
                "reads": {
                    "sent": self.read_sent,
                    "ms": self.read_ms,
                    "kind": self.read_kind,
                    "stale_ms": self.read_stale_ms,
                    "source": self.read_source,
                    "cause": self.read_cause,
                },
                "writes": self.writes,
                "write_ms": self.write_ms,
                "errors": self.errors,
                "cpu_percent": self.cpu_percent,
            }
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


RECORD = Recorder()
PRODUCTS = ZipfSampler(PLAN.product_ids[0], PLAN.product_ids[1], PLAN.zipf_s)
WRITTEN = (
    PRODUCTS
    if PLAN.write_zipf_s == PLAN.zipf_s
    else ZipfSampler(PLAN.product_ids[0], PLAN.product_ids[1], PLAN.write_zipf_s)
)


def _api() -> str:
    """A random API instance of the runner's, or "" (the --host given to locust)."""
    return random.choice(PLAN.api_urls) if PLAN.api_urls else ""


def _items(body: Any) -> list[tuple[int, int]]:
    """(id, version) of the products in a page body (a list, or an object holding one)."""
    if isinstance(body, dict):
        body = body.get("items", body.get("products", []))
    if not isinstance(body, list):
        return []
    return [
        (int(item["id"]), int(item["version"]))
        for item in body
        if isinstance(item, dict) and "id" in item and "version" in item
    ]


class ReaderUser(FastHttpUser):
    host = PLAN.api_urls[0] if PLAN.api_urls else None
    fixed_count = PLAN.readers if PLAN.api_urls else 0  # standalone: whoever is not a writer
    wait_time = constant_throughput(PLAN.read_rps / max(PLAN.readers, 1))

    @task
    def read(self) -> None:
        draw = random.random()
        if draw < PLAN.summary_share:
            self._summary()
        elif draw < PLAN.summary_share + PLAN.page_share:
            self._page()
        else:
            self._product()

    def _get(self, path: str, name: str) -> tuple[float, float, str, Any] | None:
        sent = time.time()
        started = time.perf_counter()
        response = self.client.get(_api() + path, name=name)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200 or not response.content:
            RECORD.errors["read"] += 1
            return None
        headers: Any = response.headers or {}
        return sent, elapsed_ms, str(headers.get("x-cache", "?")), orjson.loads(response.content)

    def _product(self) -> None:
        product_id = PRODUCTS()
        got = self._get(f"/products/{product_id}", "GET /products/{id}")
        if got is not None:
            sent, ms, source, body = got
            verdict = RECORD.oracle.judge(product_id, int(body["version"]), sent)
            RECORD.read("product", sent, ms, source, verdict)

    def _page(self) -> None:
        category_id = random.randint(*PLAN.category_ids)
        offset = random.choice(PAGE_OFFSETS)
        path = f"/categories/{category_id}/products?limit={PAGE_LIMIT}&offset={offset}"
        got = self._get(path, "GET /categories/{id}/products")
        if got is not None:
            sent, ms, source, body = got
            items = _items(body)
            verdict = RECORD.oracle.judge_many(items, sent) if items else FRESH
            RECORD.read("page", sent, ms, source, verdict)

    def _summary(self) -> None:
        category_id = random.randint(*PLAN.category_ids)
        got = self._get(f"/categories/{category_id}/summary", "GET /categories/{id}/summary")
        if got is not None:
            sent, ms, source, _ = got
            RECORD.read("summary", sent, ms, source, None)  # no version to judge


class ApiWriterUser(FastHttpUser):
    host = PLAN.api_urls[0] if PLAN.api_urls else None
    fixed_count = PLAN.api_writers
    wait_time = constant_throughput(PLAN.api_write_rps / max(PLAN.api_writers, 1))
    default_headers = {"Authorization": f"Bearer {PLAN.api_token}"}

    @task
    def patch(self) -> None:
        product_id = WRITTEN()
        sent = time.time()
        response = self.client.request(
            "PATCH",
            f"{_api()}/products/{product_id}",
            name="PATCH /products/{id}",
            json={"stock": random.randrange(1000)},
        )
        acked = time.time()
        if response.status_code != 200 or not response.content:
            RECORD.errors["write"] += 1
            return
        RECORD.write(product_id, int(orjson.loads(response.content)["version"]), sent, acked, False)


class OobWriterUser(User):
    """Writes nobody's application code sees: the change-capture path's whole reason to be."""

    fixed_count = PLAN.oob_writers
    wait_time = constant_throughput(PLAN.oob_write_rps / max(PLAN.oob_writers, 1))

    def on_start(self) -> None:
        self.conn = psycopg.connect(PLAN.database_url, autocommit=True)

    def on_stop(self) -> None:
        self.conn.close()

    @task
    def update(self) -> None:
        product_id = WRITTEN()
        sent = time.time()
        started = time.perf_counter()
        error: Exception | None = None
        version = None
        try:
            row = self.conn.execute(
                QUERIES["oob_update_product"].encode(),
                {"id": product_id, "stock": random.randrange(1000)},
            ).fetchone()
            version = None if row is None else int(row[0])
        except psycopg.Error as exc:
            error = exc
            if self.conn.closed:
                self.conn = psycopg.connect(PLAN.database_url, autocommit=True)
        acked = time.time()
        REQUEST_EVENT.fire(
            request_type="SQL",
            name="UPDATE products (out-of-band)",
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0,
            exception=error,
            context={},
        )
        if version is None:
            RECORD.errors["oob"] += 1
            return
        RECORD.write(product_id, version, sent, acked, True)


def _progress() -> None:
    while True:
        gevent.sleep(2.0)
        elapsed = time.time() - RECORD.started_at
        reads = len(RECORD.read_ms)
        writes = len(RECORD.writes)
        print(
            f"[progress] {PLAN.mode}: {elapsed:5.1f}s reads={reads} ({reads / elapsed:.0f}/s) "
            f"writes={writes} ({writes / elapsed:.0f}/s) stale={RECORD.stale} "
            f"max_staleness={RECORD.max_staleness_ms:.1f}ms "
            f"errors={sum(RECORD.errors.values())}",
            flush=True,
        )


def _on_start(**_: Any) -> None:
    RECORD.started_at = time.time()
    RECORD.cpu_start = _cpu_seconds()
    gevent.spawn(_progress)


def _on_stop(**_: Any) -> None:
    RECORD.stopped_at = time.time()
    wall = RECORD.stopped_at - RECORD.started_at
    if wall > 0:
        RECORD.cpu_percent = round(100.0 * (_cpu_seconds() - RECORD.cpu_start) / wall, 1)
    if PLAN.raw_out:
        Path(PLAN.raw_out).write_bytes(RECORD.dump())
        print(f"[progress] {PLAN.mode}: raw record written to {PLAN.raw_out}", file=sys.stderr)


EVENTS.test_start.add_listener(_on_start)
EVENTS.test_stop.add_listener(_on_stop)
