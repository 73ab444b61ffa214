"""Settings of the Celery workers (and of every process that enqueues their tasks)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator

from pgbust.settings import CommonSettings

_BROKER_SCHEMES = r"^(redis|rediss|redis\+socket|amqp|amqps|pyamqp|memory)://"


def broker_from_redis_url(redis_url: str, db: int = 1) -> str:
    """The default broker: the cache's Redis server, but a database of its own (db 1)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":  # kombu spells a socket redis+socket:// with virtual_host=db
        query = {k: v for k, v in parse_qsl(parts.query) if k != "db"}
        query["virtual_host"] = str(db)
        return f"redis+socket://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


class Settings(CommonSettings):
    """Env: CELERY_BROKER_URL and PGBUST_<NAME> for every other field (see README, Workers)."""

    celery_broker_url: str = Field(
        default="",
        validation_alias=AliasChoices("CELERY_BROKER_URL", "celery_broker_url"),
        description="Celery broker; empty = REDIS_URL's server, database 1",
    )
    queue: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.:-]{0,128}$",
        description="task queue; empty = '<namespace>.worker' so namespaces never share one",
    )
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

    @field_validator("celery_broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        if value and not re.match(_BROKER_SCHEMES, value):
            raise ValueError(
                "must start with redis://, rediss://, redis+socket://, amqp:// or pyamqp://"
            )
        return value

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or broker_from_redis_url(self.redis_url)

    @property
    def task_queue(self) -> str:
        return self.queue or f"{self.namespace}.worker"
