"""python -m bench {all,NAME...} --out DIR: run benchmarks and write their result files."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# name -> module with `def run(out: Path, quick: bool) -> None`
BENCHMARKS = {
    "invalidator": "bench.invalidator",
    "http": "bench.http",
    "loadtest": "bench.loadtest",
    "worker": "bench.worker",
    "peers": "bench.peers",
    "capture": "bench.capture",
    "wal": "bench.wal",
    "redis-cluster": "bench.redis_cluster",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="+", help=f"'all' or any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="short runs (for a smoke check)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.names == ["all"] else args.names
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    for name in names:
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError as exc:
            print(f"bench: skipping {name}: {exc}", file=sys.stderr)
            continue
        print(f"bench: running {name}", file=sys.stderr)
        module.run(args.out, args.quick)


if __name__ == "__main__":
    main()
