"""Finds or starts the Postgres and Redis servers that `make demo` and `make test` use.

Order of preference, for each server: the URL in the environment; a local server on the
default port (pgbust then uses a database / key namespace of its own and touches nothing
else); otherwise a private instance started from the distribution's binaries (installed with
apt-get when missing) under .pgbust/, which `make clean` stops and removes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

STATE_DIR = Path(os.environ.get("PGBUST_STATE_DIR", ".pgbust")).resolve()
DEFAULT_DB = "pgbust"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def apt_install(*packages: str) -> None:
    if not shutil.which("apt-get"):
        raise SystemExit(f"devservers: {packages} missing and apt-get is not available")
    print(f"devservers: installing {' '.join(packages)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for found in candidates:
        if (found / "initdb").exists():
            return found
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    apt_install("postgresql")
    return postgres_bindir()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    apt_install("redis-server")
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def ensure_database(admin_url: str, dbname: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def _try_local_postgres() -> str | None:
    if not _port_open(5432):
        return None
    user = pwd.getpwuid(os.getuid()).pw_name
    for role in (user, "postgres"):
        admin = f"postgresql://{role}@127.0.0.1:5432/postgres"
        try:
            ensure_database(admin, DEFAULT_DB)
        except psycopg.Error:
            continue
        return with_database(admin, DEFAULT_DB)
    return None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # Postgres refuses to run as root: hand the private cluster to the postgres user.
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_private_postgres(root: Path) -> str:
    bindir = postgres_bindir()
    data = root / "pg" / "data"
    port_file = root / "pg" / "port"
    data.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            pwd.getpwnam("postgres")
        shutil.chown(data.parent, "postgres")
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            _as_postgres_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    if not _port_open(port):
        subprocess.run(
            _as_postgres_user(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-w",
                    "-l",
                    str(data.parent / "log"),
                    "-o",
                    f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port_file.write_text(str(port))
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    ensure_database(admin, DEFAULT_DB)
    return with_database(admin, DEFAULT_DB)


def start_private_redis(root: Path) -> str:
    folder = root / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    if not _port_open(port):
        subprocess.run(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(folder),
                "--pidfile",
                str(folder / "redis.pid"),
                "--logfile",
                str(folder / "redis.log"),
            ],
            check=True,
        )
        port_file.write_text(str(port))
        for _ in range(100):
            if _port_open(port):
                break
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def choose(root: Path = STATE_DIR) -> dict[str, str]:
    database_url = os.environ.get("DATABASE_URL") or _try_local_postgres()
    if not database_url:
        database_url = start_private_postgres(root)
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        local = "redis://127.0.0.1:6379/0"
        redis_url = local if _redis_answers(local) else start_private_redis(root)
    broker = os.environ.get("CELERY_BROKER_URL") or with_database(redis_url, "1")
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": broker}


def stop(root: Path = STATE_DIR) -> None:
    pid_file = root / "redis" / "redis.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), 15)
    data = root / "pg" / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres_user(
                [str(postgres_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
            ),
            check=False,
            stdout=subprocess.DEVNULL,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgbust.devservers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ensure_cmd = sub.add_parser("ensure", help="find or start Postgres and Redis")
    ensure_cmd.add_argument("--env-file", type=Path, required=True)
    sub.add_parser("stop", help="stop the private instances started under .pgbust/")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop()
        return
    chosen = choose()
    args.env_file.parent.mkdir(parents=True, exist_ok=True)
    args.env_file.write_text("".join(f"{key}={value}\n" for key, value in chosen.items()))
    for key, value in chosen.items():
        print(f"devservers: {key}={value}", file=sys.stderr)


if __name__ == "__main__":
    main()
