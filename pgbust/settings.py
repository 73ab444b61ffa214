"""Settings shared by every component.

The four contract names of DESIGN.md (DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, API_TOKEN)
are read without a prefix; every other setting is read as PGBUST_<NAME>. CLI flags override
the environment by being passed to the constructor.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgbust.errors import ConfigError

_NAMESPACE_RE = r"^[A-Za-z0-9_.-]{1,64}$"
_BROKER_SCHEMES = r"^(redis|rediss|redis\+socket|amqp|amqps|pyamqp|memory)://"


def redact_url(url: str) -> str:
    """Return the URL with its password replaced, safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def normalize_postgres_url(value: str) -> str:
    """Accept libpq and SQLAlchemy spellings; store the libpq one (postgresql://...)."""
    match = re.match(r"^(postgres|postgresql)(\+[a-z0-9_]+)?://", value)
    if not match:
        raise ValueError(
            "must start with postgresql:// (for example postgresql://user@host:5432/db)"
        )
    return "postgresql://" + value[match.end() :]


class CommonSettings(BaseSettings):
    """What every process needs: where Postgres and Redis are, and the cache namespace."""

    model_config = SettingsConfigDict(
        env_prefix="PGBUST_", extra="ignore", populate_by_name=True, frozen=True
    )

    database_url: str = Field(
        default="postgresql://127.0.0.1:5432/pgbust",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
    )
    namespace: str = Field(default="pgbust", pattern=_NAMESPACE_RE)
    # true: REDIS_URL names any node of a Redis Cluster (the client discovers the others)
    redis_cluster: bool = False
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalize_postgres_url(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg://" + self.database_url.removeprefix("postgresql://")


CacheMode = Literal["cdc", "ttl", "off"]
DEFAULT_TTL_MODE_S = 30.0


class ReadReplicaSettings(CommonSettings):
    """PGBUST_READ_DATABASE_URL: loaders read this streaming replica of DATABASE_URL, never a
    change behind an applied invalidation (pgbust/replica.py); unset, everything reads the
    primary. The invalidator reads it too: set, it keeps the LSN marker readers check."""

    read_database_url: str | None = None

    @field_validator("read_database_url")
    @classmethod
    def _check_read_database_url(cls, value: str | None) -> str | None:
        return normalize_postgres_url(value) if value else None


class CacheSettings(ReadReplicaSettings):
    """What an application's cache (pgbust.Cache) needs: the mode, L1's bounds, leases, the
    pool, the subscriber's silence bound; each read as PGBUST_<NAME>."""

    cache_mode: CacheMode = "cdc"
    # cdc: optional safety-net TTL (None/0 = none); ttl: the TTL (default 30 s).
    cache_ttl_s: float | None = Field(default=None, ge=0, le=86_400)
    l1_max_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    l1_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    hot_sample_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    lease_ms: int = Field(default=2_000, ge=10, le=60_000)
    db_pool_size: int = Field(default=10, ge=1, le=1_000)
    # A subscription that hears nothing (not even its own PING) for this long is lost; one that
    # hears no heartbeat of the active invalidator for this long stops L1. Keep it several
    # times the invalidator's PGBUST_HEARTBEAT_S.
    subscriber_silence_s: float = Field(default=2.0, ge=0.2, le=60)
    # Once started, exclude the start-up heap from garbage collections (pgbust/gc_pauses.py):
    # full collections walking it stalled the event loop for 54-80 ms under load.
    gc_freeze: bool = True

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


def broker_from_redis_url(redis_url: str, db: int = 1) -> str:
    """The default broker: the cache's Redis server, but a database of its own (db 1)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":  # kombu spells a socket redis+socket:// with virtual_host=db
        query = {k: v for k, v in parse_qsl(parts.query) if k != "db"}
        query["virtual_host"] = str(db)
        return f"redis+socket://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def _check_broker_beside_a_cluster(broker_url: str, redis_url: str) -> None:
    """Celery has no Redis Cluster transport (celery#2852): with PGBUST_REDIS_CLUSTER the
    broker must be named, and must not be the cluster itself."""
    if not broker_url:
        raise ValueError(
            "must be set when PGBUST_REDIS_CLUSTER=true: Celery cannot use a Redis Cluster as "
            "its broker; use RabbitMQ (amqp://...) or a standalone Redis (redis://...)"
        )
    broker, cache = urlsplit(broker_url), urlsplit(redis_url)
    same_server = (broker.hostname, broker.port or 6379) == (cache.hostname, cache.port or 6379)
    if broker.scheme.startswith("redis") and same_server:
        raise ValueError(
            "names the Redis Cluster node of REDIS_URL: Celery cannot use a Redis Cluster as "
            "its broker; use RabbitMQ (amqp://...) or a standalone Redis"
        )


class TaskQueueSettings(CommonSettings):
    """Where the Celery tasks go: what the workers and every process that sends them share.

    The broker is derived from *this object's* redis_url when CELERY_BROKER_URL is empty, so a
    process given another Redis (a flag) sends its tasks to that deployment's broker."""

    celery_broker_url: str = Field(
        default="",
        validation_alias=AliasChoices("CELERY_BROKER_URL", "celery_broker_url"),
        description="Celery broker; empty = REDIS_URL's server, database 1",
        validate_default=True,  # the Redis Cluster check below must see the default too
    )
    queue: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.:-]{0,128}$",
        description="task queue; empty = '<namespace>.worker' so namespaces never share one",
    )

    @field_validator("celery_broker_url")
    @classmethod
    def _check_broker_url(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("redis_cluster"):
            _check_broker_beside_a_cluster(value, str(info.data.get("redis_url", "")))
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


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable a user sets for a field (the loc of a validation error)."""
    for name, info in settings_cls.model_fields.items():
        aliases = info.validation_alias
        choices = aliases.choices if isinstance(aliases, AliasChoices) else []
        if field == name or field in choices:
            if choices and isinstance(choices[0], str):
                return choices[0]
            field = name
            break
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def settings_environment(settings: BaseSettings) -> dict[str, str]:
    """The environment that makes `load_settings` build this very object again.

    For the processes a command starts itself (uvicorn's workers): they can only read the
    environment, so the command's settings, flags included, are written into theirs."""
    env = {}
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name(type(settings), field)] = str(value)
    return env


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment plus CLI overrides (None means "not given").

    Raises ConfigError with one line that names the offending environment variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return settings_cls(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        name = env_name(settings_cls, field)
        reason = str(error["msg"]).removeprefix("Value error, ")
        shown = error.get("input")
        if isinstance(shown, str) and "URL" in name:
            shown = redact_url(shown)
        if any(word in name for word in ("TOKEN", "SECRET", "PASSWORD")):
            shown = None  # never echo a secret, not even a too-short one
        suffix = f" (got {shown!r})" if shown is not None and error["type"] != "missing" else ""
        raise ConfigError(f"invalid setting {name}: {reason}{suffix}") from None


_WAL_NAME_RE = re.compile(r"[a-z0-9_]{1,40}")


def wal_name(namespace: str) -> str:
    """The default slot and publication name of a namespace: `pgbust_<namespace>` when that is
    a valid slot name (lower case, digits, _), else a readable part plus a stable hash."""
    if _WAL_NAME_RE.fullmatch(namespace):
        return f"pgbust_{namespace}"
    readable = re.sub(r"[^a-z0-9_]", "_", namespace.lower())[:30]
    digest = hashlib.blake2b(namespace.encode(), digest_size=4).hexdigest()
    return f"pgbust_{readable}_{digest}"


class CaptureSettings(CommonSettings):
    """How changes are captured (PGBUST_CAPTURE): NOTIFY triggers, or the WAL through a
    logical replication slot. Read by `python -m db upgrade` and by the invalidator."""

    capture: Literal["notify", "wal"] = "notify"
    # None: pgbust_<namespace> (wal_name); one slot per namespace, one consumer at a time.
    wal_slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    wal_publication: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @property
    def slot_name(self) -> str:
        return self.wal_slot or wal_name(self.namespace)

    @property
    def publication_name(self) -> str:
        return self.wal_publication or wal_name(self.namespace)
