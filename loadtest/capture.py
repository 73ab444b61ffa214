"""How the cdc mode captures changes (PGBUST_CAPTURE, notify | wal): what a run needs of the
database before its invalidator starts, and how the report names it.

notify needs nothing more than `python -m db upgrade` installed (the triggers). wal needs a
server with wal_level = logical, and the slot and publication of PGBUST_NAMESPACE, which
`PGBUST_CAPTURE=wal python -m db upgrade` creates (and `make demo` runs first); the run's
invalidator reads that slot, whatever namespace its Redis keys use, so a run leaves no slot
of its own behind. Checked before the first mode runs, so a server that cannot do it fails
the run at once, saying what to change.
"""

from __future__ import annotations

import psycopg

from db import capture, wal
from loadtest.servers import say
from loadtest.settings import Settings
from pgbust import declaration
from pgbust.errors import StartupError


def describe(settings: Settings) -> str:
    """The capture of the cdc mode, for the report: 'notify' or 'wal (slot <name>)'."""
    if settings.capture == "wal":
        return f"wal (slot {settings.slot_name})"
    return "notify"


def prepare(settings: Settings) -> dict[str, str]:
    """Make sure the cdc mode can capture as configured; returns the environment its
    invalidator needs for that (which slot and publication to read, in wal mode)."""
    if settings.capture == "notify":
        return {"PGBUST_CAPTURE": "notify"}
    slot, publication = settings.slot_name, settings.publication_name
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        # raises WalCaptureError naming wal_level and how to set it, before anything started
        setup = wal.ensure(conn, publication, slot, list(declaration.load().tables))
        status = wal.slot_status(conn, slot)
        if status is not None and status.active_pid is not None:
            raise StartupError(
                f"the WAL slot {slot} is read by another process (walsender pid "
                f"{status.active_pid}): stop the invalidator of namespace {settings.namespace} "
                "or run the load test with another PGBUST_NAMESPACE"
            )
        triggers = [row.relation for row in capture.status(conn) if row.captured]
    say(
        f"cdc: capture wal: slot {slot} ({'created' if setup.created_slot else 'kept'}), "
        f"publication {publication}; the slot stays after the run (python -m db wal remove "
        "drops it)"
    )
    for warning in setup.warnings:
        say(f"cdc: WARNING: {warning}")
    if triggers:
        say(
            f"cdc: WARNING: the NOTIFY triggers are still installed on {', '.join(triggers)}: "
            "writes pay for both captures; PGBUST_CAPTURE=wal python -m db upgrade removes them"
        )
    return {"PGBUST_CAPTURE": "wal", "PGBUST_WAL_SLOT": slot, "PGBUST_WAL_PUBLICATION": publication}
