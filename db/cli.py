"""python -m db: upgrade the schema, seed demo data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import psycopg
import typer

from db import capture, declared, migrate, seed, wal
from db.settings import DbSettings
from pgbust import declaration
from pgbust.checks import require_postgres
from pgbust.cli import run_guarded, setup_logging
from pgbust.declaration import Declaration
from pgbust.errors import StartupError
from pgbust.settings import load_settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="pgbust database commands",
)

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="overrides DATABASE_URL", show_default=False)
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="the declaration file; overrides PGBUST_CONFIG (default ./pgbust.toml)",
        show_default=False,
    ),
]


def _settings(database_url: str | None) -> DbSettings:
    settings = load_settings(DbSettings, database_url=database_url)
    setup_logging(settings.log_level, "db")
    require_postgres(settings.database_url)
    return settings


def _database_errors_in_one_line(main: Callable[[], None]) -> Callable[[], None]:
    def guarded() -> None:
        try:
            main()
        except psycopg.Error as exc:
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise StartupError(f"database error: {first}") from None

    return guarded


def _warn_not_captured(database_url: str) -> None:
    """After an install: say on stderr what is still not captured (the install succeeded)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = capture.status(conn)
    for row in rows:
        if not row.captured:
            typer.echo(f"warning: {row.describe()}", err=True)
    problem = capture.ddl_problem(rows)
    if problem:
        typer.echo(f"warning: {problem}", err=True)


def _echo_captured(captured: declared.Captured | None) -> None:
    if captured is None:
        return
    typer.echo(f"capturing: {', '.join(captured.tables) or 'nothing'}")
    if captured.forgotten:
        typer.echo(f"no longer declared, capture removed: {', '.join(captured.forgotten)}")


@app.command()
def upgrade(database_url: DatabaseUrl = None, config: Config = None) -> None:
    """Apply the declaration's migrations and set up capture of its tables (NOTIFY triggers,
    or the WAL publication). Idempotent."""

    def main() -> None:
        settings = _settings(database_url)
        declared_tables = declaration.load(config)
        result = migrate.upgrade(
            settings.database_url, declared_tables, capture=settings.capture == "notify"
        )
        applied = ", ".join(result.applied) or "none pending"
        typer.echo(
            f"migrations applied: {applied}; trigger files installed: {len(result.triggers)}"
        )
        _echo_captured(result.captured)
        _set_up_capture(settings, declared_tables)
        if settings.capture == "notify":
            _warn_not_captured(settings.database_url)

    run_guarded("db upgrade", _database_errors_in_one_line(main))


def _set_up_capture(settings: DbSettings, declared_tables: Declaration) -> None:
    """PGBUST_CAPTURE=wal: no trigger on the writers' path, a publication and a slot instead.
    notify: this namespace's slot and publication, if any, are dropped (a slot nobody reads
    would keep WAL until the disk is full)."""
    slot, publication = settings.slot_name, settings.publication_name
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if settings.capture == "wal":
            tables = list(declared_tables.tables)
            setup = wal.ensure(conn, publication, slot, tables)  # the slot first: no gap
            removed = capture.remove(conn)
            typer.echo(
                f"capture: wal; publication {publication} of {', '.join(tables)}; slot {slot} "
                f"{'created' if setup.created_slot else 'kept'}; NOTIFY triggers removed from "
                f"{len(removed)} tables"
            )
            for warning in setup.warnings:
                typer.echo(f"WARNING: {warning}", err=True)
            return
        if wal.slot_status(conn, slot) is not None or wal.published_tables(conn, publication):
            dropped_slot, dropped_publication = wal.remove(conn, publication, slot)
            typer.echo(
                f"capture: notify; dropped WAL slot {slot} ({dropped_slot}) and publication "
                f"{publication} ({dropped_publication})"
            )


@app.command("seed")
def seed_command(
    products: Annotated[int, typer.Option(min=0, help="number of products")] = 100_000,
    categories: Annotated[int, typer.Option(min=1, help="number of categories")] = 20,
    replace: Annotated[bool, typer.Option(help="wipe the catalogue first")] = False,
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="do nothing (exit 0) if data is already there")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Load a deterministic demo catalogue."""

    def main() -> None:
        settings = _settings(database_url)
        try:
            counts = seed.seed(settings.database_url, products, categories, replace=replace)
        except seed.CatalogueNotEmpty as exc:
            if if_empty:
                typer.echo(f"db seed: nothing to do: {exc.counts.products} products there")
                return
            typer.echo(f"db seed: error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"seeded {counts.products} products in {counts.categories} categories")

    run_guarded("db seed", _database_errors_in_one_line(main))


triggers_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="change-capture triggers (db/triggers/)"
)
app.add_typer(triggers_app, name="triggers")


@triggers_app.command("install")
def triggers_install(database_url: DatabaseUrl = None, config: Config = None) -> None:
    """(Re)install the capture triggers of every table the declaration file declares, and
    remove them from tables it no longer declares."""

    def main() -> None:
        settings = _settings(database_url)
        declared_tables = declaration.load(config)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            files = capture.install(conn, declared_tables)
            tables = [s.relation for s in capture.status(conn) if s.captured]
        typer.echo(f"trigger files applied: {len(files)}; capturing: {', '.join(tables)}")
        _warn_not_captured(settings.database_url)

    run_guarded("db triggers install", _database_errors_in_one_line(main))


@triggers_app.command("remove")
def triggers_remove(database_url: DatabaseUrl = None) -> None:
    """Drop the capture triggers (declarations stay; `install` brings them back)."""

    def main() -> None:
        settings = _settings(database_url)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            removed = capture.remove(conn)
        typer.echo(f"capture triggers removed from: {', '.join(removed) or 'nothing'}")

    run_guarded("db triggers remove", _database_errors_in_one_line(main))


@triggers_app.command("status")
def triggers_status(database_url: DatabaseUrl = None) -> None:
    """Every declared table and whether each committed change of it is captured (and if not,
    why). Exits 1 when a table is not captured or the DDL event triggers are missing."""

    def main() -> None:
        settings = _settings(database_url)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            rows = capture.status(conn)
        if not rows:
            typer.echo("no table declared for capture (run `python -m db upgrade`)")
        for row in rows:
            typer.echo(row.describe())
        problem = capture.ddl_problem(rows)
        if problem:
            typer.echo(problem)
        if problem or not all(row.captured for row in rows):
            raise typer.Exit(1)

    run_guarded("db triggers status", _database_errors_in_one_line(main))


wal_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="WAL capture (PGBUST_CAPTURE=wal): the slot and the publication (db/wal.sql)",
)
app.add_typer(wal_app, name="wal")


@wal_app.command("status")
def wal_status(database_url: DatabaseUrl = None) -> None:
    """The slot (active, confirmed position, lag, wal_status, safe_wal_size) and publication."""

    def main() -> None:
        settings = _settings(database_url)
        slot, publication = settings.slot_name, settings.publication_name
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            server = wal.server_settings(conn)
            status = wal.slot_status(conn, slot)
            tables = wal.published_tables(conn, publication)
            not_full = wal.tables_without_full_identity(conn, tables) if tables else []
        typer.echo(
            f"capture: {settings.capture}; wal_level {server.wal_level}; "
            f"max_slot_wal_keep_size {server.max_slot_wal_keep_size}; "
            f"wal_sender_timeout {server.wal_sender_timeout}"
        )
        if status is None:
            typer.echo(f"slot {slot}: none")
        else:
            safe = "unlimited" if status.safe_wal_size is None else f"{status.safe_wal_size} bytes"
            typer.echo(
                f"slot {slot}: {'active' if status.active else 'inactive'}"
                f"{f' (pid {status.active_pid})' if status.active_pid else ''}; plugin "
                f"{status.plugin}; confirmed_flush_lsn {status.confirmed_flush_lsn}; lag "
                f"{status.lag_bytes} bytes; wal_status {status.wal_status}; safe_wal_size {safe}"
            )
        typer.echo(f"publication {publication}: {', '.join(tables) or 'none'}")
        for relation, identity in not_full:
            typer.echo(
                f"WARNING: {relation} has REPLICA IDENTITY {identity!r}, not FULL: its updates "
                "do not carry the old row and are invalidated table-wide (run python -m db "
                "upgrade)",
                err=True,
            )
        for warning in server.warnings():
            typer.echo(f"WARNING: {warning}", err=True)

    run_guarded("db wal status", _database_errors_in_one_line(main))


@wal_app.command("remove")
def wal_remove(database_url: DatabaseUrl = None) -> None:
    """Drop this namespace's slot and publication (WAL is no longer kept for it)."""

    def main() -> None:
        settings = _settings(database_url)
        slot, publication = settings.slot_name, settings.publication_name
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            dropped_slot, dropped_publication = wal.remove(conn, publication, slot)
        typer.echo(
            f"slot {slot}: {'dropped' if dropped_slot else 'none'}; publication {publication}: "
            f"{'dropped' if dropped_publication else 'none'}"
        )

    run_guarded("db wal remove", _database_errors_in_one_line(main))
