"""Loaders: how the application computes each declared entry from its database.

    loaders = pgbust.Loaders()

    @loaders.entry("order:{id}")
    async def load_order(conn: psycopg.AsyncConnection, id: str) -> bytes | None:
        ...

A loader gets a connection and the entry's values (their text form, unescaped) as keyword
arguments, and returns the payload bytes (served as they are), None when the entry does not
exist, or `Loaded(payload, rows)` when the entry's declaration lists row tags (`rows = [...]`):
the rows (mappings with the columns those templates name) its content shows. The API's read
path and the workers' warming and audit call the same loaders, so a warmed entry is byte for
byte what a reader would have filled. Pure: registration and dispatch, the I/O is the loader's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgbust.templates import Template

LoaderFunction = Callable[..., Awaitable["bytes | Loaded | None"]]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A payload and the rows it shows (for the entry's row tags)."""

    payload: bytes
    rows: Sequence[Mapping[str, Any]] = ()


class UnknownEntry(LookupError):
    """No loader is registered for an entry's name."""


class Loaders:
    """The application's loaders, by entry template (the templates of its declaration)."""

    def __init__(self) -> None:
        self._by_template: dict[str, tuple[Template, LoaderFunction]] = {}

    def entry(self, template: str) -> Callable[[LoaderFunction], LoaderFunction]:
        """Register the decorated coroutine function as the loader of `template`."""
        parsed = Template.parse(template)

        def register(function: LoaderFunction) -> LoaderFunction:
            if template in self._by_template:
                raise ValueError(f"a loader for {template!r} is already registered")
            self._by_template[template] = (parsed, function)
            return function

        return register

    @property
    def templates(self) -> Iterable[str]:
        return self._by_template.keys()

    def find(self, name: str) -> tuple[LoaderFunction, dict[str, str]]:
        for template, function in self._by_template.values():
            values = template.match(name)
            if values is not None:
                return function, values
        raise UnknownEntry(f"no loader for cache entry {name!r}")

    async def load(self, conn: Any, name: str) -> Loaded | None:
        """The entry as its loader computes it (always as Loaded), or None: no such entry."""
        function, values = self.find(name)
        result = await function(conn, **values)
        if result is None or isinstance(result, Loaded):
            return result
        if isinstance(result, bytes | bytearray | memoryview):
            return Loaded(bytes(result))
        raise TypeError(
            f"the loader of {name!r} returned {type(result).__name__}: return bytes, "
            "pgbust.Loaded or None"
        )


def import_loaders(spec: str) -> Loaders:
    """The Loaders named "module:attribute" (the declaration's `[pgbust] loaders`)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"loaders {spec!r}: cannot import {module_name}: {exc}") from exc
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, Loaders):
        raise ImportError(f"loaders {spec!r}: {attribute} is not a pgbust.Loaders")
    return found
