"""An application's entries: its declaration (names, tags, row tags) with its loaders.

What the workers need to warm and audit any application's entries without knowing its
tables: `[pgbust] loaders = "module:attribute"` in the declaration names the pgbust.Loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgbust.declaration import Declaration, UndeclaredEntry
from pgbust.loaders import Loaders, UnknownEntry, import_loaders

__all__ = ["Computed", "Entries", "UndeclaredEntry", "UnknownEntry"]


@dataclass(frozen=True, slots=True)
class Computed:
    payload: bytes
    tags: tuple[str, ...]  # the entry's tags (the declaration's, from its name)
    rows: tuple[str, ...]  # the row tags of what it holds (from the loaded rows)


@dataclass(frozen=True)
class Entries:
    declaration: Declaration
    loaders: Loaders | None  # None: the declaration names no loaders (nothing to compute)

    @classmethod
    def of(cls, declaration: Declaration) -> Entries:
        """With the loaders the declaration names (imported now: a wrong name fails here)."""
        spec = declaration.loaders
        return cls(declaration, import_loaders(spec) if spec else None)

    def tags(self, name: str) -> tuple[str, ...]:
        """The tags of a declared entry; UndeclaredEntry for any other name."""
        return self.declaration.resolve(name)[1]

    async def compute(self, conn: Any, name: str) -> Computed | None:
        """The entry as a reader would fill it, or None: it does not exist. Raises
        UndeclaredEntry / UnknownEntry for a name the application does not serve."""
        entry_type, tags = self.declaration.resolve(name)
        if self.loaders is None:
            raise UnknownEntry(f"{self.declaration.path} names no [pgbust] loaders")
        loaded = await self.loaders.load(conn, name)
        if loaded is None:
            return None
        return Computed(loaded.payload, tags, entry_type.row_tags(loaded.rows))
