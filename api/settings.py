"""Settings of the API (python -m api): cache mode, L1 bounds, pools, the write token."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator

from pgbust.settings import CommonSettings

CacheMode = Literal["cdc", "ttl", "off"]
DEFAULT_TTL_MODE_S = 30.0
MIN_TOKEN_LENGTH = 16


class Settings(CommonSettings):
    """Environment of one API process; every name but API_TOKEN is read as PGBUST_<NAME>."""

    api_token: SecretStr = Field(
        validation_alias=AliasChoices("API_TOKEN", "api_token"),
        description="bearer token the write endpoints require (16+ characters)",
    )
    cache_mode: CacheMode = "cdc"
    # cdc: optional safety-net TTL (None/0 = none); ttl: the TTL (default 30 s).
    cache_ttl_s: float | None = Field(default=None, ge=0, le=86_400)
    l1_max_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    l1_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    hot_sample_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    lease_ms: int = Field(default=2_000, ge=10, le=60_000)
    db_pool_size: int = Field(default=10, ge=1, le=1_000)
    workers: int = Field(default=1, ge=1, le=64)
    # > 0: each uvicorn worker also serves its own /metrics on the first free port of
    # [api_metrics_port, api_metrics_port + workers), so a scrape of each port sees one worker,
    # every time the same one (the main port's /metrics answers from whichever worker accepts).
    api_metrics_port: int = Field(default=0, ge=0, le=65_535)
    # A subscription that hears nothing (not even its own PING) for this long is lost; one that
    # hears no heartbeat of the active invalidator for this long stops L1. Keep it several
    # times the invalidator's PGBUST_HEARTBEAT_S.
    subscriber_silence_s: float = Field(default=2.0, ge=0.2, le=60)

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 16)"
            )
        return value

    @field_validator("cache_ttl_s")
    @classmethod
    def _ttl_mode_needs_a_ttl(cls, value: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("cache_mode") == "ttl" and value == 0:
            raise ValueError("must be > 0 when PGBUST_CACHE_MODE=ttl")
        return value

    @property
    def ttl_s(self) -> float:
        """The TTL applied to L1 and L2 entries; 0 means none."""
        if self.cache_ttl_s is None:
            return DEFAULT_TTL_MODE_S if self.cache_mode == "ttl" else 0.0
        return self.cache_ttl_s

    @property
    def ttl_ms(self) -> int:
        return round(self.ttl_s * 1000)

    @property
    def subscribes(self) -> bool:
        """Only the cdc mode listens to the invalidation channel."""
        return self.cache_mode == "cdc"
