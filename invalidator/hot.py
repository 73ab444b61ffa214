"""The hot entries (sampled by the API into keyspace.hot) worth re-warming after invalidation."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pgbust.declaration import Declaration, UndeclaredEntry
from pgbust.keys import Keyspace
from pgbust.protocol import Targets

log = logging.getLogger(__name__)


class HotEntries:
    def __init__(
        self, client: aioredis.Redis, keyspace: Keyspace, top: int, declaration: Declaration
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.top = top
        self.declaration = declaration
        self.entries: dict[str, tuple[str, ...]] = {}  # hot entry -> its declared tags

    async def refresh(self) -> None:
        if self.top <= 0:
            return
        names = await self.client.zrevrange(self.keyspace.hot, 0, self.top - 1)
        entries = {}
        for raw in names:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                entries[name] = self.declaration.resolve(name)[1]
            except UndeclaredEntry:
                continue  # not an entry of this declaration (an older version's): not warmed
        self.entries = entries

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                log.debug("hot entries not refreshed: %s", exc)
            await asyncio.sleep(interval_s)

    def affected(self, targets: Targets) -> list[str]:
        """Hot entries this invalidation killed (all of them after a flush). Row tags are not
        known here (only the stored value has them): a page killed by one is not re-warmed."""
        if targets.flush:
            return sorted(self.entries)
        return sorted(
            entry
            for entry, tags in self.entries.items()
            if entry in targets.keys or not targets.tags.isdisjoint(tags)
        )
