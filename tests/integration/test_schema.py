"""The data layer against a real Postgres: schema, version trigger, seed, migrations."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from db import migrate
from db.models import Base, Product
from pgbust.settings import CommonSettings


def test_upgrade_twice_applies_nothing_the_second_time(database_url: str) -> None:
    again = migrate.upgrade(database_url)
    assert again.applied == []


def test_models_match_the_sql_schema(database_url: str) -> None:
    engine = create_engine(CommonSettings(database_url=database_url).sqlalchemy_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:
            in_db = {column["name"] for column in inspector.get_columns(table.name)}
            assert in_db == set(table.columns.keys()), table.name
        indexes = {index["name"] for index in inspector.get_indexes("products")}
        assert "products_category_id_id_idx" in indexes
    finally:
        engine.dispose()


def test_update_via_raw_sql_bumps_version(
    pg: psycopg.Connection[tuple[object, ...]], seeded: object
) -> None:
    before = pg.execute("SELECT version, updated_at FROM products WHERE id = 7").fetchone()
    pg.execute("UPDATE products SET stock = stock + 1 WHERE id = 7")
    pg.execute("UPDATE products SET name = name WHERE id = 7")  # even a no-op UPDATE counts
    after = pg.execute("SELECT version, updated_at FROM products WHERE id = 7").fetchone()
    assert before is not None and after is not None
    assert after[0] == before[0] + 2  # type: ignore[operator]
    assert after[1] > before[1]  # type: ignore[operator]


def test_a_client_cannot_set_version_itself(
    pg: psycopg.Connection[tuple[object, ...]], seeded: object
) -> None:
    pg.execute("UPDATE products SET version = 1000 WHERE id = 8")
    row = pg.execute("SELECT version FROM products WHERE id = 8").fetchone()
    assert row == (2,)


def test_update_via_sqlalchemy_bumps_version_and_orm_sees_it(
    database_url: str, seeded: object
) -> None:
    engine = create_engine(CommonSettings(database_url=database_url).sqlalchemy_url)
    try:
        with Session(engine) as session:
            product = session.scalars(select(Product).where(Product.id == 9)).one()
            start = product.version
            product.price_cents += 1
            session.commit()
            assert product.version == start + 1
    finally:
        engine.dispose()


def test_seed_cli_loads_100k_products(database_url: str) -> None:
    env_cmd = [
        sys.executable,
        "-m",
        "db",
        "seed",
        "--products",
        "100000",
        "--categories",
        "20",
        "--replace",
        "--database-url",
        database_url,
    ]
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seeded 100000 products in 20 categories" in done.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT category_id) FROM products"
        ).fetchone() == (100000, 20)


def test_seed_refuses_to_wipe_without_replace(database_url: str, seeded: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "db", "seed", "--products", "10", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "pass --replace" in done.stderr


def test_seed_if_empty_keeps_existing_data_and_succeeds(
    database_url: str, seeded: object, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "db",
            "seed",
            "--products",
            "10",
            "--if-empty",
            "--database-url",
            database_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout
    assert pg.execute("SELECT count(*) FROM products").fetchone() == (100,)


@pytest.mark.parametrize("command", [["upgrade"], ["seed", "--products", "1"]])
def test_unreachable_database_is_one_line_naming_the_setting(command: list[str]) -> None:
    url = "postgresql://pgbust:secret@127.0.0.1:1/nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "db", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach DATABASE_URL at postgresql://pgbust:***@127.0.0.1:1/nowhere" in lines[0]
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_invalid_database_url_exits_2_naming_the_setting() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DATABASE_URL": "mysql://h/db", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("db upgrade: error: invalid setting DATABASE_URL:")
