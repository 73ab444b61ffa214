"""The daemons on a Redis Cluster against one Redis, side by side in one run (the second part
of `python -m bench redis-cluster`).

- Invalidator, in this process, on a scratch database: a burst of distinct notifications in
  one transaction (events/s until the daemon has applied every one), and acknowledged commit
  -> Redis delete at a steady 1,000 single-row UPDATEs/s (the writers of `bench invalidator`).
- API: real `python -m api` processes in cdc mode (each backend with its own invalidator, as
  deployed) on `bench http`'s catalogue, wrk against an L1 hit, an L2 hit (L1 off) and a MISS
  (a different product per request).

Both backends run in every round, in the order one, cluster, cluster, one, ... so a drift of
the shared host's load hits both alike. The cluster's six redis-servers run on the same host
as everything else: it measures what the cluster's protocol costs (more scripts, more round
trips, the client's slot routing), not what more machines would add.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import report
from bench.http import PRODUCTS as CATALOGUE
from bench.http import Scenario, measure, prepare_database
from bench.invalidator import PRODUCTS, end_to_end_throughput, lag_at_rates
from bench.peers import interleaved
from bench.scratch import scratch_database
from bench.serving import Server, api_server, ensure_wrk, invalidator_server

ONE, CLUSTER = "one redis", "cluster"
BACKENDS = (ONE, CLUSTER)
L1_HIT, L2_HIT, MISS = "product, L1 hit", "product, L2 hit", "product, MISS"
WRITE_RATE = 1_000


def backend_settings(backend: str, single_url: str, cluster_url: str) -> tuple[str, dict[str, Any]]:
    """(REDIS_URL, the other settings) a component is given on each backend: on the cluster,
    PGBUST_REDIS_CLUSTER and a broker beside it (the standalone Redis' database 1)."""
    if backend == ONE:
        return single_url, {}
    broker = single_url.rsplit("/", 1)[0] + "/1"
    return cluster_url, {"redis_cluster": True, "celery_broker_url": broker}


# --- the invalidator ---------------------------------------------------------------------------


async def invalidator_rounds(
    server_url: str, single_url: str, cluster_url: str, rounds: int, events: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """Per backend, one sample per round: {burst: ..., lag: ...}."""
    samples: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    with scratch_database(server_url, PRODUCTS) as url:
        for round_no, backend in interleaved(BACKENDS, rounds):
            redis_url, settings = backend_settings(backend, single_url, cluster_url)
            burst = await end_to_end_throughput(url, redis_url, events, **settings)
            (lag,) = await lag_at_rates(url, redis_url, [WRITE_RATE], seconds, **settings)
            samples[backend].append({"round": round_no, "burst": burst, "lag": lag})
            done = f"invalidator, {backend}, round {round_no + 1}"
            print(f"bench redis-cluster: {done}", file=sys.stderr)
    return samples


# --- the API -----------------------------------------------------------------------------------


def api_rounds(
    single_url: str, cluster_url: str, rounds: int, seconds: float, log: Path
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per backend and scenario, one wrk sample per round."""
    ensure_wrk()
    database_url = prepare_database()
    with ExitStack() as stack:

        def start(backend: str) -> dict[str, Server]:
            redis_url, settings = backend_settings(backend, single_url, cluster_url)
            broker = settings.pop("celery_broker_url", None)
            env = {key: str(value).lower() for key, value in settings.items()}
            namespace = f"bench-cl-{uuid.uuid4().hex[:8]}"
            # a cdc API serves its caches only while an active invalidator proves capture
            stack.enter_context(
                invalidator_server(database_url, redis_url, log, namespace, broker, **env)
            )

            def api(**more: str) -> Server:
                server = stack.enter_context(
                    api_server(database_url, redis_url, log, namespace, broker, **env, **more)
                )
                server.wait_ready("/healthz", expect=b'"capture":"live"')
                return server

            return {"cached": api(), "l2_only": api(l1_max_entries="0")}

        servers = {backend: start(backend) for backend in BACKENDS}
        scenarios: dict[str, Callable[[str], Scenario]] = {
            L1_HIT: lambda b: Scenario(L1_HIT, servers[b]["cached"], "/products/1"),
            L2_HIT: lambda b: Scenario(L2_HIT, servers[b]["l2_only"], "/products/1"),
            MISS: lambda b: Scenario(MISS, servers[b]["l2_only"], "/products", cold_keys=True),
        }
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {backend: [] for backend in BACKENDS} for name in scenarios
        }
        for name, make in scenarios.items():
            for round_no, backend in interleaved(BACKENDS, rounds):
                # cold keys: each (round, backend) starts on products no other one touched
                slot = round_no * len(BACKENDS) + BACKENDS.index(backend)
                numbers = measure(make(backend), seconds, slot, rounds * len(BACKENDS))
                samples[name][backend].append({"round": round_no, **numbers})
            print(f"bench redis-cluster: API, {name} done", file=sys.stderr)
    return samples


# --- summaries (pure) --------------------------------------------------------------------------


def number_at(sample: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = sample
    for key in path:
        value = value[key]
    return float(value)


def median_of(samples: list[dict[str, Any]], path: tuple[str, ...]) -> float:
    """The median over rounds of the number at `path` in each sample."""
    return round(statistics.median(number_at(sample, path) for sample in samples), 3)


def cluster_over_one(
    samples: dict[str, list[dict[str, Any]]], path: tuple[str, ...]
) -> dict[str, Any]:
    """cluster / one Redis of the number at `path`, per round (both measured back to back in
    it), and the median of those ratios."""
    ones = {s["round"]: s for s in samples[ONE]}
    per_round = []
    for sample in samples[CLUSTER]:
        one = number_at(ones[sample["round"]], path)
        per_round.append(round(number_at(sample, path) / one, 3) if one else 0.0)
    return {"median": statistics.median(per_round), "per_round": per_round}


def summarize(
    invalidator: dict[str, list[dict[str, Any]]], api: dict[str, dict[str, list[dict[str, Any]]]]
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Table rows (what, one Redis, cluster, cluster / one) and the ratios behind them."""
    rows: list[list[Any]] = []
    ratios: dict[str, Any] = {}

    def row(what: str, samples: dict[str, list[dict[str, Any]]], path: tuple[str, ...]) -> None:
        ratios[what] = cluster_over_one(samples, path)
        cells = [median_of(samples[backend], path) for backend in BACKENDS]
        rows.append([what, *(_cell(cell) for cell in cells), f"{ratios[what]['median']:.2f}"])

    row("invalidator: burst, events/s", invalidator, ("burst", "events_per_s"))
    row(
        f"invalidator: ack -> deleted p50 ms at {WRITE_RATE:,} writes/s",
        invalidator,
        ("lag", "ack_to_delete_ms", "p50"),
    )
    row(
        f"invalidator: ack -> deleted p99 ms at {WRITE_RATE:,} writes/s",
        invalidator,
        ("lag", "ack_to_delete_ms", "p99"),
    )
    for name, by_backend in api.items():
        row(f"API: {name}, req/s", by_backend, ("requests_per_s",))
        row(f"API: {name}, p99 ms", by_backend, ("p99_ms",))
    return rows, ratios


def _cell(number: float) -> str:
    return f"{number:,.0f}" if number >= 100 else f"{number:.2f}"


def errors_of(api: dict[str, dict[str, list[dict[str, Any]]]]) -> int:
    return sum(s["errors"] for by_backend in api.values() for b in by_backend.values() for s in b)


def run_end_to_end(
    server_url: str, single_url: str, cluster_url: str, quick: bool
) -> tuple[dict[str, Any], str]:
    """(data, Markdown) of both parts."""
    rounds = 2 if quick else 4
    events, seconds = (20_000, 3.0) if quick else (100_000, 8.0)
    wrk_seconds = 1.0 if quick else 2.0
    load_start = round(os.getloadavg()[0], 2)
    invalidator = asyncio.run(
        invalidator_rounds(server_url, single_url, cluster_url, rounds, events, seconds)
    )
    log = Path(tempfile.gettempdir()) / "pgbust-bench-redis-cluster-servers.log"
    api = api_rounds(single_url, cluster_url, rounds, wrk_seconds, log)
    load_end = round(os.getloadavg()[0], 2)
    rows, ratios = summarize(invalidator, api)
    header = ["what (the daemons)", "one Redis", "cluster", "cluster / one"]
    table = report.markdown_table(header, rows)
    table += (
        f"\nMedians of {rounds} rounds, the two backends back to back in each (one, cluster, "
        f"cluster, one, ...); cluster / one: median of the per-round ratios. Invalidator: a "
        f"burst of {events:,} notifications in one transaction; {WRITE_RATE:,} single-row "
        f"UPDATEs/s for {seconds:g} s by pgbench-like writers. API: per backend two `python -m "
        f"api` processes in cdc mode (with L1: the L1 hit; L1 off: the L2 hit and the MISS) "
        f"and their invalidator, wrk, 16 connections, "
        f"{wrk_seconds:g} s per round; MISS: a different one of {CATALOGUE:,} products per "
        f"request. {errors_of(api)} HTTP errors. 1-minute load average on {os.cpu_count()} "
        f"cores: {load_start} at the start, {load_end} at the end.\n"
    )
    data = {
        "rounds": rounds,
        "burst_events": events,
        "write_rate": WRITE_RATE,
        "write_seconds": seconds,
        "wrk_seconds": wrk_seconds,
        "load_average_1m": {"start": load_start, "end": load_end},
        "ratios": ratios,
        "invalidator": invalidator,
        "api": api,
    }
    return data, table
