"""python -m worker audit --sample N: one consistency audit now, figures on stdout.

`python -m worker stats` prints the workers' counters and the last audit of the namespace.
(The workers themselves run with `celery -A worker worker` and `celery -A worker beat`.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
import psycopg

from pgbust.checks import require_postgres, require_redis
from pgbust.cli import run_guarded, setup_logging
from pgbust.redis_cache import RedisCache
from pgbust.settings import load_settings
from worker.audit import AuditReport, run_and_record
from worker.runtime import runtime
from worker.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="sample cached entries and compare with Postgres")
    audit.add_argument("--sample", type=int, default=None, help="entries to sample")
    audit.add_argument("--grace-ms", type=int, default=None, help="re-check delay")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("stats", help="print counters and the last audit (JSON)")
    return parser


def _audit(settings: Settings, sample: int, as_json: bool) -> None:
    """The same code path as a beat run (audit.run_and_record), on this command's settings."""

    async def job(cache: RedisCache, conn: psycopg.AsyncConnection[Any]) -> AuditReport:
        return await run_and_record(
            cache, conn, sample, settings.audit_grace_ms, served=bridge.served
        )

    bridge = runtime(settings)
    try:
        report = bridge.run_with_db(job)
    finally:
        bridge.close()
    if as_json:
        print(orjson.dumps(report.as_dict()).decode())
        return
    print(report.line())
    for entry in report.deleted:
        print(f"deleted stale entry {entry}")


async def _stats(settings: Settings) -> None:
    import redis.asyncio as aioredis

    from pgbust.keys import Keyspace
    from worker import stats

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keyspace = Keyspace(settings.namespace, cluster=settings.redis_cluster)
        body = {
            "counters": await stats.read_stats(client, keyspace),
            "last_audit": await stats.read_audit(client, keyspace),
        }
    finally:
        await client.aclose()
    print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    grace_ms = getattr(args, "grace_ms", None)
    settings = load_settings(Settings, audit_grace_ms=grace_ms)
    setup_logging(settings.log_level, "worker")
    require_redis(settings.redis_url)
    if args.command == "stats":
        asyncio.run(_stats(settings))
        return
    require_postgres(settings.database_url)
    _audit(settings, args.sample or settings.audit_sample, args.json)


if __name__ == "__main__":
    run_guarded("worker", lambda: main(sys.argv[1:]))
