"""Settings of the invalidator daemon (python -m invalidator)."""

from __future__ import annotations

import hashlib

from pydantic import AliasChoices, Field, ValidationInfo, field_validator

from pgbust.settings import CaptureSettings, ReadReplicaSettings, TaskQueueSettings


def default_lock_id(namespace: str) -> int:
    """The advisory lock that elects the one active invalidator of a namespace: a stable 63-bit
    hash, so several namespaces on one database each get their own active instance."""
    digest = hashlib.blake2b(f"pgbust-invalidator:{namespace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class Settings(TaskQueueSettings, CaptureSettings, ReadReplicaSettings):
    """PGBUST_* environment variables (and CELERY_BROKER_URL / PGBUST_QUEUE, where the worker
    tasks go); the command's flags override them."""

    # Postgres NOTIFY channel; must match pgbust.capture.channel (db/triggers/).
    channel: str = Field(default="pgbust_changes", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # A batch is sent as soon as no more events are immediately available (events that arrive
    # while a batch is in flight form the next one), or at batch_max events. A window > 0 also
    # waits that long for more: fewer Redis calls under load, but it adds to every lag.
    batch_window_ms: float = Field(default=0.0, ge=0, le=1000)
    batch_max: int = Field(default=2000, ge=1, le=1_000_000)
    # Once started, exclude the start-up heap from garbage collections (pgbust/gc_pauses.py):
    # a full collection's pause delays every invalidation behind it.
    gc_freeze: bool = True
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
    # None: derived from the namespace (default_lock_id); set it only to share or split
    # leadership differently.
    lock_id: int | None = Field(
        default=None,
        ge=-(2**63),
        le=2**63 - 1,
        validation_alias=AliasChoices("PGBUST_INVALIDATOR_LOCK_ID", "lock_id"),
    )
    # How often a standby tries to take the lock.
    standby_poll_s: float = Field(default=0.25, gt=0, le=10)
    # How often the active one records its heartbeat (and checks it still holds the lock).
    heartbeat_s: float = Field(default=0.5, gt=0, le=10)
    # A standby terminates an active one whose heartbeat is older than this (paused, hung) and
    # takes over; keep it several heartbeats long. 0 = only take over from a dead session.
    takeover_after_s: float = Field(default=3.0, ge=0, le=3600)
    # Hot entries (sampled by the API) re-warmed after they are invalidated.
    warm_top: int = Field(default=100, ge=0, le=100_000)
    hot_refresh_s: float = Field(default=1.0, gt=0, le=60)
    # How often the active one checks pgbust.capture_status (from its lock connection): a table
    # that is not captured is flushed at every check, a changed capture once.
    capture_check_s: float = Field(default=1.0, gt=0, le=60)
    # A probe NOTIFY (sent every heartbeat from the lock connection) must come back on the LISTEN
    # connection within this, and a heartbeat proves capture alive for this long: the liveness
    # key readers check expires this long after the newest proof. None: 3 heartbeats.
    capture_timeout_s: float | None = Field(default=None, gt=0, le=60)
    # An active instance whose LISTEN connection or Redis has been failing this long gives its
    # leadership up (and stays standby for a back-off) so that a standby that can reach both
    # takes over.
    give_up_after_s: float = Field(default=5.0, ge=0.5, le=3600)
    # Longest pause between two attempts while Redis is unreachable. Short: a refused connection
    # costs nothing, and a commit made after Redis is back but before the next attempt would
    # be served stale from the API's fresh fills until then.
    redis_retry_max_s: float = Field(default=0.25, gt=0, le=60)

    # PGBUST_CAPTURE=wal: standby status updates to the server this often; after
    # wal_keepalive_s without a frame the server is asked to reply, and a replication
    # connection silent for wal_timeout_s is treated as lost (reconnect, resume from the slot).
    wal_status_interval_s: float = Field(default=1.0, gt=0, le=60)
    wal_keepalive_s: float = Field(default=1.0, gt=0, le=60)
    wal_timeout_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("capture_timeout_s")
    @classmethod
    def _longer_than_a_heartbeat(cls, value: float | None, info: ValidationInfo) -> float | None:
        heartbeat = info.data.get("heartbeat_s")
        if value is not None and heartbeat is not None and value <= heartbeat:
            raise ValueError(
                f"must be longer than PGBUST_HEARTBEAT_S ({heartbeat:g}), several times is best"
            )
        return value

    @property
    def effective_lock_id(self) -> int:
        return self.lock_id if self.lock_id is not None else default_lock_id(self.namespace)

    @property
    def effective_capture_timeout_s(self) -> float:
        return self.capture_timeout_s or 3 * self.heartbeat_s

    @property
    def probe_channel(self) -> str:
        """The NOTIFY channel of the capture probes of this lock's active instance."""
        return f"pgbust_probe_{self.effective_lock_id & (2**64 - 1):016x}"
