"""The Redis key and channel names of one namespace, in one place (pure, no I/O).

An *entry* is a logical cache item ("order:42", named by the application's declaration);
the Redis key that holds it is "<ns>:v:<entry>". An entry may be filed under *tags*; a tag is
invalidated in O(1) by bumping its generation, "<ns>:g:<tag>", which is part of every tagged
entry's stamp (pgbust/lua.py). Which entries and tags exist is the declaration's business
(pgbust.toml), never this module's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Redis key names of one namespace; several deployments can share one Redis."""

    namespace: str

    @property
    def epoch(self) -> str:
        return f"{self.namespace}:epoch"

    @property
    def server_identity(self) -> str:
        return f"{self.namespace}:server_run_id"

    @property
    def channel(self) -> str:
        return f"{self.namespace}:invalidations"

    @property
    def capture_alive(self) -> str:
        """Set (with a short TTL) by the active invalidator while its capture channel is proven
        alive; readers serve and fill Redis only while it exists."""
        return f"{self.namespace}:capture:alive"

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
