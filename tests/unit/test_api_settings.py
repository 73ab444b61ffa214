"""API settings: the token is required and never echoed; mode and TTL rules."""

from __future__ import annotations

import pytest

from api.settings import Settings
from pgbust.errors import ConfigError
from pgbust.settings import load_settings

TOKEN = "test-token-0123456789"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_TOKEN", "PGBUST_CACHE_MODE", "PGBUST_CACHE_TTL_S"):
        monkeypatch.delenv(name, raising=False)


def test_missing_api_token_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="API_TOKEN"):
        load_settings(Settings)


def test_short_api_token_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "hunter2")
    with pytest.raises(ConfigError) as info:
        load_settings(Settings)
    assert "API_TOKEN" in str(info.value) and "hunter2" not in str(info.value)


def test_token_is_a_secret_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    settings = load_settings(Settings)
    assert TOKEN not in repr(settings)
    assert settings.api_token.get_secret_value() == TOKEN


def test_cdc_mode_has_no_ttl_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    settings = load_settings(Settings)
    assert settings.cache_mode == "cdc" and settings.ttl_s == 0 and settings.subscribes


def test_ttl_mode_defaults_to_30_seconds_and_does_not_subscribe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("PGBUST_CACHE_MODE", "ttl")
    settings = load_settings(Settings)
    assert settings.ttl_s == 30 and settings.ttl_ms == 30_000 and not settings.subscribes


def test_ttl_mode_with_zero_ttl_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("PGBUST_CACHE_MODE", "ttl")
    monkeypatch.setenv("PGBUST_CACHE_TTL_S", "0")
    with pytest.raises(ConfigError, match="PGBUST_CACHE_TTL_S"):
        load_settings(Settings)


def test_unknown_cache_mode_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("PGBUST_CACHE_MODE", "sometimes")
    with pytest.raises(ConfigError, match="PGBUST_CACHE_MODE"):
        load_settings(Settings)
