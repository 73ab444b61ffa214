"""Celery app and tasks: the off-fast-path jobs of invalidation."""
