"""Settings of the Celery workers (and of every process that enqueues their tasks)."""

from __future__ import annotations

from pydantic import Field

from pgbust.settings import TaskQueueSettings, broker_from_redis_url

__all__ = ["Settings", "broker_from_redis_url"]


class Settings(TaskQueueSettings):
    """Env: CELERY_BROKER_URL and PGBUST_<NAME> for every other field (see README, Workers)."""

    visibility_timeout_s: int = Field(
        default=600,
        ge=1,
        description="Redis broker: an unacknowledged task is redelivered after this long",
    )
    retry_backoff_max_s: int = Field(default=30, ge=1)
    purge_chunk: int = Field(default=500, ge=1, le=10_000)
    audit_sample: int = Field(default=200, ge=1)
    audit_interval_s: float = Field(default=300.0, gt=0)
    audit_grace_ms: int = Field(default=200, ge=0)
    hot_decay_interval_s: float = Field(default=60.0, gt=0)
    hot_max: int = Field(default=10_000, ge=1)
    cache_ttl_s: float = Field(default=0.0, ge=0, description="TTL of warmed entries (0 = none)")
    warm_lease_ms: int = Field(default=2_000, ge=1)
    worker_metrics_port: int = Field(default=0, ge=0, le=65_535)
    worker_hold_key: str = Field(
        default="",
        description="fault injection for tests: block every task until this Redis key exists",
    )
