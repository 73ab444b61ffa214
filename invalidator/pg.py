"""The invalidator's Postgres sessions: autocommit, named (a standby finds them by name in
pg_stat_activity) and with TCP keepalives, so a vanished peer is noticed in seconds."""

from __future__ import annotations

import psycopg


async def connect(
    database_url: str, application_name: str
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(
        database_url,
        autocommit=True,
        application_name=application_name,
        connect_timeout=5,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
