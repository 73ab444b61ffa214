"""Settings of the db command (python -m db)."""

from pgbust.settings import CommonSettings


class DbSettings(CommonSettings):
    pass
