"""HTTP read benchmark: GET /products/{id} as L1 hit, L2 hit and MISS, the summary cached vs
uncached, and a bare FastAPI endpoint returning a constant of the same size.

Each scenario runs against its own `python -m api` process (one uvicorn worker, its own cache
namespace) on loopback, driven by wrk when it is installed (C, cheap on the CPU it shares
with the server) or else by a small asyncio + httpx driver. The database is a catalogue of
its own (`pgbust_bench_http`, 100k products in 20 categories, re-seeded when different).

    python -m bench http [--quick] --out bench/results
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI, Response

from bench import serving
from bench.report import markdown_table, percentiles, write
from bench.serving import Server, api_server, ensure_wrk, invalidator_server
from db import migrate, seed
from pgbust.devservers import ensure_database, free_port, with_database

PRODUCTS = 100_000
CATEGORIES = 20
DATABASE = "pgbust_bench_http"
CONNECTIONS = 16
L1_HIT, BARE = "product, L1 hit", "bare FastAPI constant"
L1_ROUTED = "product, L1 hit through FastAPI routing"
SUMMARY_CACHED, SUMMARY_UNCACHED = "summary, cached (L1)", "summary, no cache"
MISS, UNCACHED_COLD = "product, MISS", "product, no cache, cold keys"

# --- the bare baseline: same route shape, a constant body of the product's size ----------------

bare_app = FastAPI()
_BARE_BODY = b'{"pad":"' + b"x" * max(0, int(os.environ.get("BENCH_BODY_SIZE", "140")) - 10) + b'"}'


@bare_app.get("/products/{product_id}")
async def bare_product(product_id: int) -> Response:
    return Response(_BARE_BODY, media_type="application/json")


# --- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    x_cache: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    driver: str


# --- servers -----------------------------------------------------------------------------------


@contextmanager
def bare_server(body_size: int, log: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "BENCH_BODY_SIZE": str(body_size)}
    args = ["uvicorn", "bench.http:bare_app", "--port", str(port), "--log-level", "warning"]
    server = Server([*args, "--no-access-log"], env, port, log)
    try:
        server.wait_ready("/products/1")
        yield server
    finally:
        server.stop()


# --- drivers -----------------------------------------------------------------------------------

_WRK_SEQUENTIAL = """
counter = {start}
request = function()
  counter = counter + 1
  return wrk.format("GET", "/products/" .. counter)
end
"""


def run_wrk(url: str, seconds: float, start: int | None) -> dict[str, Any]:
    """wrk on one URL, or with start set on url/<start+1>, url/<start+2>, ... (cold keys)."""
    script = None if start is None else _WRK_SEQUENTIAL.replace("{start}", str(start))
    return serving.run_wrk(url, seconds, CONNECTIONS, script=script)


def run_httpx(url: str, seconds: float, start: int | None) -> dict[str, Any]:
    sequential = start is not None
    base = url
    counter = iter(range((start or 0) + 1, 10**9))
    samples: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            target = f"{base}/{next(counter)}" if sequential else url
            started = time.perf_counter()
            response = await client.get(target)
            samples.append((time.perf_counter() - started) * 1000)
            errors += response.status_code >= 400

    async def main() -> float:
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(worker(client, deadline) for _ in range(CONNECTIONS)))
            return time.perf_counter() - started

    elapsed = asyncio.run(main())
    stats = percentiles(samples)
    return {
        "requests_per_s": round(len(samples) / elapsed, 1),
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "requests": len(samples),
        "errors": errors,
        "driver": "httpx",
    }


Driver = Callable[[str, float, int | None], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    server: Server
    path: str
    cold_keys: bool = False  # every request a different product: a true MISS each time


def measure(scenario: Scenario, seconds: float, round_no: int, rounds: int) -> dict[str, Any]:
    drive: Driver = run_wrk if shutil.which("wrk") else run_httpx
    url = scenario.server.base_url + scenario.path
    if scenario.cold_keys:
        # each round starts on keys no earlier round touched
        return {**drive(url, seconds, round_no * (PRODUCTS // rounds)), "x_cache": "MISS"}
    drive(url, min(1.0, seconds / 2), None)  # warm up: connections, caches, code paths
    numbers = drive(url, seconds, None)
    return {**numbers, "x_cache": httpx.get(url, timeout=5).headers.get("X-Cache", "-")}


def median_of(name: str, rounds: list[dict[str, Any]]) -> Result:
    """The median round by requests/s (the rounds are interleaved across scenarios, so a
    burst of load from elsewhere on the machine hits every scenario alike)."""
    ordered = sorted(rounds, key=lambda numbers: numbers["requests_per_s"])
    middle = ordered[len(ordered) // 2]
    return Result(
        scenario=name,
        x_cache=middle["x_cache"],
        requests_per_s=middle["requests_per_s"],
        p50_ms=middle["p50_ms"],
        p99_ms=middle["p99_ms"],
        requests=sum(numbers["requests"] for numbers in rounds),
        errors=sum(numbers["errors"] for numbers in rounds),
        driver=middle["driver"],
    )


# --- the run -----------------------------------------------------------------------------------


def prepare_database() -> str:
    base = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    ensure_database(with_database(base, "postgres"), DATABASE)
    url = with_database(base, DATABASE)
    migrate.upgrade(url)
    with psycopg.connect(url) as conn:
        counts = seed.count(conn)
    if (counts.products, counts.categories) != (PRODUCTS, CATEGORIES):
        seed.seed(url, products=PRODUCTS, categories=CATEGORIES, replace=True)
    return url


def run(out: Path, quick: bool) -> None:
    ensure_wrk()
    rounds, seconds = (3, 1.0) if quick else (7, 2.0)
    database_url = prepare_database()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    log = Path(tempfile.gettempdir()) / "pgbust-bench-http-servers.log"
    out.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:

        def api(**settings: str) -> Server:
            namespace = f"bench-http-{uuid.uuid4().hex[:8]}"
            cdc = settings.get("cache_mode", "cdc") == "cdc"
            if cdc:
                # a cdc API serves its caches only while an active invalidator proves capture
                stack.enter_context(invalidator_server(database_url, redis_url, log, namespace))
            server = stack.enter_context(
                api_server(database_url, redis_url, log, namespace, **settings)
            )
            if cdc:
                server.wait_ready("/healthz", expect=b'"capture":"live"')
            return server

        cached, l2_only, uncached = api(), api(l1_max_entries="0"), api(cache_mode="off")
        body_size = len(httpx.get(cached.base_url + "/products/1").content)
        bare = stack.enter_context(bare_server(body_size, log))
        scenarios = [
            Scenario(L1_HIT, cached, "/products/1"),
            Scenario(BARE, bare, "/products/1"),
            # "/products/01" is not canonical, so the pre-routing fast path leaves it to
            # FastAPI: the same L1 hit, through routing and validation
            Scenario(L1_ROUTED, cached, "/products/01"),
            Scenario("product, L2 hit", l2_only, "/products/1"),
            Scenario(MISS, l2_only, "/products", cold_keys=True),
            # the plain read a MISS is compared with: the same stream of distinct products
            # (the scenario below reads one row, always in Postgres' buffers)
            Scenario(UNCACHED_COLD, uncached, "/products", cold_keys=True),
            Scenario("product, no cache", uncached, "/products/1"),
            Scenario(SUMMARY_CACHED, cached, "/categories/1/summary"),
            Scenario(SUMMARY_UNCACHED, uncached, "/categories/1/summary"),
        ]
        samples: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}
        for round_no in range(rounds):
            # compared scenarios run back to back, in ABBA order over the rounds, so a change
            # of background load on this shared machine hits both sides of a ratio alike
            order = scenarios if round_no % 2 == 0 else scenarios[::-1]
            for scenario in order:
                samples[scenario.name].append(measure(scenario, seconds, round_no, rounds))
            print(f"bench http: round {round_no + 1}/{rounds} done", file=sys.stderr)
    results = [median_of(name, numbers) for name, numbers in samples.items()]
    ratios = {
        "l1_hit_vs_bare": paired_ratio(samples[L1_HIT], samples[BARE]),
        "l1_hit_routed_vs_bare": paired_ratio(samples[L1_ROUTED], samples[BARE]),
        "summary_cached_vs_uncached": paired_ratio(
            samples[SUMMARY_CACHED], samples[SUMMARY_UNCACHED]
        ),
        "miss_vs_uncached_same_keys": paired_ratio(samples[MISS], samples[UNCACHED_COLD]),
    }
    data = {
        "settings": {
            "products": PRODUCTS,
            "categories": CATEGORIES,
            "rounds": rounds,
            "seconds_per_round": seconds,
            "connections": CONNECTIONS,
            "uvicorn_workers": 1,
            "body_bytes": body_size,
            "loadavg_at_end": os.getloadavg(),
        },
        "results": [asdict(r) for r in results],
        "rounds": samples,
        "ratios": ratios,
        "targets": {
            "l1_hit_vs_bare": ">= 0.70",
            "summary_cached_vs_uncached": ">= 10",
            "miss_vs_uncached_same_keys": ">= 0.80",
        },
    }
    rows = [
        [r.scenario, r.x_cache, f"{r.requests_per_s:,.0f}", r.p50_ms, r.p99_ms, r.errors]
        for r in results
    ]
    table = markdown_table(["scenario", "X-Cache", "req/s", "p50 ms", "p99 ms", "errors"], rows)
    table += (
        f"\nL1 hit / bare FastAPI: **{ratios['l1_hit_vs_bare']['median']:.2f}** "
        f"(target >= 0.70; through FastAPI routing: "
        f"{ratios['l1_hit_routed_vs_bare']['median']:.2f}); summary cached / uncached: "
        f"**{ratios['summary_cached_vs_uncached']['median']:.1f}x** "
        f"(target >= 10x); MISS / no cache on the same distinct products: "
        f"**{ratios['miss_vs_uncached_same_keys']['median']:.2f}** (target >= 0.80). "
        f"{CONNECTIONS} connections, 1 uvicorn worker, "
        f"{results[0].driver}; req/s and latencies: median round of {rounds} interleaved rounds "
        f"of {seconds:.0f} s; ratios: median of per-round ratios of back-to-back runs; "
        f"{PRODUCTS:,} products in {CATEGORIES} categories.\n"
    )
    write(out, "http", data, table)


def paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """requests/s of a over b within each round (measured back to back), and their median."""
    per_round = [
        round(x["requests_per_s"] / y["requests_per_s"], 3) if y["requests_per_s"] else 0.0
        for x, y in zip(a, b, strict=True)
    ]
    return {"median": statistics.median(per_round), "per_round": per_round}
