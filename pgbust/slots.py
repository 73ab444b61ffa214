"""Redis Cluster hash slots, computed the way Redis does (pure, no I/O).

The groundwork of the cluster key design (pgbust.keys, README "Redis Cluster"): every script
of the cache protocol must touch keys of one slot, so
- an entry's keys (value, lease) and its first tag's generation and member set share one hash
  tag, its *home*: the first tag, or the entry itself when it has none;
- the epoch exists once per slot, so that every stamp check finds it in its own slot: the
  epoch key of slot s is hash-tagged with `slot_tag(s)`, a short string that hashes to s
  (a deterministic table, the same in every process); a flush bumps all 16384;
- an invalidation is split per slot (`group_by_slot`): one script per slot, then one message.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

SLOTS = 16384
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum of Redis Cluster's key slots."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_part(key: str | bytes) -> bytes:
    """What Redis hashes: the content of the first non-empty {...}, else the whole key."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            return raw[start + 1 : end]
    return raw


def key_slot(key: str | bytes) -> int:
    return crc16(hash_part(key)) % SLOTS


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, rest = divmod(n, 36)
        digits = _ALPHABET[rest] + digits
        if n == 0:
            return digits


@cache
def slot_tags() -> tuple[str, ...]:
    """For each slot, the first base-36 number (in counting order) that hashes to it: every
    process builds the very same table, so they agree on every epoch key's name."""
    found: list[str | None] = [None] * SLOTS
    missing = SLOTS
    n = 0
    while missing:
        text = _base36(n)
        slot = key_slot(text)
        if found[slot] is None:
            found[slot] = text
            missing -= 1
        n += 1
    return tuple(text for text in found if text is not None)


def slot_tag(slot: int) -> str:
    return slot_tags()[slot]


def group_by_slot(keys: Iterable[str]) -> dict[int, list[str]]:
    """Redis keys grouped by slot, each group in the order given (one script per group)."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return groups
