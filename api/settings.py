"""Settings of the API (python -m api): cache mode, L1 bounds, pools, the write token."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator

from pgbust.settings import CacheMode, CacheSettings

__all__ = ["CacheMode", "Settings"]
MIN_TOKEN_LENGTH = 16


class Settings(CacheSettings):
    """Environment of one API process; every name but API_TOKEN is read as PGBUST_<NAME>."""

    api_token: SecretStr = Field(
        validation_alias=AliasChoices("API_TOKEN", "api_token"),
        description="bearer token the write endpoints require (16+ characters)",
    )
    workers: int = Field(default=1, ge=1, le=64)
    # > 0: each uvicorn worker also serves its own /metrics on the first free port of
    # [api_metrics_port, api_metrics_port + workers), so a scrape of each port sees one worker,
    # every time the same one (the main port's /metrics answers from whichever worker accepts).
    api_metrics_port: int = Field(default=0, ge=0, le=65_535)

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 16)"
            )
        return value
