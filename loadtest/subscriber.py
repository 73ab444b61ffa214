"""A subscriber on the invalidation channel that stamps each message when it arrives.

It runs in a thread of the runner, outside Locust's busy gevent loop, so its timestamps are
what an API instance's subscriber sees. Stamps use time.time(), the clock of the load
generator's acknowledgements and of the triggers' ts_us.
"""

from __future__ import annotations

import threading
import time

import redis

from loadtest.lag import Received
from pgbust.keys import Keyspace
from pgbust.protocol import Heartbeat, MessageError, decode_message


class ChannelRecorder:
    def __init__(self, redis_url: str, keyspace: Keyspace) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(keyspace.channel)
        self._stop = threading.Event()
        self.messages: list[Received] = []
        self.undecodable = 0
        self._thread = threading.Thread(target=self._run, name="invalidation-recorder", daemon=True)

    def start(self) -> ChannelRecorder:
        # the subscription is confirmed before start() returns: nothing published later is lost
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            reply = self._pubsub.get_message(timeout=0.1, ignore_subscribe_messages=False)
            if reply and reply["type"] == "subscribe":
                break
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = self._pubsub.get_message(timeout=0.2)
            if reply is None or reply["type"] != "message":
                continue
            at = time.time()
            try:
                message = decode_message(reply["data"])
            except MessageError:
                # receivers flush their whole L1 on a message they cannot read: so do we
                self.undecodable += 1
                self.messages.append(Received(at=at, keys=(), flush=True, origin="?"))
                continue
            if isinstance(message, Heartbeat):
                continue  # liveness, not an invalidation
            self.messages.append(
                Received(
                    at=at,
                    keys=message.keys,
                    flush=message.flush,
                    ts_us=message.ts_us,
                    origin=message.origin,
                )
            )

    def stop(self) -> list[Received]:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._pubsub.close()
        self._client.close()
        return list(self.messages)
