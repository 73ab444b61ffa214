"""The hot entries (sampled by the API into keyspace.hot) worth re-warming after invalidation."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pgbust.keys import Keyspace, tag_of
from pgbust.protocol import Targets

log = logging.getLogger(__name__)


class HotEntries:
    def __init__(self, client: aioredis.Redis, keyspace: Keyspace, top: int) -> None:
        self.client = client
        self.keyspace = keyspace
        self.top = top
        self.entries: frozenset[str] = frozenset()

    async def refresh(self) -> None:
        if self.top <= 0:
            return
        names = await self.client.zrevrange(self.keyspace.hot, 0, self.top - 1)
        self.entries = frozenset(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                log.debug("hot entries not refreshed: %s", exc)
            await asyncio.sleep(interval_s)

    def affected(self, targets: Targets) -> list[str]:
        """Hot entries this invalidation killed (all of them after a flush)."""
        if targets.flush:
            return sorted(self.entries)
        return sorted(
            entry
            for entry in self.entries
            if entry in targets.keys or (tag_of(entry) or "") in targets.tags
        )
