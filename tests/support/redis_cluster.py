"""A private Redis Cluster for tests: three masters with one replica each, six redis-server
processes on free ports (cluster-enabled yes), created with `redis-cli --cluster create`.

Besides start and stop it offers the faults the chaos tests inject: kill a master (its
replica is promoted), CLUSTER FAILOVER on a replica, and moving one slot (with its keys) to
another master the way `redis-cli --cluster reshard` does (SETSLOT IMPORTING / MIGRATING,
MIGRATE, SETSLOT NODE). Never used on the shared Redis.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from pgbust.devservers import redis_server_binary
from tests.support.servers import RedisServer, wait_until

# short enough for a failover within a couple of seconds, long enough not to flap on a busy
# two-core machine
NODE_TIMEOUT_MS = 1500


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port_pair() -> int:
    """A free client port whose cluster bus port (+10000, below 65536) is free too: Redis
    refuses client ports above 55535, which the OS's ephemeral range often hands out."""
    for _ in range(200):
        port = random.randint(20_000, 30_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_cli_binary() -> str:
    server = Path(redis_server_binary())
    beside = server.with_name("redis-cli")
    return str(beside) if beside.exists() else "redis-cli"


@dataclass(frozen=True)
class NodeInfo:
    port: int
    node_id: str
    role: str  # "master" | "slave"
    master_id: str  # "" for a master
    slots: tuple[tuple[int, int], ...]


# Redis abandons a manual failover after CLUSTER_MF_TIMEOUT (5 s); a little more than that
MANUAL_FAILOVER_WINDOW_S = 6.0


class RedisClusterServers:
    """Six redis-server processes forming one cluster (3 masters, 1 replica each)."""

    def __init__(self, folder: Path, size: int = 6) -> None:
        self.folder = folder
        self.nodes = [
            RedisServer(folder / f"node{i}", port=cluster_port_pair()) for i in range(size)
        ]
        self.replicas_per_master = 1

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            node.start(
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node.folder / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # a replica with a stale link may still be promoted: tests kill masters
                    "--cluster-replica-validity-factor",
                    "0",
                )
            )
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        if not self.wait_healthy(timeout=30):
            raise RuntimeError(f"redis cluster did not become healthy: {self.describe()}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(keep_snapshot=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- addresses and clients ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """REDIS_URL for pgbust: any node; the client discovers the others."""
        return self.running()[0].url

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def client(self) -> SyncRedisCluster:
        first = self.running()[0]
        return SyncRedisCluster(host="127.0.0.1", port=first.port)

    # --- what the cluster says about itself ---------------------------------------------------

    def _ask(self, node: RedisServer, *command: str) -> str | None:
        client = node.client()
        try:
            reply = _command(client, *command)
            return reply.decode() if isinstance(reply, bytes) else str(reply)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def topology(self) -> list[NodeInfo]:
        """CLUSTER NODES as seen by a running node (the first that answers)."""
        for node in self.running():
            client = node.client()
            try:
                text = _command(client, "CLUSTER", "NODES")
            except redis.RedisError:
                continue
            finally:
                client.close()
            text = text.decode() if isinstance(text, bytes) else str(text)
            return [_parse_node(line) for line in text.splitlines() if line.strip()]
        return []

    def masters(self) -> list[NodeInfo]:
        return sorted(
            (n for n in self.topology() if n.role == "master" and n.slots), key=lambda n: n.port
        )

    def replica_of(self, master: NodeInfo) -> NodeInfo:
        return next(n for n in self.topology() if n.master_id == master.node_id)

    def master_of_slot(self, slot: int) -> NodeInfo:
        return next(n for n in self.masters() if any(a <= slot <= b for a, b in n.slots))

    def keyslot(self, key: str) -> int:
        client = self.running()[0].client()
        try:
            return int(_command(client, "CLUSTER", "KEYSLOT", key))
        finally:
            client.close()

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok, agrees on the masters, and every running
        replica's link to its master is up."""
        for node in self.running():
            info = self._ask(node, "CLUSTER", "INFO")
            if info is None or "cluster_state:ok" not in info:
                return False
            replication = self._ask(node, "INFO", "replication")
            if replication is None:
                return False
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        nodes = self.topology()
        masters = [n for n in nodes if n.role == "master" and n.slots]
        replicas = [n for n in nodes if n.role == "slave"]
        covered = sum(b - a + 1 for m in masters for a, b in m.slots)
        running = len(self.running())
        return covered == 16384 and len(masters) + len(replicas) == running

    def wait_healthy(self, timeout: float = 30.0) -> bool:
        return wait_until(self.healthy, timeout=timeout, interval=0.1)

    def describe(self) -> str:
        return "; ".join(
            f"{n.port} {n.role} {list(n.slots)}"
            for n in sorted(self.topology(), key=lambda n: n.port)
        )

    # --- faults -------------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown save): the cluster fails it over after the timeout."""
        self.node(port).stop(keep_snapshot=False)

    def wait_promoted(self, replica: NodeInfo, timeout: float = 30.0) -> bool:
        """True once `replica` is a master with slots and the cluster is ok again."""

        def promoted() -> bool:
            now = [n for n in self.topology() if n.node_id == replica.node_id]
            if not now or now[0].role != "master" or not now[0].slots:
                return False
            info = self._ask(self.node(replica.port), "CLUSTER", "INFO")
            return info is not None and "cluster_state:ok" in info

        return wait_until(promoted, timeout=timeout, interval=0.1)

    def failover(self, replica: NodeInfo, timeout: float = 30.0) -> None:
        """CLUSTER FAILOVER on a replica (a coordinated switch, no data lost).

        Redis answers OK and runs the switch in the background; a manual failover whose
        election does not end within CLUSTER_MF_TIMEOUT (5 s: a busy host delays the masters'
        votes) is abandoned without a word, and the operator's remedy is to ask again. So the
        command is sent again each time that window has passed, until `timeout`."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            client = self.node(replica.port).client()
            try:
                _command(client, "CLUSTER", "FAILOVER")
            finally:
                client.close()
            window = min(MANUAL_FAILOVER_WINDOW_S, max(0.0, deadline - time.monotonic()))
            if self.wait_promoted(replica, timeout=window):
                return
        raise RuntimeError(
            f"failover to {replica.port} did not finish ({attempts} attempts): {self.describe()}"
        )

    def move_slot(self, slot: int, target: NodeInfo, batch: int = 100) -> int:
        """Move one slot and its keys to `target`, as `redis-cli --cluster reshard` does;
        returns how many keys moved."""
        source = self.master_of_slot(slot)
        if source.node_id == target.node_id:
            return 0
        src = self.node(source.port).client()
        dst = self.node(target.port).client()
        moved = 0
        try:
            _command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            _command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            while keys := _command(src, "CLUSTER", "GETKEYSINSLOT", slot, batch):
                _command(
                    src, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
            for node in self.masters():
                client = self.node(node.port).client()
                try:
                    _command(client, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()
        return moved


def _command(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _parse_node(line: str) -> NodeInfo:
    # <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot> <slot> ...
    parts = line.split()
    port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
    flags = parts[2].split(",")
    role = "master" if "master" in flags else "slave"
    slots = []
    for part in parts[8:]:
        if part.startswith("["):  # a slot being imported or migrated
            continue
        low, _, high = part.partition("-")
        slots.append((int(low), int(high or low)))
    alive = "fail" not in flags and "fail?" not in flags
    return NodeInfo(
        port=port,
        node_id=parts[0],
        role=role if alive else f"{role}-failed",
        master_id="" if parts[3] == "-" else parts[3],
        slots=tuple(slots),
    )
