"""The Redis key and channel names of one namespace, in one place (pure, no I/O).

An *entry* is a logical cache item ("order:42", named by the application's declaration);
the Redis key that holds it is "<ns>:v:<entry>". An entry may be filed under *tags*; a tag is
invalidated in O(1) by bumping its generation, "<ns>:g:<tag>", which is part of every tagged
entry's stamp (pgbust/lua.py). Which entries and tags exist is the declaration's business
(pgbust.toml), never this module's.

On a Redis Cluster (`cluster=True`) a script may only touch keys of one hash slot, so some
names carry a hash tag; with the switch off every name is unchanged (no migration):
- the channel and the capture liveness key share the namespace's slot, "{<ns>}:...": the
  heartbeat sets the one and publishes (SPUBLISH) on the other in one script.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgbust.slots import key_slot, slot_tag


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Redis key names of one namespace; several deployments can share one Redis."""

    namespace: str
    cluster: bool = False  # PGBUST_REDIS_CLUSTER: hash-tagged names, see the module doc

    @property
    def _home(self) -> str:
        """The prefix of the namespace-wide keys that must share one slot on a cluster."""
        return f"{{{self.namespace}}}" if self.cluster else self.namespace

    @property
    def epoch(self) -> str:
        return f"{self.namespace}:epoch"

    @property
    def server_identity(self) -> str:
        return f"{self.namespace}:server_run_id"

    @property
    def channel(self) -> str:
        return f"{self._home}:invalidations"

    @property
    def capture_alive(self) -> str:
        """Set (with a short TTL) by the active invalidator while its capture channel is proven
        alive; readers serve and fill Redis only while it exists."""
        return f"{self._home}:capture:alive"

    @property
    def lsn_marker(self) -> str:
        """An LSN at or past every commit whose invalidation was applied: loads read a replica
        only once it has replayed that far (pgbust/replica.py)."""
        return f"{self.namespace}:lsn"

    @property
    def worker_stats(self) -> str:
        """Hash of the workers' task counters (worker/stats.py)."""
        return f"{self.namespace}:worker:stats"

    @property
    def worker_audit(self) -> str:
        """The last consistency audit's report, JSON (worker/stats.py; `pgbust status`)."""
        return f"{self.namespace}:worker:audit"

    @property
    def hot(self) -> str:
        """Sorted set of sampled read counts per entry, for refresh-ahead warming."""
        return f"{self.namespace}:hot"

    def value(self, entry: str) -> str:
        return f"{self.namespace}:v:{entry}"

    def lease(self, entry: str) -> str:
        return f"{self.namespace}:l:{entry}"

    def tag_generation(self, tag: str) -> str:
        return f"{self.namespace}:g:{tag}"

    def tag_members(self, tag: str) -> str:
        return f"{self.namespace}:t:{tag}"

    def tag_of_generation(self, generation_key: str) -> str:
        return generation_key.removeprefix(f"{self.namespace}:g:")

    def entry_of(self, value_key: str) -> str:
        return value_key.removeprefix(f"{self.namespace}:v:")

    @property
    def value_pattern(self) -> str:
        return f"{self.namespace}:v:*"


@dataclass(frozen=True, slots=True)
class ClusterNames:
    """The Redis Cluster key design (pgbust.slots): what the cache scripts will touch on a
    cluster, each script in one slot (pgbust/cluster_reads.py, pgbust/cluster_invalidation.py).

    An entry's *home* is its first tag, or the entry itself when untagged: its value and
    lease, and its home tag's generation and member set, carry the home as hash tag, and the
    epoch of that slot is the one its stamp is checked against."""

    namespace: str

    def value(self, entry: str, home: str) -> str:
        return f"{{{home}}}{self.namespace}:v:{entry}"

    def lease(self, entry: str, home: str) -> str:
        return f"{{{home}}}{self.namespace}:l:{entry}"

    def tag_generation(self, tag: str) -> str:
        return f"{{{tag}}}{self.namespace}:g:{tag}"

    def tag_members(self, tag: str) -> str:
        return f"{{{tag}}}{self.namespace}:t:{tag}"

    def entry_of(self, value_key: str) -> str:
        """ "{home}<ns>:v:<entry>" -> entry."""
        return value_key.split(f"}}{self.namespace}:v:", 1)[1]

    @property
    def value_pattern(self) -> str:
        """SCAN MATCH for the namespace's values on a node (any home: braces are literal)."""
        return f"{{*}}{self.namespace}:v:*"

    def epoch(self, slot: int) -> str:
        """The epoch of one slot (a flush bumps every slot's)."""
        return f"{{{slot_tag(slot)}}}{self.namespace}:epoch"

    def epoch_of(self, key: str) -> str:
        """The epoch in the slot of `key`."""
        return self.epoch(key_slot(key))
