"""README.md is part of the product: it documents every setting and the two set-up commands."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from pgbust.settings import env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SETTINGS = [
    "db.settings:DbSettings",
    "api.settings:Settings",
    "invalidator.settings:Settings",
    "worker.settings:Settings",
    "loadtest.settings:Settings",
]


def _settings_class(spec: str) -> type[BaseSettings]:
    module, name = spec.split(":")
    cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
    return cls


def _documented() -> set[str]:
    """Setting names that appear in the first column of a README table."""
    names: set[str] = set()
    for line in README.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


@pytest.mark.parametrize("spec", SETTINGS)
def test_every_setting_is_in_a_readme_configuration_table(spec: str) -> None:
    cls = _settings_class(spec)
    missing = {env_name(cls, field) for field in cls.model_fields} - _documented()
    assert not missing, f"README documents no {sorted(missing)} ({spec})"


def test_quick_start_is_exactly_the_two_set_up_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.strip().splitlines()]
    assert commands == ["make demo", "make test"]
