"""python -m pgbust status: one screen saying whether a namespace is healthy (read-only)."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from db.settings import DbSettings
from pgbust import status_probe
from pgbust.cli import run_guarded
from pgbust.settings import load_settings
from pgbust.status import Bounds, assess, render

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="pgbust operator commands",
)


@app.callback()
def _main() -> None:
    """pgbust operator commands (settings from the environment, see README)."""


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object, for scripts")] = False,
    expect_subscribers: Annotated[
        int,
        typer.Option(min=0, help="API workers that should be subscribed (one per uvicorn worker)"),
    ] = Bounds.expect_subscribers,
    beat_max_age_s: Annotated[
        float, typer.Option(min=0.0, help="an active invalidator silent longer is stuck")
    ] = Bounds.beat_max_age_s,
    audit_max_age_s: Annotated[
        float, typer.Option(min=0.0, help="the last audit may be this old")
    ] = Bounds.audit_max_age_s,
    slot_lag_bytes: Annotated[
        int, typer.Option(min=0, help="WAL the slot may hold back (PGBUST_CAPTURE=wal)")
    ] = Bounds.slot_lag_bytes,
    listen_s: Annotated[
        float,
        typer.Option(min=0.0, max=30.0, help="how long to listen for one heartbeat (the lag)"),
    ] = 1.5,
    namespace: Annotated[
        str | None, typer.Option(help="overrides PGBUST_NAMESPACE", show_default=False)
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="overrides DATABASE_URL", show_default=False)
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="overrides REDIS_URL", show_default=False)
    ] = None,
) -> None:
    """The active invalidator and its standbys, capture per table (and the WAL slot), Redis'
    policy, memory and epoch, subscribed API workers, the last audit. Never writes.

    Exit 0: healthy; 1: something needs attention (listed, most serious first); 2: a bad
    setting."""

    def main() -> int:
        settings = load_settings(
            DbSettings, namespace=namespace, database_url=database_url, redis_url=redis_url
        )
        bounds = Bounds(
            expect_subscribers=expect_subscribers,
            beat_max_age_s=beat_max_age_s,
            audit_max_age_s=audit_max_age_s,
            slot_lag_bytes=slot_lag_bytes,
        )
        report = status_probe.gather(settings, listen_s=listen_s)
        report.findings = assess(report, bounds)
        if as_json:
            typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            typer.echo(render(report))
        return 0 if report.healthy else 1

    raise typer.Exit(run_guarded("pgbust status", main))
