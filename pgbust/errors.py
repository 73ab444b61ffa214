"""The small exception hierarchy every component shares."""


class PgbustError(Exception):
    """Base class of every error pgbust raises on purpose."""


class ConfigError(PgbustError):
    """A setting is missing or invalid; the message names the setting and what to do."""


class StartupError(PgbustError):
    """A dependency (Postgres, Redis, broker) cannot be reached when a process starts."""
