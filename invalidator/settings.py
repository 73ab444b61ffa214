"""Settings of the invalidator daemon (python -m invalidator)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from pgbust.settings import CommonSettings

# "pgbusi" as a number: the advisory lock that elects the one active invalidator per database.
DEFAULT_LOCK_ID = 0x70676275_7369


class Settings(CommonSettings):
    """PGBUST_* environment variables; `--metrics-port` overrides the port."""

    # Postgres NOTIFY channel; must match pgbust.capture.channel (db/triggers/).
    channel: str = Field(default="pgbust_changes", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # A batch is sent as soon as no more events are immediately available (events that arrive
    # while a batch is in flight form the next one), or at batch_max events. A window > 0 also
    # waits that long for more: fewer Redis calls under load, but it adds to every lag.
    batch_window_ms: float = Field(default=0.0, ge=0, le=1000)
    batch_max: int = Field(default=2000, ge=1, le=1_000_000)
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - served inside a container; no secrets on it
        validation_alias=AliasChoices("PGBUST_INVALIDATOR_METRICS_HOST", "metrics_host"),
    )
    metrics_port: int = Field(
        default=9108,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("PGBUST_INVALIDATOR_METRICS_PORT", "metrics_port"),
    )
    lock_id: int = Field(
        default=DEFAULT_LOCK_ID,
        validation_alias=AliasChoices("PGBUST_INVALIDATOR_LOCK_ID", "lock_id"),
    )
    # How often a standby tries to take the lock, and the active one checks it still holds it.
    standby_poll_s: float = Field(default=0.25, gt=0, le=10)
    # Hot entries (sampled by the API) re-warmed after they are invalidated.
    warm_top: int = Field(default=100, ge=0, le=100_000)
    hot_refresh_s: float = Field(default=1.0, gt=0, le=60)
    # Longest pause between two attempts while Redis is unreachable.
    redis_retry_max_s: float = Field(default=2.0, gt=0, le=60)
