"""The operator's files (ops/): where they are, promtool, and the metric names PromQL uses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.registry import Collector, CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_YML = OPS / "prometheus" / "prometheus.yml"
ALERTS_YML = OPS / "prometheus" / "alerts.yml"
DASHBOARD_JSON = OPS / "grafana" / "dashboards" / "pgbust.json"
DATASOURCES_YML = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_YML = OPS / "grafana" / "provisioning" / "dashboards" / "pgbust.yml"

# Series Prometheus itself makes for every target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def promtool() -> str:
    """promtool from Debian's prometheus package, installed when missing (CI runs as root).

    --no-install-recommends: only the binaries, not the node exporter; nothing is started
    (Debian's container images refuse service starts through policy-rc.d, and promtool needs
    no running server)."""
    found = shutil.which("promtool")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise RuntimeError("promtool is missing: apt-get install prometheus (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        check=True,
        env=env,
        timeout=600,
    )
    return shutil.which("promtool") or "/usr/bin/promtool"


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (pure; enough for the rules and panels
    here: selectors, functions, aggregations, binary operators, grouping clauses)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    grouping = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    text = re.sub(grouping, " ", text)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?(ms|s|m|h|d|w|y)?\b", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def exposed_names(*sources: CollectorRegistry | Collector) -> set[str]:
    """Every series name a registry or collector exposes, suffixes included (a counter's
    _total, a histogram's _bucket/_sum/_count), whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["", "_sum", "_count"],
        "gauge": [""],
        "info": ["_info"],
    }
    names: set[str] = set()
    for source in sources:
        for family in source.collect():
            names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
            names |= {sample.name for sample in family.samples}
    return names
