"""The pools pgbust opens name themselves in pg_stat_activity, unless the URL names them."""

from __future__ import annotations

from typing import Any

from pgbust.postgres import make_pool


def _kwargs(url: str) -> dict[str, Any]:
    kwargs = make_pool(url, 4, "pgbust-api").kwargs
    assert isinstance(kwargs, dict)  # connection arguments given as a dict, not a callable
    return kwargs


def test_a_pool_connects_under_its_own_name() -> None:
    kwargs = _kwargs("postgresql://127.0.0.1:5432/shop")
    assert kwargs["application_name"] == "pgbust-api"
    assert kwargs["autocommit"] is True


def test_an_application_name_in_the_url_wins() -> None:
    kwargs = _kwargs("postgresql://127.0.0.1:5432/shop?application_name=orders")
    assert "application_name" not in kwargs  # the URL's is sent as it is
