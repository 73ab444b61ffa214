"""The Celery application: late acknowledgement, one task at a time per process, no results.

Every task is idempotent, so a worker killed mid-task loses nothing: the broker redelivers the
unacknowledged message (RabbitMQ at once; Redis after PGBUST_VISIBILITY_TIMEOUT_S) and another
worker redoes it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from celery import Celery

from pgbust.cli import fail
from pgbust.errors import ConfigError
from pgbust.settings import load_settings
from pgbust.task_sender import sender_config
from worker.settings import Settings

TASK_NAMES = (
    "pgbust.retry_invalidation",
    "pgbust.collect_garbage",
    "pgbust.purge_dead",
    "pgbust.warm",
    "pgbust.audit",
    "pgbust.decay_hot",
)


def celery_config(settings: Settings) -> dict[str, Any]:
    config = sender_config(settings)
    config["broker_transport_options"].update(
        {
            "visibility_timeout": settings.visibility_timeout_s,
            # look for abandoned (killed worker) messages often enough for that timeout
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
        }
    )
    return config | {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": True,
        "beat_schedule": {
            "audit": {
                "task": "pgbust.audit",
                "schedule": settings.audit_interval_s,
                "kwargs": {"sample": settings.audit_sample},
                "options": {"expires": settings.audit_interval_s},
            },
            "decay-hot": {
                "task": "pgbust.decay_hot",
                "schedule": settings.hot_decay_interval_s,
                "options": {"expires": settings.hot_decay_interval_s},
            },
        },
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("pgbust", include=["worker.tasks"], set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def _settings_from_env() -> Settings:
    try:
        return load_settings(Settings)
    except ConfigError as exc:
        if Path(sys.argv[0]).name == "celery":  # `celery -A worker ...`: one line, exit 2
            fail("worker", str(exc), 2)
        raise


settings: Settings = _settings_from_env()
app: Celery = create_app(settings)
