"""Celery app and tasks: the off-fast-path jobs of invalidation.

`celery -A worker worker` and `celery -A worker beat` find the app here.
"""

from worker.app import app

celery = app

__all__ = ["app", "celery"]
