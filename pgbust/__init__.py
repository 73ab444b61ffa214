"""pgbust: a two-tier cache (in process + Redis) for asyncio apps, invalidated by the change
capture of Postgres, declared in one file (pgbust.toml).

    import pgbust

    loaders = pgbust.Loaders()
    cache = pgbust.Cache(pgbust.CacheSettings(), pgbust.load_declaration(), loaders)

The names below are imported on first use, so that `import pgbust.keys` (the invalidator,
the workers) does not load the read path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cache": "pgbust.cache",
    "CacheSettings": "pgbust.settings",
    "Declaration": "pgbust.declaration",
    "DeclarationError": "pgbust.declaration",
    "Loaded": "pgbust.loaders",
    "Loaders": "pgbust.loaders",
    "ReadResult": "pgbust.read_path",
    "UndeclaredEntry": "pgbust.declaration",
    "UnknownEntry": "pgbust.loaders",
}
__all__ = [*_EXPORTS, "load_declaration"]

if TYPE_CHECKING:
    from pgbust.cache import Cache as Cache
    from pgbust.declaration import Declaration as Declaration
    from pgbust.declaration import DeclarationError as DeclarationError
    from pgbust.declaration import UndeclaredEntry as UndeclaredEntry
    from pgbust.declaration import load as load_declaration
    from pgbust.loaders import Loaded as Loaded
    from pgbust.loaders import Loaders as Loaders
    from pgbust.loaders import UnknownEntry as UnknownEntry
    from pgbust.read_path import ReadResult as ReadResult
    from pgbust.settings import CacheSettings as CacheSettings


def __getattr__(name: str) -> Any:
    if name == "load_declaration":
        return importlib.import_module("pgbust.declaration").load
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pgbust' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
