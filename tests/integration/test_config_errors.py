"""Every setting of every component, given a bad value: the process refuses to start.

The cases are derived from each component's Settings class (types, bounds, patterns,
choices), so a new setting is covered without editing this file. For each case the real
command is run: exit code 2, one line on stderr naming the environment variable, no
traceback, and a secret value never echoed.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from pgbust.errors import ConfigError
from pgbust.settings import env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
VALID_TOKEN = "config-test-token-0123456789"
SECRET_MARK = "sekrit-should-not-leak"


@dataclass(frozen=True)
class Component:
    name: str
    settings_module: str
    command: list[str]


COMPONENTS = [
    Component("api", "api.settings", [sys.executable, "-m", "api", "--port", "0"]),
    Component("invalidator", "invalidator.settings", [sys.executable, "-m", "invalidator"]),
    Component(
        "worker",
        "worker.settings",
        [str(Path(sys.executable).with_name("celery")), "-A", "worker", "worker"],
    ),
    Component(
        "loadtest",
        "loadtest.settings",
        [sys.executable, "-m", "loadtest", "--mode", "cdc", "--duration", "1", "--out", "/tmp/x"],
    ),
]


@dataclass(frozen=True)
class Case:
    component: Component
    env: str
    value: str

    @property
    def id(self) -> str:
        return f"{self.component.name}:{self.env}={self.value[:20]}"


def _constraints(info: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in info.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
        if isinstance(item, annotated_types.Interval):
            for attr in ("ge", "gt", "le", "lt"):
                if getattr(item, attr) is not None:
                    found[attr] = getattr(item, attr)
    return found


def _base_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return args[0] if args else annotation
    return annotation


def candidates(field: str, info: FieldInfo) -> list[str]:
    """Values that should be refused, from the field's type and constraints."""
    kind = _base_type(info.annotation)
    rules = _constraints(info)
    values: list[str] = []
    if "url" in field:
        values += [f"ftp://user:{SECRET_MARK}@nowhere/0", "not a url"]
    if kind is bool:
        values.append("perhaps")
    elif kind in (int, float):
        values.append("not-a-number")
        if "ge" in rules:
            values.append(str(rules["ge"] - 1))
        if "gt" in rules:
            values.append(str(rules["gt"]))
        if "le" in rules:
            values.append(str(rules["le"] + 1))
        if "lt" in rules:
            values.append(str(rules["lt"]))
    elif typing.get_origin(kind) is typing.Literal:
        values.append("no-such-choice")
    elif kind is SecretStr or kind is str:
        if "min_length" in rules:
            values.append("s" * max(0, rules["min_length"] - 1))
        if "max_length" in rules:
            values.append("x" * (rules["max_length"] + 1))
        # refused only if some rule (a pattern, a validator) says so: _refused() filters
        values += ["", "x", "bad value!", "\u00e9" * 70]
        if "pattern" in rules:
            values = [v for v in values if not re.match(rules["pattern"], v)]
    return list(dict.fromkeys(values))


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PGBUST_") and k not in {"API_TOKEN", "CELERY_BROKER_URL"}
    }
    env.setdefault("DATABASE_URL", "postgresql://127.0.0.1:5432/pgbust")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env["API_TOKEN"] = VALID_TOKEN
    return env


def _refused(cls: type[BaseSettings], env: str, value: str) -> bool:
    """True when load_settings refuses this one value (checked in-process, fast)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_clean_env())
    os.environ[env] = value
    try:
        load_settings(cls)
    except ConfigError:
        return True
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return False


def all_cases() -> tuple[list[Case], list[str]]:
    """(cases, settings for which no bad value exists: free-form strings)."""
    cases: list[Case] = []
    free_form: list[str] = []
    for component in COMPONENTS:
        cls = importlib.import_module(component.settings_module).Settings
        for field, info in cls.model_fields.items():
            env = env_name(cls, field)
            refused = [v for v in candidates(field, info) if _refused(cls, env, v)]
            if not refused:
                free_form.append(f"{component.name}:{env}")
            cases += [Case(component, env, value) for value in refused]
    return cases, free_form


CASES, FREE_FORM = all_cases()
# every refused value is checked in-process (fast); the real command runs for one bad
# value of every setting (machine time is shared; the in-process check covers all values)
PER_SETTING = 1


def _process_cases(component: Component) -> list[Case]:
    taken: dict[str, int] = {}
    chosen = []
    for case in CASES:
        if case.component is component and taken.get(case.env, 0) < PER_SETTING:
            taken[case.env] = taken.get(case.env, 0) + 1
            chosen.append(case)
    return chosen


def test_every_refused_value_gives_one_line_naming_the_setting() -> None:
    saved = dict(os.environ)
    failures = []
    try:
        for case in CASES:
            os.environ.clear()
            os.environ.update(_clean_env())
            os.environ[case.env] = case.value
            cls = importlib.import_module(case.component.settings_module).Settings
            try:
                load_settings(cls)
            except ConfigError as exc:
                message = str(exc)
                if case.env not in message or "\n" in message or SECRET_MARK in message:
                    failures.append(f"{case.id}: {message!r}")
            else:
                failures.append(f"{case.id}: accepted")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"config values refused in-process: {len(CASES)}")
    assert not failures, "\n".join(failures)


def test_every_constrained_setting_has_a_bad_value_case() -> None:
    names = {(c.component.name, c.env) for c in CASES}
    assert len(names) >= 20, names
    # only plain strings with no rule (hosts, keys) may accept anything
    for entry in FREE_FORM:
        assert not entry.endswith("_URL"), entry


def _run(case: Case) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    env[case.env] = case.value
    return subprocess.run(
        case.component.command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_bad_setting_refuses_to_start_with_one_line_naming_it(component: Component) -> None:
    cases = _process_cases(component)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_run, cases))
    failures = []
    for case, result in zip(cases, results, strict=True):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problems = []
        if result.returncode != 2:
            problems.append(f"exit {result.returncode}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        if "Traceback" in result.stderr:
            problems.append("traceback")
        if case.env not in result.stderr:
            problems.append("setting not named")
        secret = any(word in case.env for word in ("TOKEN", "SECRET", "PASSWORD"))
        if SECRET_MARK in result.stderr + result.stdout or (
            secret and len(case.value) >= 6 and case.value in result.stderr
        ):
            problems.append("secret echoed")
        if problems:
            failures.append(f"{case.id}: {', '.join(problems)}: {result.stderr[-300:]!r}")
    settings = len({c.env for c in cases})
    print(f"config cases tried for {component.name}: {len(cases)} over {settings} settings")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("component", COMPONENTS[:2], ids=lambda c: c.name)
def test_unreachable_database_is_one_line_without_the_password(component: Component) -> None:
    env = _clean_env()
    env["DATABASE_URL"] = f"postgresql://user:{SECRET_MARK}@127.0.0.1:1/db"
    result = subprocess.run(
        component.command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in {1, 2}, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET_MARK not in result.stderr + result.stdout
    assert "DATABASE_URL" in result.stderr


def test_api_without_token_refuses_to_start() -> None:
    env = _clean_env()
    del env["API_TOKEN"]
    result = subprocess.run(
        COMPONENTS[0].command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert "API_TOKEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_worker_audit_command_refuses_a_bad_setting_too() -> None:
    env = _clean_env()
    env["PGBUST_PURGE_CHUNK"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "worker", "audit"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "PGBUST_PURGE_CHUNK" in result.stderr


@pytest.mark.parametrize(
    "component",
    [c for c in COMPONENTS if c.name in {"invalidator", "worker"}],
    ids=lambda c: c.name,
)
def test_redis_cluster_without_a_broker_refuses_to_start_naming_celery_broker_url(
    component: Component,
) -> None:
    """Every process that sends or runs the Celery tasks: the default broker (REDIS_URL's
    server) would be the cluster, which Celery cannot use."""
    result = _run(Case(component, "PGBUST_REDIS_CLUSTER", "true"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "CELERY_BROKER_URL" in lines[0]
    assert "RabbitMQ" in lines[0]
