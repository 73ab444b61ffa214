"""Decoding pgoutput, Postgres' built-in logical replication output (pure, no I/O).

One function, `decode(data)`, turns the payload of one XLogData message (protocol version 1,
PostgreSQL docs "Logical Replication Message Formats") into one of the dataclasses below.
Values in tuples stay as Postgres sends them: text forms (`str`), None for NULL, UNCHANGED for
a TOASTed value the server did not send. Version 1 is enough: streaming (version 2) would send
transactions before they commit, and a cache must not be invalidated by a change that may
still roll back, so the server assembling whole transactions (spilling big ones to disk past
logical_decoding_work_mem) is exactly what is wanted.

Anything that does not follow the format raises DecodeError (the caller widens, never drops).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Microseconds from the Unix epoch to the Postgres epoch (2000-01-01 00:00:00 UTC).
PG_EPOCH_US: Final = 946_684_800_000_000


class _Unchanged:
    """A TOASTed value that was not changed and is therefore not sent."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | None | _Unchanged
Tuple = tuple[Value, ...]


class DecodeError(ValueError):
    """The bytes are not a pgoutput message this decoder understands."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int  # Unix epoch, µs
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    identity: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex): pg_class.relreplident
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old_kind: str | None  # "K": identity columns only (others None), "O": whole old row, None
    old: Tuple | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old_kind: str  # "K" or "O"
    old: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message

_QQI = struct.Struct(">QqI")
_BQQq = struct.Struct(">BQQq")
_Q = struct.Struct(">Q")
_I = struct.Struct(">I")
_H = struct.Struct(">H")
_Ii = struct.Struct(">Ii")
_BQ = struct.Struct(">BQ")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise DecodeError("message ends early")
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError("unterminated string")
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def tuple_data(self) -> Tuple:
        data = self.data
        (count,) = _H.unpack_from(data, self.pos)
        pos = self.pos + 2
        values: list[Value] = []
        append = values.append
        for _ in range(count):
            kind = data[pos]
            pos += 1
            if kind == 0x74:  # 't': text
                (length,) = _I.unpack_from(data, pos)
                pos += 4
                end = pos + length
                if end > len(data):
                    raise DecodeError("value runs past the end of the message")
                append(data[pos:end].decode())
                pos = end
            elif kind == 0x6E:  # 'n': NULL
                append(None)
            elif kind == 0x75:  # 'u': unchanged TOAST
                append(UNCHANGED)
            else:  # 'b' (binary) is never asked for
                raise DecodeError(f"unknown tuple value kind {chr(kind)!r}")
        self.pos = pos
        return tuple(values)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} bytes left over")


def _begin(r: _Reader) -> Begin:
    final_lsn, ts, xid = r.unpack(_QQI)
    return Begin(final_lsn, ts + PG_EPOCH_US, xid)


def _commit(r: _Reader) -> Commit:
    flags, commit_lsn, end_lsn, ts = r.unpack(_BQQq)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_US)


def _origin(r: _Reader) -> Origin:
    (lsn,) = r.unpack(_Q)
    return Origin(lsn, r.string())


def _relation(r: _Reader) -> Relation:
    (oid,) = r.unpack(_I)
    namespace, name = r.string(), r.string()
    identity = r.byte()
    (count,) = r.unpack(_H)
    columns = []
    for _ in range(count):
        flags = r.data[r.pos]
        r.pos += 1
        column = r.string()
        type_oid, modifier = r.unpack(_Ii)
        columns.append(Column(column, type_oid, modifier, bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(r: _Reader) -> Type:
    (oid,) = r.unpack(_I)
    return Type(oid, r.string(), r.string())


def _insert(r: _Reader) -> Insert:
    (oid,) = r.unpack(_I)
    if r.byte() != "N":
        raise DecodeError("insert without a new tuple")
    return Insert(oid, r.tuple_data())


def _update(r: _Reader) -> Update:
    (oid,) = r.unpack(_I)
    kind = r.byte()
    old_kind: str | None = None
    old: Tuple | None = None
    if kind in ("K", "O"):
        old_kind, old = kind, r.tuple_data()
        kind = r.byte()
    if kind != "N":
        raise DecodeError(f"update: expected a new tuple, got {kind!r}")
    return Update(oid, old_kind, old, r.tuple_data())


def _delete(r: _Reader) -> Delete:
    (oid,) = r.unpack(_I)
    kind = r.byte()
    if kind not in ("K", "O"):
        raise DecodeError(f"delete: expected an old key or tuple, got {kind!r}")
    return Delete(oid, kind, r.tuple_data())


def _truncate(r: _Reader) -> Truncate:
    (count,) = r.unpack(_I)
    options = r.data[r.pos]
    r.pos += 1
    oids = struct.unpack_from(f">{count}I", r.data, r.pos)
    r.pos += 4 * count
    return Truncate(options, tuple(oids))


def _message(r: _Reader) -> Message:
    flags, lsn = r.unpack(_BQ)
    prefix = r.string()
    (length,) = r.unpack(_I)
    content = r.data[r.pos : r.pos + length]
    if len(content) != length:
        raise DecodeError("message content runs past the end")
    r.pos += length
    return Message(bool(flags & 1), lsn, prefix, bytes(content))


_DECODERS: dict[str, Callable[[_Reader], Decoded]] = {
    "B": _begin,
    "C": _commit,
    "O": _origin,
    "R": _relation,
    "Y": _type,
    "I": _insert,
    "U": _update,
    "D": _delete,
    "T": _truncate,
    "M": _message,
}


def decode(data: bytes) -> Decoded:
    """One pgoutput message (the payload of an XLogData) -> its dataclass."""
    if not data:
        raise DecodeError("empty message")
    decoder = _DECODERS.get(chr(data[0]))
    if decoder is None:
        raise DecodeError(f"unknown message type {chr(data[0])!r}")
    reader = _Reader(data)
    try:
        message: Decoded = decoder(reader)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{chr(data[0])!r} message: {exc}") from None
    reader.done()
    return message
