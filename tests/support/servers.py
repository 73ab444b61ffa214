"""Private Redis and Postgres instances for tests that stop, restart or break a server.

Never used on the shared servers: each instance lives in a temporary folder on a free port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import redis

from pgbust.devservers import free_port, postgres_bindir, redis_server_binary


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll a condition until it holds (for readiness, not for ordering races)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def start(self, *, save_snapshot: bool = False, extra: tuple[str, ...] = ()) -> None:
        """`extra`: more redis-server arguments (e.g. ("--cluster-enabled", "yes"))."""
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "no",
            "--dbfilename",
            "dump.rdb",
            "--save",
            "" if not save_snapshot else "3600 1",
            "--logfile",
            str(self.folder / "redis.log"),
            *extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self.ping, timeout=10):
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def snapshot(self) -> None:
        """Write dump.rdb now (SAVE), so a later start can come back with this data."""
        client = self.client()
        try:
            client.save()
        finally:
            client.close()

    def stop(self, *, keep_snapshot: bool = True) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)  # no shutdown save: only explicit snapshots
        self.process.wait(timeout=10)
        self.process = None
        if not keep_snapshot:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / "dump.rdb").unlink()


class PostgresCluster:
    """A throw-away cluster (initdb + pg_ctl, as the postgres user when running as root)."""

    def __init__(self, folder: Path, settings: dict[str, str] | None = None) -> None:
        """`settings`: server settings given to every start (e.g. {"wal_level": "logical"})."""
        self.folder = folder
        self.settings = dict(settings or {})
        self.data = folder / "data"
        self.port = free_port()
        self.bindir = postgres_bindir()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
            for parent in [folder, *folder.parents]:
                if parent == Path("/"):
                    break
                # the postgres user must be able to reach its data folder
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
            shutil.chown(folder, "postgres")

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def configure(self, **settings: str | int) -> None:
        """Server settings for the next start (appended to postgresql.conf)."""
        with (self.data / "postgresql.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = '{value}'\n")

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.folder / "log"),
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            + "".join(f" -c {name}={value}" for name, value in self.settings.items()),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "restart")


class StreamingReplica(PostgresCluster):
    """A hot standby of a private `primary`: `pg_basebackup -R` (streaming, standby.signal),
    its own port; replay paused and resumed on demand."""

    def __init__(self, folder: Path, primary: PostgresCluster) -> None:
        super().__init__(folder, primary.settings)
        self.primary = primary

    def init(self) -> None:
        """Copy the running primary (it needs a replication connection: initdb's default
        pg_hba trusts them from 127.0.0.1, and max_wal_senders defaults to 10)."""
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-D",
            str(self.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _query(self, query: str) -> object:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(query).fetchone()
        return None if row is None else row[0]

    def replay_lsn(self) -> str | None:
        value = self._query("SELECT pg_last_wal_replay_lsn()::text")
        return None if value is None else str(value)

    def caught_up(self) -> bool:
        """Replayed everything the primary has inserted into its WAL so far. At a page
        boundary the insert position points past the next page's header, which no replay
        reaches until the primary writes another record (the bgwriter's snapshot comes every
        15 s: waits of 24 s were seen), so while behind this writes one: a commit record."""
        with psycopg.connect(self.primary.admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            target = str(row[0])
            if self._query(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
                return True
            conn.execute("SELECT txid_current()")  # an xid: its commit writes WAL
        return False

    def pause_replay(self) -> None:
        """Stop replaying (WAL is still received); returns once replay is paused."""
        self._query("SELECT pg_wal_replay_pause()")
        assert wait_until(
            lambda: self._query("SELECT pg_get_wal_replay_pause_state()") == "paused", 10
        ), "replay did not pause"

    def resume_replay(self, *, wait_caught_up: bool = True) -> None:
        self._query("SELECT pg_wal_replay_resume()")
        if wait_caught_up:
            assert wait_until(self.caught_up, 20), "the replica did not catch up"
