"""The cache protocol's pure parts: what to invalidate, the pub/sub message, lease results.

Everything here is data and (de)serialisation; the Redis adapter is pgbust/redis_cache.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pgbust.replica import parse_marker

MESSAGE_VERSION = 1


class MessageError(ValueError):
    """An invalidation message that cannot be understood; receivers must flush everything."""


@dataclass(frozen=True, slots=True)
class Targets:
    """What one change (or a batch of changes) invalidates.

    keys: entry names ("order:42"); tags: tag names ("customer:3"), each killing every entry
    filed under it; flush: everything in the namespace (epoch bump).
    """

    keys: frozenset[str] = field(default_factory=frozenset)
    tags: frozenset[str] = field(default_factory=frozenset)
    flush: bool = False

    def __or__(self, other: Targets) -> Targets:
        return Targets(self.keys | other.keys, self.tags | other.tags, self.flush or other.flush)

    def __bool__(self) -> bool:
        return bool(self.keys or self.tags or self.flush)

    @classmethod
    def merge(cls, many: Iterable[Targets]) -> Targets:
        keys: set[str] = set()
        tags: set[str] = set()
        flush = False
        for targets in many:
            keys |= targets.keys
            tags |= targets.tags
            flush = flush or targets.flush
        return cls(frozenset(keys), frozenset(tags), flush)


@dataclass(frozen=True, slots=True)
class Invalidation:
    """The message published on the invalidation channel after L2 has been cleaned.

    Every API instance evicts `keys` and every entry filed under `tags` from its L1, or its
    whole L1 when `flush` is set. `ts_us` is the oldest change time in the batch (microseconds
    since the epoch, from the trigger), for lag measurement; `origin` says who sent it.
    """

    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    flush: bool = False
    ts_us: int | None = None
    origin: str = "cdc"
    reason: str = ""

    @classmethod
    def of(
        cls, targets: Targets, *, origin: str, ts_us: int | None = None, reason: str = ""
    ) -> Invalidation:
        return cls(
            keys=tuple(sorted(targets.keys)),
            tags=tuple(sorted(targets.tags)),
            flush=targets.flush,
            ts_us=ts_us,
            origin=origin,
            reason=reason,
        )

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": MESSAGE_VERSION, "o": self.origin}
        if self.keys:
            body["k"] = self.keys
        if self.tags:
            body["t"] = self.tags
        if self.flush:
            body["f"] = True
        if self.ts_us is not None:
            body["ts"] = self.ts_us
        if self.reason:
            body["r"] = self.reason
        return orjson.dumps(body)

    @classmethod
    def decode(cls, raw: bytes | str) -> Invalidation:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != MESSAGE_VERSION:
            raise MessageError(f"unknown message version: {str(body)[:80]}")
        keys, tags, ts = body.get("k", []), body.get("t", []), body.get("ts")
        if not _strings(keys) or not _strings(tags):
            raise MessageError("keys and tags must be lists of strings")
        if ts is not None and not isinstance(ts, int):
            raise MessageError("ts must be an integer")
        return cls(
            keys=tuple(keys),
            tags=tuple(tags),
            flush=bool(body.get("f", False)),
            ts_us=ts,
            origin=str(body.get("o", "?")),
            reason=str(body.get("r", "")),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The liveness beat on the invalidation channel (DESIGN invariant 8).

    The active invalidator publishes one every `every_ms` while its capture channel is proven
    alive end to end (a probe NOTIFY came back on its LISTEN connection and everything received
    before it was applied to Redis), together with the capture liveness key. A subscriber that
    hears neither this nor anything else for a bounded time treats its channel as lost.

    Encoded as a version-1 message with an "hb" object and no keys, tags or flush: a subscriber
    that predates heartbeats decodes it as an invalidation of nothing, which is harmless.
    """

    every_ms: int
    sender: str = ""  # which process and term, for logs and /healthz
    proof_age_ms: int = 0  # how old the capture proof was when the beat was sent
    origin: str = "cdc"

    def encode(self) -> bytes:
        beat = {"e": self.every_ms, "s": self.sender, "a": self.proof_age_ms}
        return orjson.dumps({"v": MESSAGE_VERSION, "o": self.origin, "hb": beat})


Message = Invalidation | Heartbeat


def decode_message(raw: bytes | str) -> Message:
    """A message of the invalidation channel: a Heartbeat, or else an Invalidation.

    Raises MessageError for anything a receiver cannot trust (it must flush). A well-formed
    version-1 message of a kind this code does not know carries no keys, tags or flush and
    decodes as an invalidation of nothing: safe, and still proof that the channel is alive.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if isinstance(body, dict) and body.get("v") == MESSAGE_VERSION and "hb" in body:
        beat = body["hb"]
        if not isinstance(beat, dict) or not isinstance(beat.get("e"), int) or beat["e"] <= 0:
            raise MessageError(f"malformed heartbeat: {str(body)[:80]}")
        age = beat.get("a", 0)
        return Heartbeat(
            every_ms=beat["e"],
            sender=str(beat.get("s", ""))[:80],
            proof_age_ms=age if isinstance(age, int) else 0,
            origin=str(body.get("o", "?")),
        )
    return Invalidation.decode(raw)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def flush_message(reason: str, origin: str) -> Invalidation:
    return Invalidation(flush=True, origin=origin, reason=reason)


# --- lease results of GET_OR_LEASE ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    payload: bytes
    rows: tuple[str, ...] = ()  # row tags the value holds (its L1 copy is filed under them)


@dataclass(frozen=True, slots=True)
class Lease:
    """This reader may load the database and fill; `stamp` is checked again at fill time."""

    token: str
    stamp: str
    since: int = 0  # when the lease was granted (µs, Redis clock): row tags must be older
    # the LSN marker read with the grant (pgbust/replica.py); None: missing, or not asked for
    marker: int | None = None


@dataclass(frozen=True, slots=True)
class Busy:
    """Another reader holds the lease: wait for its fill instead of loading the database."""

    stamp: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Redis refused to write (full, read-only replica, disk error): no lease was taken. Read
    the database and do not fill; `reason` is Redis' error ("OOM command not allowed ...")."""

    reason: str

    @property
    def out_of_memory(self) -> bool:
        return self.reason.startswith("OOM")


@dataclass(frozen=True, slots=True)
class NotLive:
    """No live capture (no active invalidator has proven its channels lately): whatever Redis
    holds may have missed invalidations, so it is not served, and nothing is filled."""


NOT_LIVE = NotLive()
LeaseResult = Hit | Lease | Busy | Refused | NotLive


def parse_get_or_lease(reply: list[Any], token: str) -> LeaseResult:
    status = int(reply[0])
    if status == 4:
        return Refused(_text(reply[1]) if len(reply) > 1 and reply[1] else "refused")
    if status == 0:
        return NOT_LIVE
    stamp = _text(reply[1])
    if status == 1:
        value = reply[2]
        raw = value if isinstance(value, bytes) else str(value).encode()
        payload = raw[len(stamp.encode()) :]
        if "\n" not in stamp:
            return Hit(payload)
        # "<stamp>\n<since>\n<row generation key>...|": the keys, for the caller to name
        return Hit(payload, tuple(stamp[:-1].split("\n")[2:]))
    if status == 2:
        since = int(reply[2]) if len(reply) > 2 else 0
        marker = parse_marker(reply[3]) if len(reply) > 3 else None
        return Lease(token=token, stamp=stamp, since=since, marker=marker)
    return Busy(stamp=stamp)


def strip_stamp(value: bytes) -> bytes:
    """The payload of a stored value ("<stamp>[<rows>]|<payload>", as in pgbust/lua.py)."""
    return value.split(b"|", 1)[1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
