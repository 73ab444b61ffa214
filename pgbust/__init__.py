"""pgbust core: settings, the cache protocol and the adapters shared by every component."""

__version__ = "0.1.0"
