"""pgbust against the closest Python peer, PGCacheWatch, on the same data under the same load.

Four systems serve `GET /products/{id}` from the demo catalogue (100k products in 20
categories, in a scratch database), each as 2 instances: pgbust with the cache off, with a
30 s TTL, in cdc mode with its invalidator, and a minimal FastAPI app caching with
PGCacheWatch (bench/peer_app.py: asyncpg LISTEN in every process, an in-process cache per
product id cleared on any change of `products`). A round starts the system, warms it under
load, then measures: wrk (16 connections, one thread and 8 connections per instance) sends
Zipf-distributed ids (s = 1 over the 100k ids, the same precomputed sequence for everyone)
while pgbench updates `stock` of Zipf-chosen products at 100 transactions/s straight in
Postgres. Rounds interleave (A B C D D C B A), and the 1-minute load average is recorded
with each, because this 2-core machine is shared.

Freshness rounds follow (off, cdc, peer, peer, cdc, off) under the same load: a probe
updates a product pgbench never writes (psycopg, autocommit), then polls both instances (one
request in flight per instance) until each serves the new `version`; "commit acknowledged ->
a response with the new version received from both instances". pgbust off reads Postgres on
every request, so its number is the probe's own floor under this load.

    python -m bench peers [--quick] --out bench/results
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
import orjson
import pgcachewatch  # noqa: F401  (without the bench extra, `python -m bench` skips this one)
import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench import pgbench
from bench.report import markdown_table, percentiles, write
from bench.scratch import scratch_database
from bench.serving import (
    Server,
    api_server,
    ensure_wrk,
    invalidator_server,
    run_wrk,
)
from loadtest.skew import ZipfSampler
from pgbust.devservers import free_port

PRODUCTS = 100_000
CATEGORIES = 20
INSTANCES = 2
CONNECTIONS = 16  # wrk's, spread over the instances (one wrk thread each)
WRITES_PER_S = 100
ZIPF_S = 1.0
# pgbench's random_zipfian needs s > 1; 1.001 is as close to the reads' s = 1 as it goes
PGBENCH_ZIPF_S = 1.001
PROBE_PRODUCTS = 100  # the last ids: updated by the probe only
REFERENCE_ID = PRODUCTS - PROBE_PRODUCTS  # written by nobody: every system's bytes compared
LAST_WRITTEN_ID = REFERENCE_ID - 1
TTL_S = 30
ID_DRAWS = 200_000  # the request sequence wrk cycles through
PROBE_GAP_S = 0.1  # between probes: the probe's own load stays light
PROBE_TIMEOUT_S = 2.0

OFF, TTL, CDC, PEER = "pgbust off", "pgbust ttl", "pgbust cdc", "PGCacheWatch"
SYSTEMS = (OFF, TTL, CDC, PEER)
FRESHNESS_SYSTEMS = (OFF, CDC, PEER)
PGBUST_SETTINGS = {
    OFF: {"cache_mode": "off"},
    TTL: {"cache_mode": "ttl", "cache_ttl_s": str(TTL_S)},
    CDC: {"cache_mode": "cdc"},
}

WRITE_SCRIPT = (
    f"\\set id random_zipfian(1, {LAST_WRITTEN_ID}, {PGBENCH_ZIPF_S})\n"
    "UPDATE products SET stock = stock + 1 WHERE id = :id;\n"
)
PROBE_UPDATE = "UPDATE products SET stock = stock + 1 WHERE id = %(id)s RETURNING version"

# Each wrk thread connects to one instance (setup() runs once per thread, in order) and
# cycles through the precomputed ids from its own offset; requests are formatted up front so
# the Lua side costs next to nothing per request.
_WRK_SCRIPT = """
local ports = {{{ports}}}
local created = 0

function setup(thread)
  created = created + 1
  local port = ports[(created - 1) % #ports + 1]
  thread.addr = wrk.lookup("127.0.0.1", tostring(port))[1]
  thread:set("nth", created - 1)
end

local requests = {{}}
local count = 0
local position = 0

function init(args)
  for line in io.lines([[{ids}]]) do
    count = count + 1
    requests[count] = wrk.format("GET", "/products/" .. line)
  end
  position = math.floor(count * nth / #ports)
end

function request()
  position = position + 1
  if position > count then position = 1 end
  return requests[position]
end
"""


# --- pure parts ----------------------------------------------------------------------------


def interleaved(systems: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, system) in the order A B C D D C B A A B ...: each system's rounds sit at
    mirrored places, so a drift of the machine's load hits every system alike."""
    order: list[tuple[int, str]] = []
    for round_no in range(rounds):
        names = systems if round_no % 2 == 0 else list(reversed(systems))
        order += [(round_no, name) for name in names]
    return order


def wrk_script(ports: Sequence[int], ids_file: Path) -> str:
    return _WRK_SCRIPT.format(ports=", ".join(str(p) for p in ports), ids=ids_file)


def zipf_ids(count: int, seed: int = 12) -> list[int]:
    sampler = ZipfSampler(1, PRODUCTS, ZIPF_S, random.Random(seed))
    return [sampler() for _ in range(count)]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 3) if present else None


def summarize_load(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: the mean of its rounds (req/s, p50, p99, share of reads from Postgres,
    write rate, load average) and the rounds themselves."""
    summary: dict[str, dict[str, Any]] = {}
    for system in dict.fromkeys(r["system"] for r in rounds):
        mine = [r for r in rounds if r["system"] == system]
        summary[system] = {
            key: _mean([r[key] for r in mine])
            for key in (
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "in_process_hit_share",
                "db_read_share",
                "cpu_ms_per_request",
                "instances_cpu_ms_per_request",
                "write_tps",
                "loadavg_1m",
            )
        }
        summary[system]["errors"] = sum(r["errors"] for r in mine)
        summary[system]["rounds"] = len(mine)
    return summary


def summarize_freshness(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: percentiles of "acknowledged -> served by both" over every probe of its
    rounds, probes that timed out, the probe's share of the requests, the load average."""
    summary: dict[str, dict[str, Any]] = {}
    for system in dict.fromkeys(r["system"] for r in rounds):
        mine = [r for r in rounds if r["system"] == system]
        lags = [lag for r in mine for lag in r["probe"]["lags_ms"]]
        probe_requests = sum(r["probe"]["requests"] for r in mine)
        wrk_requests = sum(r["requests"] for r in mine)
        lower = [lag for r in mine for lag in r["probe"]["lower_bounds_ms"]]
        summary[system] = {
            "served_by_both_ms": percentiles(lags),
            "lower_bound_ms": percentiles(lower),
            "timeouts": sum(r["probe"]["timeouts"] for r in mine),
            "probe_request_share": round(probe_requests / max(1, wrk_requests), 4),
            "requests_per_s": _mean([r["requests_per_s"] for r in mine]),
            "loadavg_1m": _mean([r["loadavg_1m"] for r in mine]),
            "per_round_p99_ms": [percentiles(r["probe"]["lags_ms"])["p99"] for r in mine],
        }
    return summary


def ratios(load: dict[str, dict[str, Any]], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """cdc over the peer: of the means, and round by round (with both load averages)."""
    cdc, peer = load[CDC], load[PEER]
    per_round = []
    for round_no in sorted({r["round"] for r in rounds}):
        a = next(r for r in rounds if r["round"] == round_no and r["system"] == CDC)
        b = next(r for r in rounds if r["round"] == round_no and r["system"] == PEER)
        per_round.append(
            {
                "round": round_no + 1,
                "requests_per_s": round(a["requests_per_s"] / b["requests_per_s"], 3),
                "p99": round(a["p99_ms"] / b["p99_ms"], 3),
                "loadavg_1m": [a["loadavg_1m"], b["loadavg_1m"]],
            }
        )
    return {
        "cdc_over_peer_requests_per_s": round(cdc["requests_per_s"] / peer["requests_per_s"], 3),
        "cdc_over_peer_p99": round(cdc["p99_ms"] / peer["p99_ms"], 3),
        "per_round": per_round,
        "targets": {"requests_per_s": ">= 1.3", "p99": "<= 1.0"},
    }


def counter(metrics_text: str, sample: str) -> float:
    """The value of one sample (name with its labels, as printed) of a /metrics page; 0 when
    the counter was never incremented (a labelled one is printed only once used)."""
    match = re.search(rf"^{re.escape(sample)}\s+(\S+)$", metrics_text, re.MULTILINE)
    return float(match[1]) if match else 0.0


# --- the systems ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    database_url: str
    redis_url: str
    log: Path
    ids_file: Path


@contextmanager
def peer_server(database_url: str, log: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    args = ["uvicorn", "bench.peer_app:app", "--port", str(port), "--log-level", "warning"]
    server = Server([*args, "--no-access-log"], env, port, log)
    try:
        server.wait_ready("/healthz")
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Deployment:
    instances: list[Server]  # what wrk and the probe talk to
    processes: list[Server]  # every process of the system (whose CPU time is counted)


@contextmanager
def running(system: str, setup: Setup) -> Iterator[Deployment]:
    """The system's 2 instances (and, for cdc, its invalidator), stopped afterwards: nothing
    of one system runs while another is measured."""
    with ExitStack() as stack:
        helpers: list[Server] = []
        if system == PEER:
            servers = [
                stack.enter_context(peer_server(setup.database_url, setup.log))
                for _ in range(INSTANCES)
            ]
        else:
            namespace = f"bench-peers-{uuid.uuid4().hex[:8]}"
            if system == CDC:
                # as the load test runs it: no refresh-ahead warming, so no worker needed
                invalidator = invalidator_server(
                    setup.database_url, setup.redis_url, setup.log, namespace, warm_top="0"
                )
                helpers.append(stack.enter_context(invalidator))
            servers = [
                stack.enter_context(
                    api_server(
                        setup.database_url,
                        setup.redis_url,
                        setup.log,
                        namespace=namespace,
                        **PGBUST_SETTINGS[system],
                    )
                )
                for _ in range(INSTANCES)
            ]
        yield Deployment(servers, [*servers, *helpers])


def install_peer_trigger(database_url: str) -> None:
    """PGCacheWatch's trigger on products, installed with its own CLI as its README says."""
    info = conninfo_to_dict(database_url)
    command = [sys.executable, "-m", "pgcachewatch", "install", "products", "--commit"]
    command += ["--pg-dsn", database_url, "--pg-port", str(info.get("port") or 5432)]
    subprocess.run(command, check=True, capture_output=True)


def lookups(system: str, servers: list[Server]) -> dict[str, float]:
    """Reads served so far from the process's own memory (pgbust's L1, PGCacheWatch's cache)
    and reads that went to Postgres, summed over the instances."""
    totals = {"in_process": 0.0, "postgres": 0.0}
    for server in servers:
        if system == PEER:
            stats = httpx.get(server.base_url + "/stats", timeout=5).json()
            totals["in_process"] += stats["hit"]
            totals["postgres"] += stats["miss"]
        else:
            text = httpx.get(server.base_url + "/metrics", timeout=5).text
            if "pgbust_api_db_loads_total" not in text:  # unlabelled: printed from the start
                raise RuntimeError("the API's /metrics has no pgbust_api_db_loads_total")
            totals["in_process"] += counter(text, 'pgbust_api_cache_hits_total{tier="l1"}')
            totals["postgres"] += counter(text, "pgbust_api_db_loads_total")
    return totals


# --- a round -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    fresh_at: float | None  # the first response with the new version arrived (None: timed out)
    stale_sent_at: float | None  # the last request answered with the old version was sent
    polls: int


async def _served(client: httpx.AsyncClient, url: str, version: int, give_up_at: float) -> Seen:
    """Poll url (one request in flight) until it serves `version` or newer."""
    polls = 0
    stale_sent_at = None
    while True:
        sent_at = time.perf_counter()
        response = await client.get(url)
        polls += 1
        if orjson.loads(response.content)["version"] >= version:
            return Seen(time.perf_counter(), stale_sent_at, polls)
        stale_sent_at = sent_at
        if time.perf_counter() > give_up_at:
            return Seen(None, stale_sent_at, polls)


def bounds_ms(acked: float, seen: Sequence[Seen]) -> tuple[float, float] | None:
    """When every instance served the new version, in ms after the acknowledgement: at most
    when the last instance's first fresh response arrived, at least when the last stale
    request was sent (a stale answer was produced after that send); None when one timed out."""
    if any(s.fresh_at is None for s in seen):
        return None
    upper = max(s.fresh_at for s in seen if s.fresh_at is not None) - acked
    lower = max([s.stale_sent_at - acked for s in seen if s.stale_sent_at is not None] + [0.0])
    return round(lower * 1000, 3), round(upper * 1000, 3)


async def probe(urls: list[str], database_url: str, ids: Iterator[int], seconds: float) -> Any:
    lags: list[float] = []
    lower_bounds: list[float] = []
    timeouts = requests = 0
    deadline = time.perf_counter() + seconds
    async with (
        httpx.AsyncClient(timeout=PROBE_TIMEOUT_S + 5) as client,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
    ):
        while time.perf_counter() < deadline:
            product_id = next(ids)
            targets = [f"{url}/products/{product_id}" for url in urls]
            # read first, so the entry is cached on both instances when the write lands
            await asyncio.gather(*(client.get(target) for target in targets))
            requests += len(targets)
            cursor = await conn.execute(PROBE_UPDATE, {"id": product_id})
            row = await cursor.fetchone()
            acked = time.perf_counter()
            assert row is not None
            seen = await asyncio.gather(
                *(_served(client, t, int(row[0]), acked + PROBE_TIMEOUT_S) for t in targets)
            )
            requests += sum(s.polls for s in seen)
            found = bounds_ms(acked, seen)
            if found is None:
                timeouts += 1
            else:
                lower_bounds.append(found[0])
                lags.append(found[1])
            await asyncio.sleep(PROBE_GAP_S)
    return {
        "lags_ms": lags,
        "lower_bounds_ms": lower_bounds,
        "timeouts": timeouts,
        "requests": requests,
    }


def _cpu_seconds(servers: list[Server]) -> float:
    return sum(server.cpu_seconds() for server in servers)


def measure(
    system: str,
    deployment: Deployment,
    setup: Setup,
    seconds: float,
    warm_s: float,
    probe_ids: Iterator[int] | None,
) -> dict[str, Any]:
    """Warm up under load, then one measured wrk run while pgbench writes (and the probe
    runs, when given ids)."""
    servers = deployment.instances
    url = servers[0].base_url
    script = wrk_script([s.port for s in servers], setup.ids_file)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(WRITE_SCRIPT)
    write_seconds = warm_s + seconds + 2  # outlasts both wrk runs
    command = pgbench.command(setup.database_url, Path(file.name), 2, write_seconds, WRITES_PER_S)
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_wrk(url, warm_s, CONNECTIONS, INSTANCES, script)
        before = lookups(system, servers)
        cpu_before = _cpu_seconds(deployment.processes)
        instances_cpu_before = _cpu_seconds(servers)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_wrk, url, seconds, CONNECTIONS, INSTANCES, script)
            probed = None
            if probe_ids is not None:
                urls = [s.base_url for s in servers]
                probed = asyncio.run(probe(urls, setup.database_url, probe_ids, seconds - 0.5))
            numbers = load.result()
        cpu = _cpu_seconds(deployment.processes) - cpu_before
        instances_cpu = _cpu_seconds(servers) - instances_cpu_before
        loadavg = os.getloadavg()[0]
        after = lookups(system, servers)
        out, _ = writer.communicate(timeout=write_seconds + 30)
    finally:
        if writer.poll() is None:
            writer.kill()
        os.unlink(file.name)
    per_request = 1000 / max(1, numbers["requests"])
    result = {
        "system": system,
        **numbers,
        # wrk's requests, plus the probe's own during freshness rounds
        "in_process_hit_share": round(
            (after["in_process"] - before["in_process"]) / max(1, numbers["requests"]), 4
        ),
        "db_read_share": round(
            (after["postgres"] - before["postgres"]) / max(1, numbers["requests"]), 4
        ),
        # the system's own processes (API instances, invalidator), not Postgres or Redis
        "cpu_ms_per_request": round(cpu * per_request, 3),
        "instances_cpu_ms_per_request": round(instances_cpu * per_request, 3),
        "write_tps": round(pgbench.tps(out), 1),
        "loadavg_1m": round(loadavg, 2),
    }
    if probed is not None:
        result["probe"] = probed
    return result


def reference_body(servers: list[Server]) -> bytes:
    """The JSON of a product nobody writes, from every instance (they must agree)."""
    urls = [f"{server.base_url}/products/{REFERENCE_ID}" for server in servers]
    bodies = {httpx.get(url, timeout=5).content for url in urls}
    if len(bodies) != 1:
        raise RuntimeError(f"instances disagree on product {REFERENCE_ID}: {bodies}")
    return bodies.pop()


# --- the run -------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"bench peers: {text}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool) -> None:
    ensure_wrk()
    if shutil.which("wrk") is None:
        # no fallback driver: spreading Zipf ids over 2 instances fast enough needs wrk
        raise SystemExit("bench peers: wrk is missing (apt-get install wrk)")
    rounds, seconds, warm_s = (1, 3.0, 1.0) if quick else (2, 20.0, 3.0)
    server_url = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    log = Path(tempfile.gettempdir()) / "pgbust-bench-peers-servers.log"
    load_rounds: list[dict[str, Any]] = []
    freshness_rounds: list[dict[str, Any]] = []
    bodies: dict[str, bytes] = {}
    probe_ids = itertools.cycle(range(PRODUCTS - PROBE_PRODUCTS + 1, PRODUCTS + 1))
    with (
        scratch_database(server_url, PRODUCTS, CATEGORIES) as database_url,
        tempfile.TemporaryDirectory() as scratch,
    ):
        install_peer_trigger(database_url)
        ids_file = Path(scratch) / "ids.txt"
        ids_file.write_text("\n".join(str(i) for i in zipf_ids(ID_DRAWS)) + "\n")
        setup = Setup(database_url, redis_url, log, ids_file)
        plan = [(r, s, False) for r, s in interleaved(SYSTEMS, rounds)]
        plan += [(r, s, True) for r, s in interleaved(FRESHNESS_SYSTEMS, rounds)]
        for round_no, system, with_probe in plan:
            with running(system, setup) as deployment:
                bodies[system] = reference_body(deployment.instances)
                ids = probe_ids if with_probe else None
                numbers = measure(system, deployment, setup, seconds, warm_s, ids)
            result = {"round": round_no, **numbers}
            (freshness_rounds if with_probe else load_rounds).append(result)
            kind = "freshness" if with_probe else "load"
            _say(
                f"{kind} round {round_no + 1}/{rounds} {system}: "
                f"{result['requests_per_s']:,.0f} req/s, p99 {result['p99_ms']} ms, "
                f"load {result['loadavg_1m']}"
            )
    if len(set(bodies.values())) != 1:
        raise RuntimeError(f"the systems serve different JSON for one product: {bodies}")
    load = summarize_load(load_rounds)
    freshness = summarize_freshness(freshness_rounds)
    data = {
        "settings": {
            "products": PRODUCTS,
            "categories": CATEGORIES,
            "instances_per_system": INSTANCES,
            "wrk_connections": CONNECTIONS,
            "wrk_threads": INSTANCES,
            "read_zipf_s": ZIPF_S,
            "write_zipf_s": PGBENCH_ZIPF_S,
            "writes_per_s": WRITES_PER_S,
            "ttl_s": TTL_S,
            "rounds": rounds,
            "seconds_per_round": seconds,
            "warm_up_s": warm_s,
            "probe_gap_s": PROBE_GAP_S,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "pgcachewatch": package_version("pgcachewatch"),
            "same_json_bytes": True,
            "quick": quick,
        },
        "load": load,
        "freshness": freshness,
        "ratios": ratios(load, load_rounds),
        "rounds": {"load": load_rounds, "freshness": freshness_rounds},
    }
    write(out, "peers", data, markdown(data))


def markdown(data: dict[str, Any]) -> str:
    settings, load, freshness = data["settings"], data["load"], data["freshness"]
    rows = [
        [
            system,
            f"{numbers['requests_per_s']:,.0f}",
            numbers["p50_ms"],
            numbers["p99_ms"],
            f"{numbers['in_process_hit_share']:.0%}",
            f"{numbers['db_read_share']:.0%}",
            f"{numbers['cpu_ms_per_request']} ({numbers['instances_cpu_ms_per_request']})",
            numbers["errors"],
            numbers["write_tps"],
            numbers["loadavg_1m"],
        ]
        for system, numbers in load.items()
    ]
    header = ["system", "req/s", "p50 ms", "p99 ms", "in-process hits", "reads from Postgres"]
    header += ["CPU ms/req (instances)", "errors", "writes/s", "load avg 1 min"]
    table = markdown_table(header, rows)
    fresh_rows = [
        [
            system,
            numbers["served_by_both_ms"]["p50"],
            numbers["served_by_both_ms"]["p99"],
            numbers["served_by_both_ms"]["max"],
            f"{numbers['lower_bound_ms']['p50']} / {numbers['lower_bound_ms']['p99']}",
            numbers["served_by_both_ms"]["n"],
            numbers["timeouts"],
            f"{numbers['requests_per_s']:,.0f}",
            f"{numbers['probe_request_share']:.1%}",
            numbers["loadavg_1m"],
        ]
        for system, numbers in freshness.items()
    ]
    fresh_header = ["system", "p50 ms", "p99 ms", "max ms", "at least p50 / p99 ms", "probes"]
    table += "\nOut-of-band UPDATE: commit acknowledged -> new version served by both instances\n\n"
    table += markdown_table(
        [
            *fresh_header,
            f"not within {PROBE_TIMEOUT_S:g} s",
            "req/s",
            "probe's share of requests",
            "load avg 1 min",
        ],
        fresh_rows,
    )
    r = data["ratios"]
    by_round = "; ".join(
        f"round {x['round']}: {x['requests_per_s']:.2f}x req/s, {x['p99']:.2f}x p99 "
        f"(load {x['loadavg_1m'][0]} / {x['loadavg_1m'][1]})"
        for x in r["per_round"]
    )
    table += (
        f"\npgbust cdc / PGCacheWatch: **{r['cdc_over_peer_requests_per_s']:.2f}x** req/s "
        f"(target >= 1.3), **{r['cdc_over_peer_p99']:.2f}x** p99 (target <= 1.0); {by_round}.\n"
        f"\n{settings['instances_per_system']} instances per system (1 uvicorn worker each), "
        f"wrk with {settings['wrk_connections']} connections (one thread per instance), "
        f"Zipf reads (s = {settings['read_zipf_s']:g}) over {settings['products']:,} products, "
        f"pgbench updating `stock` out of band at {settings['writes_per_s']}/s "
        f"(Zipf, s = {settings['write_zipf_s']:g}); means of {settings['rounds']} interleaved "
        f"rounds of {settings['seconds_per_round']:.0f} s after {settings['warm_up_s']:.0f} s "
        f"of warm-up; ttl = {settings['ttl_s']} s (no entry expires within a round); "
        f"PGCacheWatch {settings['pgcachewatch']}, Greedy strategy, cache per product id; "
        f"cdc without refresh-ahead warming. In-process hits: pgbust's L1, "
        f"PGCacheWatch's cache (the rest of pgbust's cached reads come from Redis). "
        f"CPU ms/req: CPU time of the system's own "
        f"processes (instances, and cdc's invalidator; not Postgres, not Redis) per request, "
        f"in brackets the 2 instances' alone. "
        f"Freshness: a probe every "
        f"{settings['probe_gap_s'] * 1000:.0f} ms, polling both instances with one request in "
        f"flight each; p50/p99/max: until the first response with the new version arrived from "
        f"both (what a client sees; it includes one request's wait under this load), at least: "
        f"from when the last request answered with the old version was sent; pgbust off reads "
        f"Postgres every time, so its row is the probe's own floor. Load average: the host's "
        f"1-minute load at the end of each round (2 cores, shared).\n"
    )
    return table
