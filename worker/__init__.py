"""Celery app and tasks: the off-fast-path jobs of invalidation.

`celery -A worker worker` and `celery -A worker beat` find the app here (`worker.app`, also
`worker.celery`). It is built on first access, so importing pgbust.task_sender or running
`python -m worker` never fails at import time on a bad setting: they report it their way.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app", "celery"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        instance = importlib.import_module("worker.app").app
        # the submodule import bound worker.app to the module; the package exposes the app
        globals().update(app=instance, celery=instance)
        return instance
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
