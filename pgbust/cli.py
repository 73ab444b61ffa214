"""Helpers every command-line entry point uses: one-line errors, logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from pgbust.errors import ConfigError, StartupError

T = TypeVar("T")


def fail(program: str, message: str, code: int) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_guarded(program: str, main: Callable[[], T]) -> T:
    """Run main; turn configuration and start-up errors into one line and a non-zero exit."""
    try:
        return main()
    except ConfigError as exc:
        fail(program, str(exc), 2)
    except StartupError as exc:
        fail(program, str(exc), 1)


def setup_logging(level: str, program: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {program} %(name)s: %(message)s",
        stream=sys.stderr,
    )
