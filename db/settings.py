"""Settings of the db command (python -m db)."""

from pgbust.settings import CaptureSettings


class DbSettings(CaptureSettings):
    pass
