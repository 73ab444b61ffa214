"""python -m loadtest --mode {nocache,ttl,cdc} --duration S [--users N] --out DIR
python -m loadtest compare [--duration S] [--users N] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtest.runner import MODES, compare, run_mode, sigterm_as_interrupt
from loadtest.settings import Settings
from pgbust.cli import run_guarded, setup_logging
from pgbust.settings import load_settings


def _common(parser: argparse.ArgumentParser, default_duration: int) -> None:
    parser.add_argument(
        "--duration", type=int, default=default_duration, help="seconds of load per mode"
    )
    parser.add_argument(
        "--users", type=int, default=None, help="Locust users (PGBUST_LOADTEST_USERS)"
    )
    parser.add_argument(
        "--write-rps", type=float, default=None, help="target writes/s (PGBUST_LOADTEST_WRITE_RPS)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="One headless staleness run: starts the stack a mode needs, runs Locust, "
        "writes DIR/summary.json, Locust's CSV and HTML. `python -m loadtest compare --help` "
        "runs all three modes.",
    )
    parser.add_argument("--mode", choices=MODES, required=True)
    _common(parser, 30)
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest compare",
        description="Run nocache, ttl and cdc with the same data and load; write compare.json, "
        "compare.md, compare.png and print the table.",
    )
    _common(parser, 20)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each mode's duration into this many runs, in alternating mode order "
        "(fairer on a shared machine)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    comparing = bool(argv) and argv[0] == "compare"
    args = (_compare_parser() if comparing else _run_parser()).parse_args(
        argv[1:] if comparing else argv
    )

    def go() -> None:
        settings = load_settings(
            Settings, loadtest_users=args.users, loadtest_write_rps=args.write_rps
        )
        setup_logging(settings.log_level, "loadtest")
        with sigterm_as_interrupt():
            if comparing:
                modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
                unknown = [m for m in modes if m not in MODES]
                if unknown:
                    raise SystemExit(f"python -m loadtest compare: unknown mode(s) {unknown}")
                compare(settings, args.out, args.duration, modes, rounds=max(1, args.rounds))
            else:
                run_mode(settings, args.mode, args.out, args.duration)

    try:
        run_guarded("loadtest", go)
    except KeyboardInterrupt:
        print("loadtest: interrupted; every started process was stopped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
