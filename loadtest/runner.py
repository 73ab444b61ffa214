"""Run one mode (or all three) end to end: database, stack, subscriber, Locust, summary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson

from loadtest import capture, report
from loadtest.lag import LagTracker, Received
from loadtest.launch import run_locust
from loadtest.plan import PLAN_ENV, Plan, make_plan
from loadtest.servers import drop_namespace, drop_task_queue, prepare_database, say
from loadtest.settings import Settings
from loadtest.stack import Stack
from loadtest.stats import RawRun, summarize_rounds
from loadtest.subscriber import ChannelRecorder
from pgbust.checks import require_redis
from pgbust.errors import StartupError
from pgbust.keys import Keyspace

MODES = ("nocache", "ttl", "cdc")
API_CACHE_MODE = {"nocache": "off", "ttl": "ttl", "cdc": "cdc"}
DRAIN_S = 0.5  # after the load stops, the least time left for late invalidations
DRAIN_MAX_S = 5.0  # cdc: wait up to this long for every write's invalidation to arrive


def _mode_env(
    settings: Settings,
    mode: str,
    namespace: str,
    token: str,
    capture_env: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PGBUST_CACHE_TTL_S", PLAN_ENV}}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        PGBUST_NAMESPACE=namespace,
        API_TOKEN=token,
        PGBUST_CACHE_MODE=API_CACHE_MODE[mode],
        PGBUST_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    if mode == "ttl":
        env["PGBUST_CACHE_TTL_S"] = f"{settings.loadtest_ttl_s:g}"
    if mode == "cdc":
        env.update(capture_env if capture_env is not None else capture.prepare(settings))
    return env


def _drain(raw: RawRun, recorder: ChannelRecorder) -> None:
    """Wait (up to DRAIN_MAX_S) until an invalidation for every write has arrived, so a slow
    invalidator at the very end of the run is measured as slow, not as never."""
    deadline = time.monotonic() + DRAIN_MAX_S
    while time.monotonic() < deadline:
        tracker = LagTracker(list(recorder.messages))
        if all(tracker.lag_s(write) is not None for write in raw.writes):
            return
        time.sleep(0.1)


@dataclasses.dataclass
class Round:
    """What one run of one mode recorded, before it is summarised."""

    raw: RawRun
    messages: list[Received] | None  # None: the mode has no invalidation channel
    extra: dict[str, Any]


def _save_metrics(api_urls: list[str], folder: Path) -> None:
    """Each API instance's /metrics at the end of the load, next to its log: what the read
    path did (hits per tier, fills refused and why, bypasses, busy waits) explains a round."""
    for n, url in enumerate(api_urls, 1):
        try:
            text = httpx.get(url + "/metrics", timeout=5).text
        except httpx.HTTPError as exc:
            text = f"# /metrics unreachable: {exc}\n"
        (folder / f"api-{n}.metrics").write_text(text)


def _settings_used(settings: Settings, mode: str, plan: Plan) -> dict[str, Any]:
    return {
        "users": plan.users,
        "readers": plan.readers,
        "api_writers": plan.api_writers,
        "oob_writers": plan.oob_writers,
        "target_read_rps": round(plan.read_rps, 1),
        "target_write_rps": round(plan.api_write_rps + plan.oob_write_rps, 1),
        "oob_fraction": settings.loadtest_oob_fraction,
        "zipf_s": plan.zipf_s,
        "write_zipf_s": plan.write_zipf_s,
        "page_share": plan.page_share,
        "summary_share": plan.summary_share,
        "api_instances": len(plan.api_urls),
        "ttl_s": settings.loadtest_ttl_s if mode == "ttl" else None,
        "products": plan.product_ids[1] - plan.product_ids[0] + 1,
        "categories": plan.category_ids[1] - plan.category_ids[0] + 1,
        "worker": mode == "cdc" and settings.loadtest_worker,
        "warm_top": settings.loadtest_warm_top if mode == "cdc" else None,
        "capture": capture.describe(settings) if mode == "cdc" else None,
    }


def collect_round(
    settings: Settings,
    mode: str,
    out: Path,
    duration_s: int,
    ranges: tuple[tuple[int, int], tuple[int, int]],
    quiet: bool = False,
    capture_env: dict[str, str] | None = None,
) -> Round:
    """Start what the mode needs, run Locust for duration_s, stop everything, return the record.

    Locust's CSV/HTML report and the processes' logs stay in `out`."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    out.mkdir(parents=True, exist_ok=True)
    require_redis(settings.redis_url)
    product_ids, category_ids = ranges
    namespace = f"{settings.namespace}-lt-{mode}-{uuid.uuid4().hex[:6]}"
    token = settings.api_token or secrets.token_urlsafe(24)
    env = _mode_env(settings, mode, namespace, token, capture_env)
    stack = Stack(env, out / "logs", settings.loadtest_startup_timeout_s)
    recorder: ChannelRecorder | None = None
    raw_path = out / "raw.json"
    raw_path.unlink(missing_ok=True)
    plan = make_plan(
        settings,
        mode=mode,
        api_urls=[],
        api_token=token,
        raw_out=str(raw_path),
        product_ids=product_ids,
        category_ids=category_ids,
    )
    started = time.time()
    cpu_before: dict[str, float] = {}
    cpu_after: dict[str, float] = {}
    load_wall = 0.0
    try:
        parts = [f"{settings.loadtest_api_instances} API instances ({API_CACHE_MODE[mode]})"]
        api_urls = stack.start_apis(settings.loadtest_api_instances, {})
        if mode == "cdc":
            stack.start_invalidator(settings.loadtest_warm_top)
            parts.append(
                f"invalidator (capture {capture.describe(settings)}, "
                f"warm top {settings.loadtest_warm_top})"
            )
            if settings.loadtest_worker:
                stack.start_worker()
                parts.append("celery worker")
        say(f"{mode}: started {', '.join(parts)} in namespace {namespace}")
        cpu_before = stack.cpu_seconds()
        load_started = time.time()
        recorder = ChannelRecorder(settings.redis_url, Keyspace(namespace)).start()
        plan = dataclasses.replace(plan, api_urls=tuple(api_urls))
        say(
            f"{mode}: {plan.readers} readers (~{plan.read_rps:.0f}/s), {plan.api_writers} API "
            f"writers (~{plan.api_write_rps:.0f}/s), {plan.oob_writers} out-of-band writers "
            f"(~{plan.oob_write_rps:.0f}/s) for {duration_s}s"
        )
        run_locust(plan, env, out, duration_s, quiet)
        cpu_after = stack.cpu_seconds()
        load_wall = max(time.time() - load_started, 1e-9)
        _save_metrics(api_urls, out / "logs")
        time.sleep(DRAIN_S)
        if mode == "cdc" and raw_path.exists():
            _drain(RawRun.from_json(orjson.loads(raw_path.read_bytes())), recorder)
    finally:
        messages = recorder.stop() if recorder is not None else []
        stack.stop()
        drop_namespace(settings.redis_url, namespace)
        if mode == "cdc":
            drop_task_queue(settings, namespace)
    if not raw_path.exists():
        raise StartupError(f"the load generator wrote no record; see {out / 'locust.log'}")
    raw = RawRun.from_json(orjson.loads(raw_path.read_bytes()))
    raw_path.unlink(missing_ok=True)  # large; summary.json and Locust's CSV are the record
    extra = {
        "settings": _settings_used(settings, mode, plan),
        "namespaces": [namespace],
        "wall_s": round(time.time() - started, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "stack_cpu_percent": {
            name: round(100.0 * (cpu_after[name] - cpu_before.get(name, 0.0)) / load_wall, 1)
            for name in cpu_after
        },
        "cpus": os.cpu_count(),
        # how the cdc mode captured changes (PGBUST_CAPTURE); nothing is captured otherwise
        "capture": settings.capture if mode == "cdc" else None,
    }
    return Round(raw, messages if mode == "cdc" else None, extra)


def _merged_extra(rounds: list[Round]) -> dict[str, Any]:
    extra = dict(rounds[0].extra)
    extra["rounds"] = len(rounds)
    extra["namespaces"] = [ns for r in rounds for ns in r.extra["namespaces"]]
    extra["wall_s"] = round(sum(r.extra["wall_s"] for r in rounds), 1)
    loads = [r.extra["load_average"] for r in rounds]
    extra["load_average"] = [round(sum(col) / len(col), 2) for col in zip(*loads, strict=True)]
    extra["load_average_by_round"] = [load[0] for load in loads]
    names = {name for r in rounds for name in r.extra["stack_cpu_percent"]}
    extra["stack_cpu_percent"] = {
        name: round(
            sum(r.extra["stack_cpu_percent"].get(name, 0.0) for r in rounds) / len(rounds), 1
        )
        for name in sorted(names)
    }
    return extra


def _round_figures(one: Round, warmup_s: float) -> dict[str, Any]:
    """The headline figures of one round alone: on a shared machine, compare modes round by
    round (neighbouring rounds saw the same neighbours' load), not only over the whole run."""
    alone = summarize_rounds([(one.raw, one.messages)], warmup_s=warmup_s)
    return {
        "read_p50_ms": alone["read_latency_ms"]["p50"],
        "read_rps": alone["read_rps"],
        "cache_hit_ratio": alone.get("cache_hit_ratio"),
        "load_average": one.extra["load_average"][0],
    }


def finish(
    settings: Settings, mode: str, rounds: list[Round], out: Path, round_s: int
) -> dict[str, Any]:
    """Summarise a mode's rounds into out/summary.json."""
    warmup = min(settings.loadtest_warmup_s, round_s / 2)
    summary = summarize_rounds(
        [(r.raw, r.messages) for r in rounds], warmup_s=warmup, extra=_merged_extra(rounds)
    )
    if len(rounds) > 1:
        summary["by_round"] = [_round_figures(r, warmup) for r in rounds]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    say(
        f"{mode}: {summary['reads']} reads ({summary['read_rps']:g}/s, p50 "
        f"{summary['read_latency_ms']['p50']} ms), {summary['writes']} writes "
        f"({summary['write_rps']:g}/s), {summary['stale_reads']} stale, "
        f"max staleness {summary['staleness_ms']['max']} ms -> {out / 'summary.json'}"
    )
    return summary


def run_mode(
    settings: Settings,
    mode: str,
    out: Path,
    duration_s: int,
    *,
    ranges: tuple[tuple[int, int], tuple[int, int]] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """One headless run of one mode; writes out/summary.json (+ Locust CSV/HTML) and returns it."""
    ranges = ranges or prepare_database(settings)
    capture_env = capture.prepare(settings) if mode == "cdc" else None
    one = collect_round(settings, mode, out, duration_s, ranges, quiet, capture_env)
    return finish(settings, mode, [one], out, duration_s)


def compare(
    settings: Settings,
    out: Path,
    duration_s: int,
    modes: tuple[str, ...] = MODES,
    rounds: int = 1,
) -> dict[str, dict[str, Any]]:
    """Run every mode with the same data and load; write compare.json/.md/.png; print the table.

    With rounds > 1 each mode runs duration_s / rounds at a time, in alternating order
    (A B C C B A ...), so a neighbour's load on a shared machine falls on every mode alike."""
    ranges = prepare_database(settings)
    # before any mode runs: a server that cannot capture as configured stops the run now
    capture_env = capture.prepare(settings) if "cdc" in modes else None
    round_s = max(1, duration_s // rounds)
    collected: dict[str, list[Round]] = {mode: [] for mode in modes}
    for index in range(rounds):
        order = modes if index % 2 == 0 else tuple(reversed(modes))
        for mode in order:
            folder = out / mode if rounds == 1 else out / mode / f"round-{index + 1}"
            if rounds > 1:
                say(f"{mode}: round {index + 1} of {rounds}")
            collected[mode].append(
                collect_round(settings, mode, folder, round_s, ranges, capture_env=capture_env)
            )
    summaries = {
        mode: finish(settings, mode, collected[mode], out / mode, round_s) for mode in modes
    }
    write_comparison(summaries, out)
    print(report.markdown(summaries))
    return summaries


def write_comparison(summaries: dict[str, dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    body = {
        "modes": {
            mode: {k: v for k, v in s.items() if k != "timeline"} for mode, s in summaries.items()
        },
        "headline": report.headline(summaries),
    }
    (out / "compare.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    (out / "compare.md").write_text(
        "# Staleness load test: nocache vs ttl vs cdc\n\n"
        + report.markdown(summaries)
        + "\n![latency and staleness over time](compare.png)\n"
    )
    report.chart(summaries, out / "compare.png")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Any:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped on the way out."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
