"""python -m invalidator [--metrics-port P] [--database-url URL] [--redis-url URL]
[--celery-broker-url URL]: run the change-capture invalidator daemon."""

from __future__ import annotations

import argparse
import asyncio
import signal

from invalidator.app import Invalidator
from invalidator.settings import Settings
from pgbust.checks import require_postgres, require_redis
from pgbust.cli import run_guarded, setup_logging
from pgbust.settings import load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m invalidator", description=__doc__)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /healthz and /metrics (overrides PGBUST_INVALIDATOR_METRICS_PORT, 9108)",
    )
    parser.add_argument("--database-url", default=None, help="overrides DATABASE_URL")
    parser.add_argument(
        "--redis-url", default=None, help="overrides REDIS_URL (and the broker derived from it)"
    )
    parser.add_argument(
        "--celery-broker-url", default=None, help="overrides CELERY_BROKER_URL (worker tasks)"
    )
    return parser.parse_args(argv)


async def serve(settings: Settings) -> None:
    daemon = Invalidator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    await daemon.run()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def start() -> None:
        settings = load_settings(
            Settings,
            metrics_port=args.metrics_port,
            database_url=args.database_url,
            redis_url=args.redis_url,
            celery_broker_url=args.celery_broker_url,
        )
        setup_logging(settings.log_level, "invalidator")
        require_postgres(settings.database_url)
        require_redis(settings.redis_url)
        asyncio.run(serve(settings))

    run_guarded("invalidator", start)


if __name__ == "__main__":
    main()
