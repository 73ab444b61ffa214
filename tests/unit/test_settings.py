import importlib
import os

import pytest

from db.settings import DbSettings
from pgbust.errors import ConfigError
from pgbust.settings import (
    CommonSettings,
    TaskQueueSettings,
    load_settings,
    normalize_postgres_url,
    redact_url,
    settings_environment,
)


def test_contract_env_names_are_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("PGBUST_NAMESPACE", "shop")
    settings = load_settings(CommonSettings)
    assert settings.database_url == "postgresql://u@db:5432/x"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.namespace == "shop"


def test_cli_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/x")
    settings = load_settings(CommonSettings, database_url="postgresql://other/y", redis_url=None)
    assert settings.database_url == "postgresql://other/y"


def test_sqlalchemy_spelling_is_normalised() -> None:
    assert normalize_postgres_url("postgresql+psycopg://h/db") == "postgresql://h/db"
    assert CommonSettings(database_url="postgres://h/db").sqlalchemy_url == (
        "postgresql+psycopg://h/db"
    )


def test_bad_database_url_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2@h/db")
    with pytest.raises(ConfigError) as caught:
        load_settings(DbSettings)
    message = str(caught.value)
    assert message.startswith("invalid setting DATABASE_URL:")
    assert "hunter2" not in message
    assert "\n" not in message


def test_bad_prefixed_setting_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBUST_NAMESPACE", "has spaces")
    with pytest.raises(ConfigError, match=r"^invalid setting PGBUST_NAMESPACE:"):
        load_settings(CommonSettings)


def test_bad_redis_url_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost")
    with pytest.raises(ConfigError, match=r"^invalid setting REDIS_URL: must start with redis://"):
        load_settings(CommonSettings)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/shop") == "postgresql://app:***@db:5432/shop"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


@pytest.mark.parametrize(
    "spec",
    ["api.settings:Settings", "invalidator.settings:Settings", "worker.settings:Settings"],
)
def test_settings_written_into_the_environment_are_read_back_identical(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `python -m api` hands its uvicorn workers: flags and environment, as one object."""
    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    for var in list(os.environ):
        if var.startswith("PGBUST_") or var in {"REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL"}:
            monkeypatch.delenv(var)
    monkeypatch.setenv("API_TOKEN", "from-the-environment-0123")
    monkeypatch.setenv("PGBUST_LOG_LEVEL", "WARNING")
    flags = {"redis_url": "redis://flag.example:6390/0", "namespace": "from-a-flag"}
    original = load_settings(cls, **flags)
    for var, value in settings_environment(original).items():
        monkeypatch.setenv(var, value)
    assert load_settings(cls) == original
    assert load_settings(cls).redis_url == "redis://flag.example:6390/0"


# --- Redis Cluster: Celery has no Redis Cluster broker (celery#2852) -----------------------


def _cluster_env(monkeypatch: pytest.MonkeyPatch, broker: str | None) -> None:
    monkeypatch.setenv("PGBUST_REDIS_CLUSTER", "true")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:7000/0")
    if broker is None:
        monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    else:
        monkeypatch.setenv("CELERY_BROKER_URL", broker)


def test_redis_cluster_without_a_broker_is_refused_naming_celery_broker_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cluster_env(monkeypatch, broker=None)
    with pytest.raises(ConfigError, match=r"^invalid setting CELERY_BROKER_URL: .*RabbitMQ"):
        load_settings(TaskQueueSettings)


def test_redis_cluster_with_the_cluster_node_as_broker_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cluster_env(monkeypatch, broker="redis://10.0.0.5:7000/1")
    with pytest.raises(ConfigError, match=r"^invalid setting CELERY_BROKER_URL: names the"):
        load_settings(TaskQueueSettings)


@pytest.mark.parametrize("broker", ["amqp://guest:guest@mq:5672//", "redis://queue-host:6379/0"])
def test_redis_cluster_with_rabbitmq_or_a_standalone_redis_broker_is_accepted(
    monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    _cluster_env(monkeypatch, broker=broker)
    settings = load_settings(TaskQueueSettings)
    assert settings.redis_cluster
    assert settings.broker_url == broker


def test_without_the_cluster_switch_the_broker_still_defaults_to_redis_database_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGBUST_REDIS_CLUSTER", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    settings = load_settings(TaskQueueSettings)
    assert not settings.redis_cluster
    assert settings.broker_url == "redis://cache:6379/1"
