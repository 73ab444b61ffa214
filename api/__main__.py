"""python -m api --port P [--host H] [--workers N]: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
from types import FrameType

import uvicorn

from api.settings import Settings
from pgbust.checks import require_postgres, require_redis
from pgbust.cli import run_guarded, setup_logging
from pgbust.settings import load_settings, settings_environment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m api",
        description="Serve the pgbust API (settings from the environment, see README).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=None, help="uvicorn worker processes (PGBUST_WORKERS)"
    )
    return parser


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def serve() -> None:
        settings = load_settings(Settings, workers=args.workers)
        setup_logging(settings.log_level, "api")
        require_postgres(settings.database_url)
        if settings.cache_mode != "off":
            require_redis(settings.redis_url)
        # uvicorn's worker processes build the app from the environment (create_app): write
        # this command's settings, flags included, into it so they build the same settings
        os.environ.update(settings_environment(settings))
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
        # found installed: make that one a clean exit 0.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=5,
        )

    run_guarded("api", serve)


if __name__ == "__main__":
    main()
