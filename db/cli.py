"""python -m db: upgrade the schema, seed demo data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import psycopg
import typer

from db import capture, migrate, seed
from db.settings import DbSettings
from pgbust.checks import require_postgres
from pgbust.cli import run_guarded, setup_logging
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


@app.command()
def upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or update the schema and (re)install the change-capture triggers. Idempotent."""

    def main() -> None:
        settings = _settings(database_url)
        result = migrate.upgrade(settings.database_url)
        applied = ", ".join(result.applied) or "none pending"
        typer.echo(
            f"migrations applied: {applied}; trigger files installed: {len(result.triggers)}"
        )
        _warn_not_captured(settings.database_url)

    run_guarded("db upgrade", _database_errors_in_one_line(main))


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
def triggers_install(database_url: DatabaseUrl = None) -> None:
    """(Re)install the capture triggers of every table declared in db/triggers/."""

    def main() -> None:
        settings = _settings(database_url)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            files = capture.install(conn)
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
