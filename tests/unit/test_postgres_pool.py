"""The pools pgbust opens name themselves in pg_stat_activity, unless the URL names them."""

from __future__ import annotations

from pgbust.postgres import make_pool


def test_a_pool_connects_under_its_own_name() -> None:
    pool = make_pool("postgresql://127.0.0.1:5432/shop", 4, "pgbust-api")
    assert pool.kwargs["application_name"] == "pgbust-api"
    assert pool.kwargs["autocommit"] is True


def test_an_application_name_in_the_url_wins() -> None:
    pool = make_pool("postgresql://127.0.0.1:5432/shop?application_name=orders", 4, "pgbust-api")
    assert "application_name" not in pool.kwargs  # the URL's is sent as it is
